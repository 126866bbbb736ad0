//! The `fabric` transport: libfabric RDM endpoints, loaded at run time.
//!
//! One endpoint per engine, with one completion queue and one address vector. What a
//! transfer needs belongs to its ring slot and is reused: a `TxSlot` (the
//! `op_context` of every fabric operation the transfer posts, so each completion, and
//! each error entry, maps back to exactly one slot) and a control buffer (its
//! notification message). Nothing is taken from a pool at post time, so nothing can be
//! forgotten on a path that does not send a notification.
//!
//! **Sender.** A WRITE posts one `fi_writedata` per descriptor (split at the
//! provider's `max_msg_size`) carrying the slot's handle as immediate data; a READ one
//! `fi_read` each. The slot counts its operations in flight (plus one held by the
//! poster until every operation is posted). When the count reaches zero the transfer
//! is DONE, or, if it has a notification, its `NOTIFY` control message is sent from the
//! slot's buffer with `fi_send` and the transfer is DONE when that send completes. A
//! transfer whose operations failed sends `ABORT` instead (so the receiver never waits
//! for it) and ends FAILED with the first error.
//!
//! **Receiver.** A `HELLO` from a sender (sent when it loads us) inserts its address
//! and gives it a fixed table, one entry per sender slot: (generation, writes seen,
//! writes expected, held notification). Remote-write completions count into the entry
//! their immediate data names; a `NOTIFY` says how many writes to expect and is
//! delivered to the inbox once they are all seen. An entry of an older generation is
//! never matched: its arrivals are dropped and counted (`stale`). Memory: senders ×
//! capacity × 32 bytes, allocated at the `HELLO`.
//!
//! Data progress is manual with the providers ringxfer uses: [`Engine::progress`]
//! drives it, and so do `status`, `wait` and `pop_notification`; a progress thread can
//! be configured for engines that only serve.
//!
//! [`Engine::progress`]: crate::Engine::progress

// Unsafe code: libfabric, called through its C ABI (the crate root denies it elsewhere).
#![allow(unsafe_code)]

// The transport by job: `config` (public configuration and counters), `wire` (the
// endpoint description, immediate data and control messages: the fuzzed part),
// `send` (posting and the sender side), `recv` (progress and the receiver side);
// this file holds `Fabric` itself, its opening and its address book. `domain` wraps
// the libfabric objects, `api` the loaded library, `sys` its generated bindings.
mod api;
mod config;
mod domain;
mod keys;
mod link;
#[cfg(feature = "testing")]
mod raw;
mod recv;
mod send;
#[allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    missing_docs,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]
mod sys;
mod transport;
mod wire;

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use api::LIBRARY_ENV;
pub use config::{FabricConfig, FabricStats, PROVIDER_ENV};
pub use domain::close_failures;
pub(crate) use domain::{Domain, Mr};
pub(crate) use keys::DomainKeys;
pub(crate) use link::FabricLink;
#[cfg(feature = "testing")]
pub use raw::{RawRma, RawRun};
pub(crate) use transport::KIND;
pub(crate) use wire::FabricInfo;
#[cfg(feature = "testing")]
pub use wire::fuzz_control;

use crate::error::{Error, Result};
use crate::notify::InboxMap;
use domain::Endpoint;
use recv::RxState;
use send::TxSlot;
use wire::{HEADER, HELLO_MAX};

