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

mod api;
mod domain;
mod keys;
mod link;
mod transport;
mod raw;
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

use std::ffi::c_void;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use api::LIBRARY_ENV;
pub use domain::close_failures;
pub(crate) use domain::{Domain, Mr};
pub(crate) use keys::DomainKeys;
pub(crate) use link::FabricLink;
pub(crate) use transport::KIND;
pub use raw::{RawRma, RawRun};

use crate::Op;
use crate::error::{Error, Result};
use crate::mem::Resolved;
use crate::notify::{InboxMap, Outbox, REMOTE_OWNER};
use crate::ring::{FailCode, FailSource, Handle, Outcome, TransportId};
use crate::wire::metadata::Reader;
use domain::Endpoint;

/// The environment variable that chooses the provider, over [`FabricConfig::provider`].
pub const PROVIDER_ENV: &str = "RINGXFER_FI_PROVIDER";

/// How an engine uses libfabric. `Config::fabric = Some(..)` turns the transport on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FabricConfig {
    /// The provider (`tcp`, `shm`, `verbs`, `efa`, …); `None` lets libfabric choose the
    /// best. The environment variable `RINGXFER_FI_PROVIDER` overrides it.
    pub provider: Option<String>,
    /// A local address to bind to (an interface's IP for `tcp`); `None` for the
    /// provider's default.
    pub node: Option<String>,
    /// Receive buffers kept posted for control messages, 4 ..= 4096. Default 64.
    pub rx_buffers: usize,
    /// Start a thread that drives progress (for an engine that only serves others'
    /// READs and WRITEs and never calls `progress` itself). Default false.
    pub progress_thread: bool,
    /// How long a posted transfer may take. Past it the transfer reads as
    /// `Failed(FailCode::TIMEOUT)` (`Engine::status`, `Engine::wait`); its slot stays
    /// the provider's until the provider gives the operation back, so a late
    /// completion can never touch a newer transfer. Default 30 s.
    pub deadline: Duration,
}

impl Default for FabricConfig {
    fn default() -> FabricConfig {
        FabricConfig {
            provider: None,
            node: None,
            rx_buffers: 64,
            progress_thread: false,
            deadline: Duration::from_secs(30),
        }
    }
}

/// Receiver-side counters of the fabric transport, in `EngineStats::fabric`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FabricStats {
    /// Remote writes counted into a sender's table.
    pub remote_writes: u64,
    /// Arrivals (writes, notifications, aborts) of a generation older than the one
    /// their table entry holds: dropped, never matched.
    pub stale: u64,
    /// Arrivals from an address no `HELLO` introduced, or naming a slot outside the
    /// sender's table: dropped.
    pub unattributed: u64,
    /// Notifications delivered to the inbox.
    pub notifications: u64,
    /// `ABORT` messages received (a sender's WRITE failed).
    pub aborts: u64,
    /// Senders this engine keeps a table for.
    pub senders: usize,
    /// Control messages received that were malformed.
    pub malformed: u64,
    /// Transfers failed by their deadline (`FailCode::TIMEOUT`) while the provider
    /// still held them.
    pub expired: u64,
    /// Peers declared lost (a deadline passed).
    pub lost_peers: u64,
}

// ----- control messages -----
//
// A 32-byte header, little-endian: magic u32, kind u8, 1 byte zero, sender tag u16,
// payload length u32, 4 bytes zero, handle u64, count u64; then the payload.

const MAGIC: u32 = 0x5258_4631; // "RXF1"
const HELLO: u8 = 1;
const NOTIFY: u8 = 2;
const ABORT: u8 = 3;
const WELCOME: u8 = 4;
/// Where the sender's tag sits in 8-byte immediate data.
const TAG_SHIFT: u32 = 52;
const HEADER: usize = 32;
/// engine id, capacity, name length, address length, name (≤ 255), address (≤ 256).
const HELLO_MAX: usize = 8 + 4 + 2 + 2 + 255 + 256;

/// What a peer's metadata says about its fabric endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FabricInfo {
    pub(crate) provider: String,
    pub(crate) address: Vec<u8>,
    pub(crate) capacity: u32,
    pub(crate) max_notif_bytes: u32,
    pub(crate) virt_addr: bool,
    /// (region id, remote key) of every memory region.
    pub(crate) keys: Vec<(u64, u64)>,
}

impl FabricInfo {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.capacity.to_le_bytes());
        out.extend_from_slice(&self.max_notif_bytes.to_le_bytes());
        out.push(u8::from(self.virt_addr));
        out.extend_from_slice(&(self.provider.len() as u16).to_le_bytes());
        out.extend_from_slice(self.provider.as_bytes());
        out.extend_from_slice(&(self.address.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.address);
        out.extend_from_slice(&(self.keys.len() as u32).to_le_bytes());
        for (id, key) in &self.keys {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&key.to_le_bytes());
        }
        out
    }

    /// Parses `conn`; `None` if malformed.
    pub(crate) fn decode(conn: &[u8]) -> Option<FabricInfo> {
        let mut r = Reader::new(conn);
        let capacity = r.u32().ok()?;
        let max_notif_bytes = r.u32().ok()?;
        let virt_addr = match r.u8().ok()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let n = r.u16().ok()? as usize;
        let provider = std::str::from_utf8(r.bytes(n).ok()?).ok()?.to_owned();
        let n = r.u16().ok()? as usize;
        let address = r.bytes(n).ok()?.to_vec();
        let count = r.u32().ok()? as usize;
        r.ensure_room(count, 16).ok()?;
        let keys = (0..count)
            .map(|_| Some((r.u64().ok()?, r.u64().ok()?)))
            .collect::<Option<Vec<_>>>()?;
        if !r.is_empty() || address.is_empty() || address.len() > 256 {
            return None;
        }
        Some(FabricInfo {
            provider,
            address,
            capacity,
            max_notif_bytes,
            virt_addr,
            keys,
        })
    }
}

// ----- per-slot state -----

/// Data operations in flight (or being posted).
const PHASE_DATA: u32 = 0;
/// The NOTIFY message in flight.
const PHASE_NOTIFY: u32 = 1;
/// The ABORT message in flight after a failure.
const PHASE_ABORT: u32 = 2;

/// One slot's fabric state; its address is the `op_context` of the slot's operations.
#[repr(align(64))]
struct TxSlot {
    handle: AtomicU64,
    /// Operations in flight, plus one held by the poster while it posts.
    pending: AtomicU32,
    /// The first failure's `FailCode` bits; 0 while none.
    error: AtomicU32,
    phase: AtomicU32,
    /// Length of the control message in the slot's buffer; 0 if no notification.
    message_len: AtomicU32,
    dest: AtomicU64,
    /// When the transfer expires (nanoseconds since `Fabric::epoch`); 0 while it is
    /// not armed (being posted, or finished).
    deadline: AtomicU64,
}

/// A receiver's table entry for one sender slot.
#[derive(Clone, Copy)]
struct RxEntry {
    /// The generation (as carried on the wire) the entry describes.
    generation: u64,
    seen: u64,
    /// Writes the NOTIFY announced; `u64::MAX` before it arrived.
    want: u64,
    /// The receive buffer holding the NOTIFY until the writes are all seen.
    held: u32,
}

const NONE: u32 = u32::MAX;

impl RxEntry {
    const EMPTY: RxEntry = RxEntry {
        generation: 0,
        seen: 0,
        want: u64::MAX,
        held: NONE,
    };
}

/// A sender that introduced itself with a HELLO. Its index in `RxState::peers` is
/// its *tag*, which the WELCOME reply tells it and which it puts in the immediate
/// data of its writes and the header of its messages.
struct RxPeer {
    engine_id: u64,
    addr: u64,
    outbox: Outbox,
    table: Box<[RxEntry]>,
    /// The WELCOME to this sender is in flight (its buffer is busy).
    welcoming: bool,
    /// A WELCOME is owed (the last attempt met EAGAIN or a busy buffer).
    welcome_owed: bool,
    /// When it last sent anything (its place may go to a new sender after a long
    /// silence when the table is full).
    last_active: Instant,
}

/// Receiver state, touched only by whoever holds the progress lock.
struct RxState {
    /// `max_peers` places, indexed by tag.
    peers: Vec<Option<RxPeer>>,
    /// (sender, receive buffer) of notifications whose writes are all seen but whose
    /// inbox lane was full; retried on every progress.
    blocked: Vec<(u32, u32)>,
    /// Receive buffers the provider refused to take back (EAGAIN); retried.
    unposted: Vec<u32>,
    /// Some sender place owes a WELCOME.
    welcomes_owed: bool,
}

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
    /// Generation bits carried in immediate data (44 with 8-byte CQ data).
    gen_bits: u32,
    rx: Mutex<RxState>,
    /// Slots whose control message met EAGAIN; sent again on the next progress.
    deferred: Mutex<Vec<u32>>,
    /// `deferred.len()`, read without the lock on every progress.
    deferred_count: std::sync::atomic::AtomicUsize,
    /// Addresses inserted in the AV (control path).
    /// (endpoint address, AV address, engine id) of every peer inserted.
    addresses: Mutex<Vec<(Vec<u8>, u64, u64)>>,
    /// Serialises HELLOs (the one HELLO buffer); the context of their sends.
    hello: Mutex<()>,
    hello_state: AtomicU32,
    /// A HELLO's send has not completed yet (its buffer is the provider's).
    hello_in_flight: std::sync::atomic::AtomicBool,
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
    deadline: Duration,
    /// When progress last looked for expired transfers (nanoseconds since `epoch`).
    scanned_at: AtomicU64,
    stale: AtomicU64,
    unattributed: AtomicU64,
    notifications: AtomicU64,
    aborts: AtomicU64,
    malformed: AtomicU64,
    expired: AtomicU64,
    lost_peers: AtomicU64,
    /// Per AV address: the peer there is lost (a deadline passed, or the provider
    /// reported its connection gone); transfers to it fail at `post`. Addresses
    /// beyond the table are never marked.
    lost: Box<[std::sync::atomic::AtomicBool]>,
}

// SAFETY: the raw pointers (control area, endpoint) are used under the rules stated at
// each use: a slot's buffer only by its owner, receive buffers only under the progress
// lock, and the endpoint is FI_THREAD_SAFE.
unsafe impl Send for Fabric {}
// SAFETY: as above.
unsafe impl Sync for Fabric {}

/// How long a post keeps retrying a provider that says EAGAIN (driving progress in
/// between) before the transfer fails.
const EAGAIN_PATIENCE: Duration = Duration::from_secs(2);