/// Page-aligned memory for control messages: `capacity` send buffers, one for the
/// HELLO, then the receive buffers. Registered with the provider when it asks
/// (`FI_MR_LOCAL`).
struct CtrlArea {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl CtrlArea {
    fn new(bytes: usize) -> Result<CtrlArea> {
        let layout = std::alloc::Layout::from_size_align(bytes.max(4096), 4096).map_err(|_| Error::InvalidConfig {
            field: "fabric",
            reason: "control buffers exceed the address space",
        })?;
        // SAFETY: a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Ok(CtrlArea { ptr, layout })
    }
}

impl Drop for CtrlArea {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the endpoint that could touch
        // it was closed first (field order of `Fabric`).
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

pub(crate) use super::Sink;

/// The fabric transport of one engine.
pub(crate) struct Fabric {
    // Field order is drop order: the endpoint closes before the memory its operations
    // point into (slots, control buffers) is freed.
    ep: Endpoint,
    ctrl_mr: Option<Mr>,
    ctrl: CtrlArea,
    slots: Box<[TxSlot]>,
    /// Bytes per control buffer.
    msg_size: usize,
    capacity: usize,
    rx_count: usize,
    max_notif_bytes: usize,
    /// Generation bits carried in immediate data (32 with 8-byte CQ data, 12 with 4).
    gen_bits: u32,
    rx: Mutex<RxState>,
    /// Slots whose control message met EAGAIN; sent again on the next progress.
    deferred: Mutex<Vec<u32>>,
    /// `deferred.len()`, read without the lock on every progress.
    deferred_count: AtomicUsize,
    /// Addresses inserted in the AV (control path).
    /// (endpoint address, AV address, engine id) of every peer inserted.
    addresses: Mutex<Vec<(Vec<u8>, u64, u64)>>,
    /// Serialises HELLOs (the one HELLO buffer); the context of their sends.
    hello: Mutex<()>,
    hello_state: AtomicU32,
    /// A HELLO's send has not completed yet (its buffer is the provider's).
    hello_in_flight: AtomicBool,
    /// The context of `inject_write`'s operation: 0 in flight, 1 done, else error + 1.
    inject_state: AtomicU32,
    /// (receiver engine id, our tag there) from WELCOME replies.
    welcomes: Mutex<Vec<(u64, u16)>>,
    /// Whether immediate data has room for the sender's tag (8 bytes); else senders
    /// are told apart by the completion's source address (`FI_SOURCE`).
    tagged: bool,
    max_peers: usize,
    inbox: Arc<InboxMap>,
    engine_id: u64,
    name: String,
    remote_writes: AtomicU64,
    epoch: Instant,
    /// The engine's default deadline in nanoseconds (`u64::MAX`: none). A transfer
    /// held this long or longer past its deadline condemns its peer as lost; one
    /// that only passed a shorter deadline of its own (`Engine::set_deadline`) fails
    /// for its owner, and says nothing of the peer.
    liveness: u64,
    /// When progress last looked for expired transfers (nanoseconds since `epoch`).
    scanned_at: AtomicU64,
    stale: AtomicU64,
    unattributed: AtomicU64,
    notifications: AtomicU64,
    aborts: AtomicU64,
    malformed: AtomicU64,
    expired: AtomicU64,
    lost_peers: AtomicU64,
    /// Sleeps in the CQ's wait descriptor (`FabricStats::sleeps`).
    sleeps: AtomicU64,
    /// Per AV address: the peer there is lost (a deadline passed, or the provider
    /// reported its connection gone); transfers to it fail at `post`. Addresses
    /// beyond the table are never marked.
    lost: Box<[AtomicBool]>,
}

// SAFETY: the raw pointers (control area, endpoint) are used under the rules stated at
// each use: a slot's buffer only by its owner, receive buffers only under the progress
// lock, and the endpoint is FI_THREAD_SAFE.
unsafe impl Send for Fabric {}
// SAFETY: as above.
unsafe impl Sync for Fabric {}

impl Fabric {
    /// Opens the domain (`Domain::open`) — done first, so the registry can register
    /// memory with it. With `hmem` (the engine has a cuda transport), the provider is
    /// asked for `FI_HMEM` too.
    pub(crate) fn open_domain(config: &FabricConfig, hmem: bool) -> Result<Arc<Domain>> {
        let env = std::env::var(PROVIDER_ENV).ok().filter(|p| !p.is_empty());
        let provider = env.as_deref().or(config.provider.as_deref());
        Domain::open(provider, config.node.as_deref(), hmem)
    }