/// Completions read per `fi_cq_read` call, and the most one progress call handles.
const CQ_BATCH: usize = 16;
const CQ_BUDGET: usize = 1024;

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
    ) -> Result<Fabric> {
        if !(4..=4096).contains(&config.rx_buffers) {
            return Err(Error::InvalidConfig {
                field: "fabric.rx_buffers",
                reason: "must be 4 to 4096",
            });
        }
        let msg_size = (HEADER + max_notif_bytes.max(HELLO_MAX)).next_multiple_of(64);
        let rx_count = config.rx_buffers;
        let ctrl = CtrlArea::new((capacity + 1 + rx_count + max_peers) * msg_size)?;
        let cq_size = (capacity * 2 + rx_count).min(1 << 16);
        // The shm provider names its shared-memory region after the endpoint, by
        // default `<pid>:<n>:<n>`: a region left by a killed process makes the next
        // process with that pid fail fi_enable with EBUSY. A name with the engine id
        // cannot collide, and `shm::sweep_dead` removes it once its process is gone.
        let shm_name = domain
            .provider
            .starts_with("shm")
            .then(|| std::ffi::CString::new(format!("ringxfer-{engine_id:016x}-fi")))
            .transpose()
            .map_err(|_| Error::InvalidConfig {
                field: "name",
                reason: "contains a NUL byte",
            })?;
        let ep = Endpoint::open(domain, max_peers * 2 + 2, cq_size, shm_name.as_deref())?;
        let ctrl_mr = if domain.mr_mode & u64::from(sys::FI_MR_LOCAL) != 0 {
            Some(domain.register(ctrl.ptr as usize, ctrl.layout.size())?)
        } else {
            None
        };
        let slots = (0..capacity)
            .map(|_| TxSlot {
                handle: AtomicU64::new(0),
                pending: AtomicU32::new(0),
                error: AtomicU32::new(0),
                phase: AtomicU32::new(PHASE_DATA),
                message_len: AtomicU32::new(0),
                dest: AtomicU64::new(0),
                deadline: AtomicU64::new(0),
            })
            .collect();
        let tagged = domain.cq_data_size >= 8;
        // 8 bytes: tag (12 bits), generation (32), index (20); 4 bytes: generation (12)
        // and index.
        let gen_bits = if tagged {
            32
        } else {
            (domain.cq_data_size as u32 * 8)
                .saturating_sub(crate::ring::INDEX_BITS)
                .min(32)
        };
        let fabric = Fabric {
            ep,
            ctrl_mr,
            ctrl,
            slots,
            msg_size,
            capacity,
            rx_count,
            max_notif_bytes,
            gen_bits,
            rx: Mutex::new(RxState {
                peers: (0..max_peers).map(|_| None).collect(),
                blocked: Vec::with_capacity(rx_count),
                unposted: Vec::with_capacity(rx_count),
                welcomes_owed: false,
            }),
            deferred: Mutex::new(Vec::with_capacity(capacity)),
            deferred_count: std::sync::atomic::AtomicUsize::new(0),
            addresses: Mutex::new(Vec::with_capacity(max_peers)),
            hello: Mutex::new(()),
            hello_state: AtomicU32::new(0),
            hello_in_flight: std::sync::atomic::AtomicBool::new(false),
            inject_state: AtomicU32::new(0),
            welcomes: Mutex::new(Vec::with_capacity(max_peers)),
            tagged,
            max_peers,
            inbox,
            engine_id,
            name: name.to_owned(),
            remote_writes: AtomicU64::new(0),
            epoch: Instant::now(),
            deadline: config.deadline,
            scanned_at: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            unattributed: AtomicU64::new(0),
            notifications: AtomicU64::new(0),
            aborts: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            lost_peers: AtomicU64::new(0),
            lost: (0..max_peers * 4 + 16)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
        };
        let mut rx = fabric.rx.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..rx_count as u32 {
            fabric.repost(&mut rx, i);
        }
        if !rx.unposted.is_empty() {
            return Err(Error::FabricUnavailable {
                reason: format!("the provider refused {} receive buffers", rx.unposted.len()),
            });
        }
        drop(rx);
        Ok(fabric)
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

    // ----- control path -----

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

    /// Introduces this engine to the peer `peer_engine` at `dest`: a HELLO, then its
    /// WELCOME, waited for (up to `timeout`). Returns our tag at the peer.
    pub(crate) fn hello(
        &self,
        dest: u64,
        peer_engine: u64,
        capacity: usize,
        timeout: Duration,
        sink: Sink<'_>,
    ) -> Result<u16> {
        let _one = self.hello.lock().unwrap_or_else(|e| e.into_inner());
        // An earlier HELLO that timed out may still be in flight: its buffer and
        // completion state are the provider's until it completes.
        let start = Instant::now();
        while self.hello_in_flight.load(Ordering::Acquire) {
            if self.hello_state.load(Ordering::Acquire) != 0 {
                self.hello_in_flight.store(false, Ordering::Release);
                break;
            }
            if start.elapsed() > timeout {
                return Err(Error::PeerUnreachable {
                    name: String::from("(fabric peer)"),
                    reason: String::from("an earlier HELLO (to another peer) is still in flight"),
                });
            }
            self.progress(sink, None);
            std::thread::yield_now();
        }
        self.welcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(engine, _)| *engine != peer_engine);
        let name = &self.name.as_bytes()[..self.name.len().min(255)];
        let addr = &self.ep.name;
        let mut payload = Vec::with_capacity(HELLO_MAX);
        payload.extend_from_slice(&self.engine_id.to_le_bytes());
        payload.extend_from_slice(&(capacity as u32).to_le_bytes());
        payload.extend_from_slice(&(name.len() as u16).to_le_bytes());
        payload.extend_from_slice(&(addr.len() as u16).to_le_bytes());
        payload.extend_from_slice(name);
        payload.extend_from_slice(addr);
        let buf = self.buffer(self.capacity);
        let len = write_message(buf, self.msg_size, HELLO, 0, 0, 0, &payload);
        self.hello_state.store(0, Ordering::Release);
        let context = (&raw const self.hello_state).cast_mut().cast::<c_void>();
        let start = Instant::now();
        // SAFETY: the HELLO buffer is ours under the `hello` lock and stays untouched
        // until the send completes (this or the next HELLO waits for it); the endpoint
        // is live.
        let ret = self.retry_eagain(timeout, sink, || unsafe {
            api::send(self.ep.ep, buf.cast(), len, self.desc(), dest, context)
        });
        if ret != 0 {
            return Err(self.ep.domain.api.error("fi_send(hello)", ret));
        }
        self.hello_in_flight.store(true, Ordering::Release);
        loop {
            let welcome = self
                .welcomes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|(engine, _)| *engine == peer_engine)
                .map(|(_, tag)| *tag);
            let state = self.hello_state.load(Ordering::Acquire);
            if state != 0 {
                self.hello_in_flight.store(false, Ordering::Release);
            }
            match state {
                0 => {}
                1 => {
                    if let Some(tag) = welcome {
                        return Ok(tag);
                    }
                }
                code => {
                    return Err(Error::PeerUnreachable {
                        name: String::from("(fabric peer)"),
                        reason: format!("the HELLO failed: {}", self.ep.domain.api.strerror(code as i32 - 1)),
                    });
                }
            }
            if start.elapsed() > timeout {
                // A send still in flight keeps its buffer: the next HELLO waits for it
                // (`hello_in_flight`).
                return Err(Error::PeerUnreachable {
                    name: String::from("(fabric peer)"),
                    reason: format!("no WELCOME reply to the HELLO within {timeout:?}"),
                });
            }
            self.progress(sink, None);
            std::thread::yield_now();
        }
    }

    /// Test hook: one raw `fi_writedata` of `local` to (`raddr`, `key`) at `dest`,
    /// carrying `handle` as if it were one of ours — a late or forged arrival for the
    /// receiver to judge. Waits for its completion (control path; serialised with
    /// HELLOs).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn inject_write(
        &self,
        dest: u64,
        tag: u16,
        local: &Resolved,
        raddr: u64,
        key: u64,
        handle: Handle,
        sink: Sink<'_>,
    ) -> Result<()> {
        let _one = self.hello.lock().unwrap_or_else(|e| e.into_inner());
        self.inject_state.store(0, Ordering::Release);
        let context = (&raw const self.inject_state).cast_mut().cast::<c_void>();
        // SAFETY: `local` is pinned by the caller until this returns, and we wait for
        // the operation's completion below; the endpoint is live.
        let ret = self.retry_eagain(EAGAIN_PATIENCE, sink, || unsafe {
            api::writedata(
                self.ep.ep,
                local.addr as *const c_void,
                local.len,
                local.key_desc as *mut c_void,
                self.immediate(handle, tag),
                dest,
                raddr,
                key,
                context,
            )
        });
        if ret != 0 {
            return Err(self.ep.domain.api.error("fi_writedata", ret));
        }
        loop {
            match self.inject_state.load(Ordering::Acquire) {
                0 => {}
                1 => return Ok(()),
                code => return Err(self.ep.domain.api.error("fi_writedata", -(code as isize - 1))),
            }
            self.progress(sink, None);
            std::thread::yield_now();
        }
    }

    /// Bytes it allocated when opened: the control buffers and the per-slot state
    /// (sender tables come later, one per sender, at its HELLO).
    pub(crate) fn bytes(&self) -> usize {
        self.ctrl.layout.size() + std::mem::size_of_val(&*self.slots) + self.lost.len()
    }

    /// Receiver-side counters.
    pub(crate) fn stats(&self) -> FabricStats {
        let senders = self
            .rx
            .lock()
            .map(|rx| rx.peers.iter().filter(|p| p.is_some()).count())
            .unwrap_or(0);
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
        }
    }

    // ----- hot path: post -----

    /// Starts a transfer in slot `handle`: every local buffer with its remote address
    /// and key (`remote(i)`), then, once they complete, the notification if any.
    ///
    /// `Err` means nothing was posted (the engine makes the transfer prepared again).
    /// `Ok`: the caller must call [`launch`](Fabric::launch) once it no longer borrows
    /// the transfer's context; the transfer is then reported to a sink exactly once.
    /// `sink` receives other transfers that progress ends meanwhile, never this one.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn post(
        &self,
        handle: Handle,
        op: Op,
        local: &[Resolved],
        remote: impl Fn(usize) -> (u64, u64),
        dest: u64,
        tag: u16,
        notif: Option<&[u8]>,
        sink: Sink<'_>,
    ) -> Result<()> {
        let index = handle.index() as usize;
        let slot = &self.slots[index];
        let context = (slot as *const TxSlot).cast_mut().cast::<c_void>();
        slot.handle.store(handle.to_raw(), Ordering::Relaxed);
        slot.error.store(0, Ordering::Relaxed);
        slot.phase.store(PHASE_DATA, Ordering::Relaxed);
        slot.dest.store(dest, Ordering::Relaxed);
        let max = self.ep.domain.max_msg_size;
        let ops: u64 = local.iter().map(|l| l.len.div_ceil(max).max(1) as u64).sum();
        let message_len = match notif {
            Some(payload) => {
                let writes = if op == Op::Write { ops } else { 0 };
                write_message(
                    self.buffer(index),
                    self.msg_size,
                    NOTIFY,
                    tag,
                    handle.to_raw(),
                    writes,
                    payload,
                ) as u32
            }
            None => 0,
        };
        slot.message_len.store(message_len, Ordering::Relaxed);
        // The poster's reference: completions cannot finish the slot while we post.
        slot.pending.store(1, Ordering::Release);
        let imm = self.immediate(handle, tag);
        let mut posted = false;
        'descs: for (i, l) in local.iter().enumerate() {
            let (raddr, key) = remote(i);
            let mut done = 0;
            while done < l.len {
                let len = (l.len - done).min(max);
                slot.pending.fetch_add(1, Ordering::AcqRel);
                let ret = self.retry_eagain(EAGAIN_PATIENCE, sink, || {
                    let buf = (l.addr + done) as *mut c_void;
                    // SAFETY: `l` is pinned by the transfer (its region cannot go before
                    // the slot is freed, which waits for this completion); the remote
                    // range was checked against the peer's metadata; `context` is the
                    // slot's state, alive as long as the engine.
                    unsafe {
                        match op {
                            Op::Write => api::writedata(
                                self.ep.ep,
                                buf,
                                len,
                                l.key_desc as *mut c_void,
                                imm,
                                dest,
                                raddr + done as u64,
                                key,
                                context,
                            ),
                            Op::Read => api::read(
                                self.ep.ep,
                                buf,
                                len,
                                l.key_desc as *mut c_void,
                                dest,
                                raddr + done as u64,
                                key,
                                context,
                            ),
                        }
                    }
                });
                if ret != 0 {
                    slot.pending.fetch_sub(1, Ordering::AcqRel);
                    if !posted {
                        slot.pending.store(0, Ordering::Release);
                        return Err(self.ep.domain.api.error(
                            match op {
                                Op::Write => "fi_writedata",
                                Op::Read => "fi_read",
                            },
                            ret,
                        ));
                    }
                    fail(slot, fail_code(ret.unsigned_abs() as i32));
                    break 'descs;
                }
                posted = true;
                done += len;
            }
        }
        self.arm(slot);
        // The poster's reference stays until `launch`, which the engine calls once it
        // no longer borrows the transfer's context: until then no completion can end
        // the slot (and reclaim that context).
        Ok(())
    }

    /// Sets the slot's deadline: `FabricConfig::deadline` from now.
    fn arm(&self, slot: &TxSlot) {
        let expires = self.epoch.elapsed().saturating_add(self.deadline).as_nanos().max(1);
        slot.deadline
            .store(u64::try_from(expires).unwrap_or(u64::MAX), Ordering::Release);
    }

    /// Drops the poster's reference taken by a successful `post`; if every operation
    /// already completed, moves the slot on (its notification, or its end).
    pub(crate) fn launch(&self, handle: Handle, sink: Sink<'_>) {
        self.release_ref(handle.index() as usize, sink);
    }

    /// The immediate data a WRITE carries: our tag at the receiver, the low 32 bits
    /// of the generation and the index; with 4-byte CQ data the index and the low 12
    /// generation bits only. The receiver compares generations serially, so the bits
    /// that are cut never make an old generation look new.
    fn immediate(&self, handle: Handle, tag: u16) -> u64 {
        let generation = handle.generation() & ((1u64 << self.gen_bits) - 1);
        let tag = if self.tagged { u64::from(tag) << TAG_SHIFT } else { 0 };
        tag | generation << crate::ring::INDEX_BITS | u64::from(handle.index())
    }

    /// Drops one reference to the slot's current phase; the last one moves it on.
    fn release_ref(&self, index: usize, sink: Sink<'_>) {
        if self.slots[index].pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.finish_phase(index, sink);
        }
    }

    /// Every operation of the slot's phase completed.
    fn finish_phase(&self, index: usize, sink: Sink<'_>) {
        let slot = &self.slots[index];
        let handle = Handle::from_raw(slot.handle.load(Ordering::Relaxed));
        let error = slot.error.load(Ordering::Acquire);
        match slot.phase.load(Ordering::Relaxed) {
            PHASE_DATA if slot.message_len.load(Ordering::Relaxed) != 0 => {
                if error != 0 {
                    // Tell the receiver not to wait for writes that will not all come.
                    let tag = read_header(self.buffer(index), self.msg_size).map_or(0, |h| h.tag);
                    let len = write_message(self.buffer(index), self.msg_size, ABORT, tag, handle.to_raw(), 0, &[]);
                    slot.message_len.store(len as u32, Ordering::Relaxed);
                    slot.phase.store(PHASE_ABORT, Ordering::Relaxed);
                } else {
                    slot.phase.store(PHASE_NOTIFY, Ordering::Relaxed);
                }
                slot.pending.store(1, Ordering::Release);
                // The control message has a deadline of its own.
                self.arm(slot);
                self.send_control(index, sink);
            }
            PHASE_ABORT => {
                // The ABORT's own outcome does not change the transfer's.
                slot.deadline.store(0, Ordering::Release);
                sink(handle, outcome(error));
            }
            _ => {
                slot.deadline.store(0, Ordering::Release);
                sink(handle, outcome(error));
            }
        }
    }

    /// Sends slot `index`'s control message (its pending count is 1); false if the
    /// provider said EAGAIN and the send was deferred.
    fn send_control(&self, index: usize, sink: Sink<'_>) -> bool {
        let slot = &self.slots[index];
        let context = (slot as *const TxSlot).cast_mut().cast::<c_void>();
        let len = slot.message_len.load(Ordering::Relaxed) as usize;
        // SAFETY: the slot's buffer is written only by the slot's owner, before this
        // send and not again until it completes; the endpoint is live.
        let ret = unsafe {
            api::send(
                self.ep.ep,
                self.buffer(index).cast(),
                len,
                self.desc(),
                slot.dest.load(Ordering::Relaxed),
                context,
            )
        };
        if ret == 0 {
            return true;
        }
        if ret == api::EAGAIN {
            // Capacity is reserved: at most one entry per slot.
            let mut deferred = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
            deferred.push(index as u32);
            self.deferred_count.store(deferred.len(), Ordering::Release);
            return false;
        }
        fail(slot, fail_code(ret.unsigned_abs() as i32));
        self.release_ref(index, sink);
        true
    }

    // ----- hot path: progress -----

    /// Reads completions and reports finished transfers to `sink`; with `expire`,
    /// also fails overdue transfers through it (see `FabricConfig::deadline`).
    /// Returns how many completion entries it handled. Another thread already progressing makes this a
    /// no-op.
    pub(crate) fn progress(&self, sink: Sink<'_>, expire: Option<&dyn Fn(Handle, FailCode) -> bool>) -> usize {
        let Ok(mut rx) = self.rx.try_lock() else {
            return 0;
        };
        if let Some(expire) = expire {
            self.expire_overdue(expire);
        }
        self.retry_deferred(sink);
        self.retry_blocked(&mut rx);
        self.retry_welcomes(&mut rx);
        let mut handled = 0;
        // SAFETY: plain-old-data structs; all-zero is a valid value.
        let mut entries: [sys::fi_cq_data_entry; CQ_BATCH] = unsafe { std::mem::zeroed() };
        let mut sources = [api::FI_ADDR_NOTAVAIL; CQ_BATCH];
        while handled < CQ_BUDGET {
            // SAFETY: live CQ; the arrays hold CQ_BATCH entries of the CQ's format.
            let n = unsafe { api::cq_readfrom(self.ep.cq, entries.as_mut_ptr(), CQ_BATCH, sources.as_mut_ptr()) };
            if n > 0 {
                for i in 0..n as usize {
                    self.on_completion(&mut rx, &entries[i], sources[i], sink);
                }
                handled += n as usize;
                continue;
            }
            if n == -(sys::FI_EAVAIL as isize) {
                // SAFETY: as above.
                let mut err: sys::fi_cq_err_entry = unsafe { std::mem::zeroed() };
                // SAFETY: live CQ; `err` is a zeroed entry (err_data_size 0: no
                // provider-specific error data is asked for).
                if unsafe { api::cq_readerr(self.ep.cq, &mut err) } > 0 {
                    self.on_error(&mut rx, &err, sink);
                    handled += 1;
                    continue;
                }
            }
            break;
        }
        handled
    }

    /// At most once a millisecond: fails (for their owners) the transfers whose
    /// deadline passed, with `TIMEOUT`. A peer that let a deadline pass is taken as
    /// lost: its other transfers in flight fail too (`PEER_LOST`) and its address is
    /// forgotten (a restarted peer is loaded again). Slots stay posted until the
    /// provider completes them.
    fn expire_overdue(&self, expire: &dyn Fn(Handle, FailCode) -> bool) {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let last = self.scanned_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1_000_000 {
            return;
        }
        self.scanned_at.store(now, Ordering::Relaxed);
        let mut lost = [u64::MAX; 8];
        let mut lost_count = 0;
        for slot in self.slots.iter() {
            let deadline = slot.deadline.load(Ordering::Acquire);
            if deadline == 0 || deadline > now {
                continue;
            }
            if self.expire_slot(slot, deadline, FailCode::TIMEOUT, expire) {
                let dest = slot.dest.load(Ordering::Relaxed);
                if !lost[..lost_count].contains(&dest) && lost_count < lost.len() {
                    lost[lost_count] = dest;
                    lost_count += 1;
                }
            }
        }
        if lost_count == 0 {
            return;
        }
        let lost = &lost[..lost_count];
        for slot in self.slots.iter() {
            let deadline = slot.deadline.load(Ordering::Acquire);
            if deadline != 0 && lost.contains(&slot.dest.load(Ordering::Relaxed)) {
                self.expire_slot(slot, deadline, FailCode::PEER_LOST, expire);
            }
        }
        for &dest in lost {
            self.mark_lost(dest);
        }
    }

    /// Disarms `slot` (if its deadline is still `deadline`) and fails its transfer
    /// for its owner.
    fn expire_slot(
        &self,
        slot: &TxSlot,
        deadline: u64,
        code: FailCode,
        expire: &dyn Fn(Handle, FailCode) -> bool,
    ) -> bool {
        // The CAS fails if the slot finished or moved on meanwhile.
        if slot
            .deadline
            .compare_exchange(deadline, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        let handle = Handle::from_raw(slot.handle.load(Ordering::Acquire));
        let expired = expire(handle, code);
        if expired {
            self.expired.fetch_add(1, Ordering::Relaxed);
        }
        expired
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

    fn retry_deferred(&self, sink: Sink<'_>) {
        if self.deferred_count.load(Ordering::Acquire) == 0 {
            return;
        }
        for _ in 0..self.capacity {
            let next = {
                let mut deferred = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
                let next = deferred.pop();
                self.deferred_count.store(deferred.len(), Ordering::Release);
                next
            };
            let Some(index) = next else { break };
            if !self.send_control(index as usize, sink) {
                break; // EAGAIN again: try on the next progress.
            }
        }
    }

    fn retry_blocked(&self, rx: &mut RxState) {
        for i in (0..rx.unposted.len()).rev() {
            let buf = rx.unposted.swap_remove(i);
            self.repost(rx, buf);
        }
        let mut i = 0;
        while i < rx.blocked.len() {
            let (peer, buf) = rx.blocked[i];
            if self.deliver(rx, peer as usize, buf) {
                rx.blocked.remove(i);
            } else {
                i += 1;
            }
        }
    }

    fn retry_welcomes(&self, rx: &mut RxState) {
        if !rx.welcomes_owed {
            return;
        }
        rx.welcomes_owed = false;
        for tag in 0..rx.peers.len() {
            if rx.peers[tag].as_ref().is_some_and(|p| p.welcome_owed && !p.welcoming) {
                self.welcome(rx, tag);
            }
        }
    }

    /// Sends (or owes) the WELCOME that tells sender `tag` its tag.
    fn welcome(&self, rx: &mut RxState, tag: usize) {
        let Some(p) = rx.peers[tag].as_mut() else { return };
        if p.welcoming {
            p.welcome_owed = true;
            rx.welcomes_owed = true;
            return;
        }
        let buf = self.welcome_buffer(tag);
        let mut payload = [0u8; 10];
        payload[..8].copy_from_slice(&self.engine_id.to_le_bytes());
        payload[8..].copy_from_slice(&(tag as u16).to_le_bytes());
        let len = write_message(buf, self.msg_size, WELCOME, 0, 0, 0, &payload);
        // SAFETY: the sender place's WELCOME buffer is not in flight (`welcoming` is
        // false) and is touched only under the progress lock; the endpoint is live.
        let ret = unsafe { api::send(self.ep.ep, buf.cast(), len, self.desc(), p.addr, buf.cast()) };
        p.welcoming = ret == 0;
        p.welcome_owed = ret == api::EAGAIN;
        rx.welcomes_owed |= ret == api::EAGAIN;
    }

    /// Calls `op` (a post to the provider) until it says anything but `-FI_EAGAIN`, or
    /// `patience` runs out, driving progress in between so the provider's queues
    /// drain. Returns `op`'s last result.
    fn retry_eagain(&self, patience: Duration, sink: Sink<'_>, mut op: impl FnMut() -> isize) -> isize {
        let start = Instant::now();
        loop {
            let ret = op();
            if ret != api::EAGAIN || start.elapsed() > patience {
                return ret;
            }
            self.progress(sink, None);
        }
    }

    /// Which sender place a WELCOME buffer context is, if any.
    fn welcome_of(&self, context: *mut c_void) -> Option<usize> {
        element_of(context, self.welcome_buffer(0) as usize, self.msg_size, self.max_peers)
    }

    /// Which slot a context points at, if any.
    fn slot_of(&self, context: *mut c_void) -> Option<usize> {
        element_of(
            context,
            self.slots.as_ptr() as usize,
            std::mem::size_of::<TxSlot>(),
            self.capacity,
        )
    }

    /// Which receive buffer a context points at, if any.
    fn rx_of(&self, context: *mut c_void) -> Option<u32> {
        element_of(context, self.rx_buffer(0) as usize, self.msg_size, self.rx_count).map(|i| i as u32)
    }

    fn on_completion(&self, rx: &mut RxState, e: &sys::fi_cq_data_entry, source: u64, sink: Sink<'_>) {
        if let Some(index) = self.slot_of(e.op_context) {
            self.release_ref(index, sink);
        } else if let Some(buf) = self.rx_of(e.op_context) {
            self.on_message(rx, buf, e.len, source);
        } else if e.op_context == (&raw const self.hello_state).cast_mut().cast() {
            self.hello_state.store(1, Ordering::Release);
        } else if e.op_context == (&raw const self.inject_state).cast_mut().cast() {
            self.inject_state.store(1, Ordering::Release);
        } else if let Some(tag) = self.welcome_of(e.op_context) {
            if let Some(p) = rx.peers[tag].as_mut() {
                p.welcoming = false;
            }
        } else if e.flags & u64::from(sys::FI_REMOTE_WRITE) != 0 && e.flags & u64::from(sys::FI_REMOTE_CQ_DATA) != 0 {
            self.on_remote_write(rx, e.data, source);
        } else {
            self.unattributed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_error(&self, rx: &mut RxState, e: &sys::fi_cq_err_entry, sink: Sink<'_>) {
        if let Some(index) = self.slot_of(e.op_context) {
            let code = fail_code(e.err);
            if code == FailCode::PEER_LOST {
                self.mark_lost(self.slots[index].dest.load(Ordering::Relaxed));
            }
            fail(&self.slots[index], code);
            self.release_ref(index, sink);
        } else if let Some(buf) = self.rx_of(e.op_context) {
            // A receive cancelled or truncated: the buffer goes back.
            self.malformed.fetch_add(1, Ordering::Relaxed);
            self.repost(rx, buf);
        } else if e.op_context == (&raw const self.hello_state).cast_mut().cast() {
            self.hello_state.store(e.err.unsigned_abs() + 1, Ordering::Release);
        } else if e.op_context == (&raw const self.inject_state).cast_mut().cast() {
            self.inject_state.store(e.err.unsigned_abs() + 1, Ordering::Release);
        } else if let Some(tag) = self.welcome_of(e.op_context) {
            // The sender's hello() times out and reports it.
            if let Some(p) = rx.peers[tag].as_mut() {
                p.welcoming = false;
            }
        } else {
            self.unattributed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn repost(&self, rx: &mut RxState, buf: u32) {
        let ptr = self.rx_buffer(buf);
        // SAFETY: receive buffer `buf` is not posted (it just completed, or was held)
        // and is touched only under the progress lock; the endpoint is live.
        let ret = unsafe { api::recv(self.ep.ep, ptr.cast(), self.msg_size, self.desc(), ptr.cast()) };
        if ret != 0 {
            rx.unposted.push(buf);
        }
    }

    /// The sender place of an arrival: by the tag it carries, or (without room for
    /// tags) by its source address.
    fn sender(&self, rx: &RxState, tag: u64, source: u64) -> Option<usize> {
        if self.tagged {
            let tag = tag as usize;
            return rx.peers.get(tag)?.as_ref().map(|_| tag);
        }
        rx.peers
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.addr == source))
    }

    /// The table of sender place `peer` (found by `sender`).
    fn table(rx: &mut RxState, peer: usize) -> &mut [RxEntry] {
        match rx.peers[peer].as_mut() {
            Some(p) => &mut p.table,
            None => &mut [],
        }
    }

    /// Compares two wire generations (serial arithmetic over `gen_bits`).
    fn newer(&self, a: u64, b: u64) -> std::cmp::Ordering {
        if a == b {
            return std::cmp::Ordering::Equal;
        }
        let mask = (1u64 << self.gen_bits) - 1;
        if a.wrapping_sub(b) & mask < 1 << (self.gen_bits - 1) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Less
        }
    }

    /// The entry for (peer, wire handle) after moving it to the handle's generation;
    /// `None` (counted) if the arrival is stale or names no slot.
    fn entry(&self, rx: &mut RxState, peer: usize, raw: u64) -> Option<usize> {
        let index = (raw & ((1 << crate::ring::INDEX_BITS) - 1)) as usize;
        let generation = (raw >> crate::ring::INDEX_BITS) & ((1u64 << self.gen_bits) - 1);
        let Some(entry) = Self::table(rx, peer).get(index).copied() else {
            self.unattributed.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        match self.newer(generation, entry.generation) {
            std::cmp::Ordering::Less if entry.generation != 0 => {
                self.stale.fetch_add(1, Ordering::Relaxed);
                None
            }
            std::cmp::Ordering::Equal => Some(index),
            _ => {
                if entry.held != NONE {
                    // A NOTIFY of an older generation never saw its writes: dropped.
                    self.stale.fetch_add(1, Ordering::Relaxed);
                    self.repost(rx, entry.held);
                }
                Self::table(rx, peer)[index] = RxEntry {
                    generation,
                    ..RxEntry::EMPTY
                };
                Some(index)
            }
        }
    }

    fn on_remote_write(&self, rx: &mut RxState, data: u64, source: u64) {
        let Some(peer) = self.sender(rx, data >> TAG_SHIFT, source) else {
            self.unattributed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.touch(rx, peer);
        let Some(index) = self.entry(rx, peer, data) else {
            return;
        };
        self.remote_writes.fetch_add(1, Ordering::Relaxed);
        let e = &mut Self::table(rx, peer)[index];
        e.seen += 1;
        if e.seen >= e.want && e.held != NONE {
            let held = std::mem::replace(&mut e.held, NONE);
            if !self.deliver(rx, peer, held) {
                rx.blocked.push((peer as u32, held));
            }
        }
    }

    fn on_message(&self, rx: &mut RxState, buf: u32, len: usize, source: u64) {
        let ptr = self.rx_buffer(buf);
        let Some(h) = read_header(ptr, len.min(self.msg_size)) else {
            self.malformed.fetch_add(1, Ordering::Relaxed);
            self.repost(rx, buf);
            return;
        };
        match h.kind {
            HELLO => {
                // SAFETY: the message is `len` bytes of this receive buffer, which the
                // provider finished writing (its completion was read).
                let payload = unsafe { std::slice::from_raw_parts(ptr.add(HEADER), h.len) };
                if self.on_hello(rx, payload).is_err() {
                    self.malformed.fetch_add(1, Ordering::Relaxed);
                }
                self.repost(rx, buf);
            }
            WELCOME => {
                // SAFETY: as for HELLO.
                let payload = unsafe { std::slice::from_raw_parts(ptr.add(HEADER), h.len) };
                if let (Some(engine), Some(tag)) = (
                    payload
                        .get(..8)
                        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default())),
                    payload.get(8..10).map(|b| u16::from_le_bytes([b[0], b[1]])),
                ) {
                    let mut welcomes = self.welcomes.lock().unwrap_or_else(|e| e.into_inner());
                    welcomes.retain(|(e, _)| *e != engine);
                    if welcomes.len() < welcomes.capacity() {
                        welcomes.push((engine, tag));
                    }
                } else {
                    self.malformed.fetch_add(1, Ordering::Relaxed);
                }
                self.repost(rx, buf);
            }
            NOTIFY | ABORT => {
                let Some(peer) = self.sender(rx, u64::from(h.tag), source) else {
                    self.unattributed.fetch_add(1, Ordering::Relaxed);
                    self.repost(rx, buf);
                    return;
                };
                self.touch(rx, peer);
                let wire = self.immediate(Handle::from_raw(h.handle), h.tag);
                let Some(index) = self.entry(rx, peer, wire) else {
                    self.repost(rx, buf);
                    return;
                };
                let e = &mut Self::table(rx, peer)[index];
                if e.held != NONE {
                    // A second NOTIFY for the same generation: a duplicate.
                    let old = std::mem::replace(&mut e.held, NONE);
                    self.stale.fetch_add(1, Ordering::Relaxed);
                    self.repost(rx, old);
                }
                let e = &mut Self::table(rx, peer)[index];
                if h.kind == ABORT {
                    e.want = u64::MAX;
                    self.aborts.fetch_add(1, Ordering::Relaxed);
                    self.repost(rx, buf);
                    return;
                }
                e.want = h.count;
                if e.seen >= e.want {
                    if !self.deliver(rx, peer, buf) {
                        rx.blocked.push((peer as u32, buf));
                    }
                } else {
                    e.held = buf;
                }
            }
            _ => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
                self.repost(rx, buf);
            }
        }
    }

    /// Puts the NOTIFY in receive buffer `buf` into the sender's inbox lane and
    /// reposts the buffer; false (nothing done) if the lane is full.
    fn deliver(&self, rx: &mut RxState, peer: usize, buf: u32) -> bool {
        let ptr = self.rx_buffer(buf);
        let Some(h) = read_header(ptr, self.msg_size) else {
            self.repost(rx, buf);
            return true;
        };
        let Some(sender) = rx.peers[peer].as_ref() else {
            self.repost(rx, buf);
            return true;
        };
        let outbox = &sender.outbox;
        if !outbox.reserve() {
            return false;
        }
        // SAFETY: the buffer holds a complete message (checked header, len within it).
        let payload = unsafe { std::slice::from_raw_parts(ptr.add(HEADER), h.len) };
        outbox.deliver(Handle::from_raw(h.handle), payload);
        self.notifications.fetch_add(1, Ordering::Relaxed);
        self.repost(rx, buf);
        true
    }

    /// A sender introduced itself: its address goes in the AV, and it gets a table
    /// and a lane of our inbox (control path: allocates).
    fn on_hello(&self, rx: &mut RxState, payload: &[u8]) -> Result<()> {
        let mut r = Reader::new(payload);
        let bad = || Error::InvalidDescriptor {
            reason: "malformed HELLO",
        };
        let engine_id = r.u64().map_err(|_| bad())?;
        let capacity = r.u32().map_err(|_| bad())? as usize;
        let name_len = r.u16().map_err(|_| bad())? as usize;
        let addr_len = r.u16().map_err(|_| bad())? as usize;
        let name = String::from_utf8_lossy(r.bytes(name_len).map_err(|_| bad())?).into_owned();
        let addr = r.bytes(addr_len).map_err(|_| bad())?;
        if capacity == 0 || capacity > self.capacity || addr.is_empty() {
            return Err(bad());
        }
        let (fi_addr, replaced) = self.address(addr, engine_id)?;
        if let Some(tag) = rx
            .peers
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.engine_id == engine_id))
        {
            // A reload: same engine, same table (generations go on); the address may
            // have moved.
            if let Some(p) = rx.peers[tag].as_mut() {
                p.addr = fi_addr;
            }
            self.welcome(rx, tag);
            return Ok(());
        }
        if let Some(old) = replaced {
            // The engine that was at this address is gone: so are its table and lane.
            for tag in 0..rx.peers.len() {
                if rx.peers[tag].as_ref().is_some_and(|p| p.addr == old && !p.welcoming) {
                    self.free_place(rx, tag);
                }
            }
        }
        if !rx.peers.iter().any(Option::is_none) {
            // Full: the sender idle longest goes, if it has been idle for a while (a
            // restarted sender's old self). A busy table stays full.
            let idle = rx
                .peers
                .iter()
                .enumerate()
                .filter_map(|(tag, p)| p.as_ref().filter(|p| !p.welcoming).map(|p| (tag, p.last_active)))
                .min_by_key(|(_, at)| *at);
            if let Some((tag, at)) = idle
                && at.elapsed() > IDLE_SENDER
            {
                self.free_place(rx, tag);
            }
        }
        let Some(tag) = rx.peers.iter().position(Option::is_none) else {
            return Err(Error::PeerTableFull {
                capacity: rx.peers.len(),
            });
        };
        // Marked remote: no pid check on this host may take the lane over.
        let outbox = Outbox::claim(Arc::clone(&self.inbox), engine_id | REMOTE_OWNER, &name)?;
        rx.peers[tag] = Some(RxPeer {
            engine_id,
            addr: fi_addr,
            outbox,
            table: vec![RxEntry::EMPTY; capacity].into_boxed_slice(),
            welcoming: false,
            welcome_owed: false,
            last_active: Instant::now(),
        });
        self.welcome(rx, tag);
        Ok(())
    }

    /// Notes that sender place `tag` is alive.
    fn touch(&self, rx: &mut RxState, tag: usize) {
        if let Some(p) = rx.peers[tag].as_mut() {
            p.last_active = Instant::now();
        }
    }

    /// Empties sender place `tag`: the receive buffers its table or the blocked list
    /// hold go back to the provider, and its inbox lane is given up.
    fn free_place(&self, rx: &mut RxState, tag: usize) {
        let Some(p) = rx.peers[tag].take() else { return };
        for e in p.table.iter().filter(|e| e.held != NONE) {
            self.repost(rx, e.held);
        }
        let mut i = 0;
        while i < rx.blocked.len() {
            if rx.blocked[i].0 as usize == tag {
                let (_, buf) = rx.blocked.swap_remove(i);
                self.repost(rx, buf);
            } else {
                i += 1;
            }
        }
    }
}

/// How long a sender must have been silent before a full table gives its place to a
/// new one.
const IDLE_SENDER: Duration = Duration::from_secs(60);

/// Fuzzing entry point (not part of the API): parses `data` as a fabric endpoint
/// description and as a control message, checking that what parses round-trips and
/// stays inside the bytes it was given.
#[doc(hidden)]
pub fn fuzz_control(data: &[u8]) {
    if let Some(info) = FabricInfo::decode(data) {
        assert_eq!(FabricInfo::decode(&info.encode()), Some(info.clone()), "round trip");
        assert!(info.address.len() <= 256 && !info.address.is_empty());
    }
    if let Some(h) = read_header(data.as_ptr(), data.len()) {
        assert!(HEADER + h.len <= data.len(), "a header claims bytes it does not have");
        let mut copy = vec![0u8; data.len().max(HEADER)];
        let len = write_message(
            copy.as_mut_ptr(),
            copy.len(),
            h.kind,
            h.tag,
            h.handle,
            h.count,
            &data[HEADER..HEADER + h.len],
        );
        let again = read_header(copy.as_ptr(), len).expect("a written message parses");
        assert_eq!(
            (again.kind, again.tag, again.len, again.handle, again.count),
            (h.kind, h.tag, h.len, h.handle, h.count)
        );
    }
}