    /// Opens the endpoint and allocates every slot's state and control buffer.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn open(
        domain: &Arc<Domain>,
        config: &FabricConfig,
        capacity: usize,
        max_notif_bytes: usize,
        max_peers: usize,
        inbox: Arc<InboxMap>,
        engine_id: u64,
        name: &str,
        liveness: u64,
    ) -> Result<Fabric> {
        if !(4..=4096).contains(&config.rx_buffers) {
            return Err(Error::InvalidConfig {
                field: "fabric.rx_buffers",
                reason: "must be 4 to 4096",
            });
        }
        let msg_size = (HEADER + max_notif_bytes.max(HELLO_MAX)).next_multiple_of(64);
        if config.cq_data_bytes.is_some_and(|n| n != 4 && n != 8) {
            return Err(Error::InvalidConfig {
                field: "fabric.cq_data_bytes",
                reason: "must be 4 or 8",
            });
        }
        let rx_count = config.rx_buffers;
        let ctrl = CtrlArea::new((capacity + 1 + rx_count + max_peers) * msg_size)?;
        let cq_size = (capacity * 2 + rx_count).min(1 << 16);
        let shm_name = shm_endpoint_name(domain, engine_id)?;
        let wait = config.progress_thread || config.blocking;
        let ep = Endpoint::open(domain, max_peers * 2 + 2, cq_size, shm_name.as_deref(), wait)?;
        let ctrl_mr = if domain.mr_mode & u64::from(sys::FI_MR_LOCAL) != 0 {
            Some(domain.register(ctrl.ptr as usize, ctrl.layout.size())?)
        } else {
            None
        };
        let cq_data = domain.cq_data_size.min(config.cq_data_bytes.unwrap_or(usize::MAX));
        let (tagged, gen_bits) = wire::immediate_layout(cq_data);
        let fabric = Fabric {
            ep,
            ctrl_mr,
            ctrl,
            slots: (0..capacity).map(|_| TxSlot::idle()).collect(),
            msg_size,
            capacity,
            rx_count,
            max_notif_bytes,
            gen_bits,
            rx: Mutex::new(RxState::new(max_peers, rx_count)),
            deferred: Mutex::new(Vec::with_capacity(capacity)),
            deferred_count: AtomicUsize::new(0),
            addresses: Mutex::new(Vec::with_capacity(max_peers)),
            hello: Mutex::new(()),
            hello_state: AtomicU32::new(0),
            hello_in_flight: AtomicBool::new(false),
            inject_state: AtomicU32::new(0),
            welcomes: Mutex::new(Vec::with_capacity(max_peers)),
            tagged,
            max_peers,
            inbox,
            engine_id,
            name: name.to_owned(),
            remote_writes: AtomicU64::new(0),
            epoch: Instant::now(),
            liveness,
            scanned_at: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            unattributed: AtomicU64::new(0),
            notifications: AtomicU64::new(0),
            aborts: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            lost_peers: AtomicU64::new(0),
            sleeps: AtomicU64::new(0),
            lost: (0..max_peers * 4 + 16).map(|_| AtomicBool::new(false)).collect(),
        };
        fabric.post_receive_buffers()?;
        Ok(fabric)
    }

    /// Posts every receive buffer; an error if the provider refused any.
    fn post_receive_buffers(&self) -> Result<()> {
        let mut rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..self.rx_count as u32 {
            self.repost(&mut rx, i);
        }
        if !rx.unposted.is_empty() {
            return Err(Error::FabricUnavailable {
                reason: format!("the provider refused {} receive buffers", rx.unposted.len()),
            });
        }
        Ok(())
    }

    /// This endpoint's description for the metadata blob.
    pub(crate) fn info(&self, keys: Vec<(u64, u64)>) -> FabricInfo {
        FabricInfo {
            provider: self.ep.domain.provider.clone(),
            address: self.ep.name.clone(),
            capacity: self.capacity as u32,
            max_notif_bytes: self.max_notif_bytes as u32,
            virt_addr: self.ep.domain.virt_addr(),
            keys,
        }
    }

    /// The provider in use.
    pub(crate) fn provider(&self) -> &str {
        &self.ep.domain.provider
    }

    /// Whether remote addresses are virtual addresses (else offsets).
    pub(crate) fn virt_addr(&self) -> bool {
        self.ep.domain.virt_addr()
    }

    /// Bytes it allocated when opened: the control buffers and the per-slot state
    /// (sender tables come later, one per sender, at its HELLO).
    pub(crate) fn bytes(&self) -> usize {
        self.ctrl.layout.size() + std::mem::size_of_val(&*self.slots) + self.lost.len()
    }

    /// Receiver-side counters.
    /// Slots with operations in flight (or a poster's reference): what the
    /// provider still holds.
    pub(crate) fn held(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.pending.load(Ordering::Acquire) != 0)
            .count()
    }