/// The index of the element `context` points at in an array of `count` elements of
/// `size` bytes at `base`, if it points exactly at one.
fn element_of(context: *mut c_void, base: usize, size: usize, count: usize) -> Option<usize> {
    let offset = (context as usize).checked_sub(base)?;
    (offset % size == 0 && offset / size < count).then_some(offset / size)
}

/// Records the slot's first failure.
fn fail(slot: &TxSlot, code: FailCode) {
    let _ = slot
        .error
        .compare_exchange(0, code.to_bits().max(1), Ordering::AcqRel, Ordering::Relaxed);
}

fn outcome(error: u32) -> Outcome {
    match error {
        0 => Outcome::Done,
        bits => Outcome::Failed(FailCode::from_bits(bits)),
    }
}

/// A libfabric error number as a transfer's failure: lost connections are `PEER_LOST`.
fn fail_code(err: i32) -> FailCode {
    let err = err.unsigned_abs();
    let lost = [
        sys::FI_ECONNRESET,
        sys::FI_ENOTCONN,
        sys::FI_ECONNREFUSED,
        sys::FI_EHOSTUNREACH,
        sys::FI_ECONNABORTED,
        sys::FI_ENETUNREACH,
        sys::FI_ENETDOWN,
        sys::FI_ESHUTDOWN,
        sys::FI_ETIMEDOUT,
    ];
    if lost.contains(&err) {
        FailCode::PEER_LOST
    } else {
        FailCode::new(FailSource::Transport(TransportId::FABRIC), err.min(0x3fff))
    }
}

struct Header {
    kind: u8,
    tag: u16,
    len: usize,
    handle: u64,
    count: u64,
}

/// Writes a control message into `buf` (`size` bytes); its length.
fn write_message(buf: *mut u8, size: usize, kind: u8, tag: u16, handle: u64, count: u64, payload: &[u8]) -> usize {
    let len = payload.len().min(size - HEADER);
    let mut header = [0u8; HEADER];
    header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    header[4] = kind;
    header[6..8].copy_from_slice(&tag.to_le_bytes());
    header[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    header[16..24].copy_from_slice(&handle.to_le_bytes());
    header[24..32].copy_from_slice(&count.to_le_bytes());
    // SAFETY: `buf` is a control buffer of `size` bytes owned by the caller (its slot,
    // or the HELLO buffer under its lock); HEADER + len ≤ size.
    unsafe {
        std::ptr::copy_nonoverlapping(header.as_ptr(), buf, HEADER);
        std::ptr::copy_nonoverlapping(payload.as_ptr(), buf.add(HEADER), len);
    }
    HEADER + len
}

/// Parses the header of a received message of `len` bytes at `buf`.
fn read_header(buf: *const u8, len: usize) -> Option<Header> {
    if len < HEADER {
        return None;
    }
    let mut header = [0u8; HEADER];
    // SAFETY: `buf` is a receive buffer of at least `len` ≥ HEADER bytes, written by
    // the provider before its completion was read.
    unsafe { std::ptr::copy_nonoverlapping(buf, header.as_mut_ptr(), HEADER) };
    let word = |r: std::ops::Range<usize>| header[r].iter().rev().fold(0u64, |acc, b| acc << 8 | u64::from(*b));
    let h = Header {
        kind: header[4],
        tag: word(6..8) as u16,
        len: word(8..12) as usize,
        handle: word(16..24),
        count: word(24..32),
    };
    (word(0..4) as u32 == MAGIC && HEADER + h.len <= len).then_some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_round_trips_and_rejects_garbage() {
        let info = FabricInfo {
            provider: "tcp;ofi_rxm".into(),
            address: vec![1, 2, 3, 4],
            capacity: 1024,
            max_notif_bytes: 256,
            virt_addr: true,
            keys: vec![(1 << 20 | 3, 77), (2 << 20 | 4, 78)],
        };
        let blob = info.encode();
        assert_eq!(FabricInfo::decode(&blob), Some(info));
        for cut in 0..blob.len() {
            assert_eq!(FabricInfo::decode(&blob[..cut]), None, "truncated at {cut}");
        }
        let mut long = blob.clone();
        long.push(0);
        assert_eq!(FabricInfo::decode(&long), None);
    }

    #[test]
    fn messages_round_trip_and_bad_headers_are_refused() {
        let mut buf = vec![0u8; 128];
        let len = write_message(buf.as_mut_ptr(), buf.len(), NOTIFY, 9, 42, 7, b"hello");
        assert_eq!(len, HEADER + 5);
        let h = read_header(buf.as_ptr(), len).unwrap();
        assert_eq!((h.kind, h.tag, h.len, h.handle, h.count), (NOTIFY, 9, 5, 42, 7));
        assert!(read_header(buf.as_ptr(), len - 1).is_none(), "payload cut short");
        buf[0] ^= 1;
        assert!(read_header(buf.as_ptr(), len).is_none(), "bad magic");
    }
}