    pub(crate) fn stats(&self) -> FabricStats {
        let senders = self.rx.lock().map(|rx| rx.senders()).unwrap_or(0);
        FabricStats {
            remote_writes: self.remote_writes.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            unattributed: self.unattributed.load(Ordering::Relaxed),
            notifications: self.notifications.load(Ordering::Relaxed),
            aborts: self.aborts.load(Ordering::Relaxed),
            senders,
            malformed: self.malformed.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            lost_peers: self.lost_peers.load(Ordering::Relaxed),
            sleeps: self.sleeps.load(Ordering::Relaxed),
        }
    }

    // ----- control buffers -----

    fn desc(&self) -> *mut c_void {
        self.ctrl_mr
            .as_ref()
            .map_or(std::ptr::null_mut(), |m| m.desc as *mut c_void)
    }

    /// Control buffer `i` (slot `i`, the HELLO at `capacity`, then receive buffers,
    /// then one WELCOME buffer per sender place).
    fn buffer(&self, i: usize) -> *mut u8 {
        debug_assert!(i < self.capacity + 1 + self.rx_count + self.max_peers);
        // SAFETY: inside the control area (checked above by construction of `i`).
        unsafe { self.ctrl.ptr.add(i * self.msg_size) }
    }

    fn rx_buffer(&self, i: u32) -> *mut u8 {
        self.buffer(self.capacity + 1 + i as usize)
    }

    fn welcome_buffer(&self, tag: usize) -> *mut u8 {
        self.buffer(self.capacity + 1 + self.rx_count + tag)
    }

    // ----- peer addresses -----

    /// The AV address of engine `engine_id`'s endpoint address, inserting it once.
    /// Another engine at an address we knew (a restarted peer) replaces the old
    /// entry, whose connection state goes with it; the old `fi_addr_t` is returned too.
    pub(crate) fn address(&self, addr: &[u8], engine_id: u64) -> Result<(u64, Option<u64>)> {
        let mut book = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        let mut replaced = None;
        if let Some(i) = book.iter().position(|(a, _, _)| a == addr) {
            if book[i].2 == engine_id {
                return Ok((book[i].1, None));
            }
            let (_, old, _) = book.swap_remove(i);
            self.ep.remove(old)?;
            replaced = Some(old);
        }
        let fi_addr = self.ep.insert(addr)?;
        // The AV may give back the address of a peer declared lost: loaded again, it
        // is reachable again.
        if let Some(l) = self.lost.get(fi_addr as usize) {
            l.store(false, Ordering::Release);
        }
        book.push((addr.to_vec(), fi_addr, engine_id));
        Ok((fi_addr, replaced))
    }

    /// Whether the peer at `dest` was declared lost.
    pub(crate) fn is_lost(&self, dest: u64) -> bool {
        self.lost.get(dest as usize).is_some_and(|l| l.load(Ordering::Acquire))
    }

    /// Declares the peer at `dest` lost: new transfers to it fail at `post`, and its
    /// address is forgotten, so loading the peer again inserts it afresh (a new
    /// `fi_addr_t`, a new connection).
    fn mark_lost(&self, dest: u64) {
        if let Some(l) = self.lost.get(dest as usize) {
            l.store(true, Ordering::Release);
        }
        self.forget(dest);
    }

    /// Forgets a lost peer's address: loading the peer again inserts it afresh.
    /// The AV entry itself stays: the shm provider of libfabric 1.17 crashes later
    /// when an address with operations still queued is removed.
    fn forget(&self, dest: u64) {
        let mut book = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = book.iter().position(|(_, a, _)| *a == dest) {
            book.swap_remove(i);
            self.lost_peers.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The name the shm provider gives its shared-memory region, for an endpoint of that
/// provider (`None` for others). By default it is `<pid>:<n>:<n>`: a region left by a
/// killed process makes the next process with that pid fail fi_enable with EBUSY. A
/// name with the engine id cannot collide, and `shm::sweep_dead` removes it once its
/// process is gone.
fn shm_endpoint_name(domain: &Domain, engine_id: u64) -> Result<Option<std::ffi::CString>> {
    domain
        .provider
        .starts_with("shm")
        .then(|| std::ffi::CString::new(format!("ringxfer-{engine_id:016x}-fi")))
        .transpose()
        .map_err(|_| Error::InvalidConfig {
            field: "name",
            reason: "contains a NUL byte",
        })
}
