//! `Engine`: configuration, the control path (registration, metadata, peers) and the
//! hot path (prepare, post, status, wait, cancel, release, notify, pop a notification).
//!
//! Everything the hot path uses is allocated by [`Engine::new`]: the slot ring, each
//! slot's descriptor storage (`max_descs_per_xfer` entries) and notification buffer
//! (`max_notif_bytes`), the registration table, the peer table and the notification
//! inbox. Afterwards the hot path only reads tables (under short read locks that are
//! never held across I/O) and moves bytes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::backend::local;
use crate::error::{Error, Result};
use crate::mem::{Desc, RegionId, Registry, Resolved};
use crate::notify::{Inbox, Notification, SenderId};
use crate::ring::{CancelResult, FailCode, Handle, Outcome, Released, RingStats, SlotRing, Status};
use crate::wire::metadata::{BackendInfo, BackendKind, MemKind, Metadata, RegionInfo};

/// Which way a transfer moves bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Op {
    /// Local → remote.
    #[default]
    Write,
    /// Remote → local.
    Read,
}

/// Engine capacities, all fixed at [`Engine::new`]. Every field has a default
/// ([`Config::default`]) and a documented range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The engine's name, sent to peers in its metadata (≤ 255 bytes).
    pub name: String,
    /// Transfer slots: how many transfers may be prepared or in flight at once. A
    /// power of two, 1 ..= 2^20. Default 1024.
    pub capacity: usize,
    /// Descriptors per transfer, 1 ..= 65536. Default 64. Memory: capacity × this × 48 bytes.
    pub max_descs_per_xfer: usize,
    /// Registered regions at once, 1 ..= 2^20. Default 1024.
    pub max_registrations: usize,
    /// Peers this engine loads, and senders it accepts notifications from, 1 ..= 4096.
    /// Default 64.
    pub max_peers: usize,
    /// Largest notification payload, 0 ..= 65536 bytes. Default 256.
    pub max_notif_bytes: usize,
    /// Notifications waiting to be popped, a power of two 1 ..= 2^20. A full inbox is
    /// backpressure to the senders (`InboxFull`), never a silent drop. Default 1024.
    pub inbox_capacity: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            name: String::from("ringxfer"),
            capacity: 1024,
            max_descs_per_xfer: 64,
            max_registrations: 1024,
            max_peers: 64,
            max_notif_bytes: 256,
            inbox_capacity: 1024,
        }
    }
}

impl Config {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason| Err(Error::InvalidConfig { field, reason });
        if self.name.is_empty() || self.name.len() > 255 {
            return bad("name", "must be 1 to 255 bytes");
        }
        if !self.capacity.is_power_of_two() || self.capacity > crate::ring::MAX_CAPACITY {
            return bad("capacity", "must be a power of two from 1 to 2^20");
        }
        if self.max_descs_per_xfer == 0 || self.max_descs_per_xfer > 1 << 16 {
            return bad("max_descs_per_xfer", "must be 1 to 65536");
        }
        if self.max_registrations == 0 || self.max_registrations > 1 << 20 {
            return bad("max_registrations", "must be 1 to 2^20");
        }
        if self.max_peers == 0 || self.max_peers > 4096 {
            return bad("max_peers", "must be 1 to 4096");
        }
        if self.max_notif_bytes > 1 << 16 {
            return bad("max_notif_bytes", "must be at most 65536");
        }
        if !self.inbox_capacity.is_power_of_two() || self.inbox_capacity > 1 << 20 {
            return bad("inbox_capacity", "must be a power of two from 1 to 2^20");
        }
        Ok(())
    }
}

/// A loaded peer: an index into the engine's peer table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerId(pub u32);

/// The half of an engine that peers in the same process reach: its memory and inbox.
pub(crate) struct Shared {
    pub(crate) registry: Registry,
    pub(crate) inbox: Inbox,
}

struct Peer {
    name: String,
    engine_id: u64,
    /// The peer's regions as its metadata described them, sorted by id.
    regions: Vec<RegionInfo>,
    target: Arc<Shared>,
    /// Who we are in the peer's sender table.
    us_there: SenderId,
    /// The peer's `max_notif_bytes`.
    max_notif_bytes: usize,
}

/// One slot's transfer context, allocated once per slot and reused.
struct Transfer {
    op: Op,
    peer: u32,
    count: usize,
    /// Local descriptors, resolved and pinned from prepare until the slot is freed.
    local: Box<[Resolved]>,
    remote: Box<[Desc]>,
    notif: Box<[u8]>,
    notif_len: Option<usize>,
}

/// Counters and the resource ledger, from [`Engine::stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineStats {
    /// The slot ring's counters (live slots, completions by outcome, stale completions…).
    pub ring: RingStats,
    /// Live memory registrations.
    pub registrations: usize,
    /// Region pins held by transfers not yet released.
    pub pins: u64,
    /// Peers loaded.
    pub peers: usize,
    /// Notifications waiting in this engine's inbox.
    pub notifications_queued: usize,
    /// Notifications popped.
    pub notifications_delivered: u64,
    /// Notifications dropped as duplicates or stale arrivals.
    pub notifications_stale: u64,
}

/// A transfer engine. See the crate docs and the README for the whole picture.
///
/// ```
/// use ringxfer::{Config, Desc, Engine, Op, Status};
/// use std::time::Duration;
///
/// let a = Engine::new(Config { name: "a".into(), ..Config::default() })?;
/// let b = Engine::new(Config { name: "b".into(), ..Config::default() })?;
/// let src = a.alloc_region(4096)?;
/// let dst = b.alloc_region(4096)?;
/// a.write_region(src, 0, b"kv block")?;
///
/// let peer = a.load_peer(&b.local_metadata()?)?;
/// let h = a.prepare(Op::Write, &[Desc::new(src, 0, 8)], peer, &[Desc::new(dst, 0, 8)], Some(b"done"))?;
/// a.post(h)?;
/// assert_eq!(a.wait(h, Duration::from_secs(1))?, Status::Done);
/// a.release(h)?;
///
/// let mut note = [0u8; 256];
/// let n = b.pop_notification(&mut note)?.expect("delivered after the write");
/// assert_eq!(&note[..n.len], b"done");
/// let mut out = [0u8; 8];
/// b.read_region(dst, 0, &mut out)?;
/// assert_eq!(&out, b"kv block");
/// # Ok::<(), ringxfer::Error>(())
/// ```
pub struct Engine {
    config: Config,
    engine_id: u64,
    shared: Arc<Shared>,
    ring: SlotRing<Transfer>,
    peers: RwLock<Vec<Peer>>,
}

static NEXT_ENGINE: AtomicU32 = AtomicU32::new(1);

impl Engine {
    /// Builds an engine, allocating everything it will ever use.
    pub fn new(config: Config) -> Result<Engine> {
        config.validate()?;
        let d = config.max_descs_per_xfer;
        let m = config.max_notif_bytes;
        let ring = SlotRing::with_contexts(config.capacity, |_| Transfer {
            op: Op::Write,
            peer: 0,
            count: 0,
            local: vec![Resolved::default(); d].into_boxed_slice(),
            remote: vec![Desc::new(RegionId::from_raw(0), 0, 0); d].into_boxed_slice(),
            notif: vec![0; m].into_boxed_slice(),
            notif_len: None,
        })?;
        let shared = Arc::new(Shared {
            registry: Registry::new(config.max_registrations),
            inbox: Inbox::new(config.inbox_capacity, m, config.max_peers),
        });
        let engine_id = u64::from(std::process::id()) << 32 | u64::from(NEXT_ENGINE.fetch_add(1, Ordering::Relaxed));
        local::publish(engine_id, &shared);
        Ok(Engine {
            peers: RwLock::new(Vec::with_capacity(config.max_peers)),
            config,
            engine_id,
            shared,
            ring,
        })
    }

    /// The configuration the engine was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ----- control path: memory -----

    /// Registers `len` bytes at `addr` that the caller allocated.
    ///
    /// # Safety
    /// The memory stays allocated, and is not otherwise written while a transfer may
    /// read it or read while a transfer may write it, until [`deregister`](Engine::deregister)
    /// succeeds or the engine is dropped.
    pub unsafe fn register_dram(&self, addr: *mut u8, len: usize) -> Result<RegionId> {
        self.shared.registry.register(addr as usize, len as u64, MemKind::Dram)
    }

    /// Allocates `len` zeroed bytes owned by the engine and registers them; they are
    /// freed by [`deregister`](Engine::deregister) or engine drop.
    pub fn alloc_region(&self, len: usize) -> Result<RegionId> {
        self.shared.registry.allocate(len)
    }

    /// Removes a registration. [`Error::Busy`] while a transfer not yet released uses it.
    pub fn deregister(&self, region: RegionId) -> Result<()> {
        self.shared.registry.deregister(region)
    }

    /// Copies bytes out of a local region (control path; for tools and tests).
    pub fn read_region(&self, region: RegionId, offset: u64, out: &mut [u8]) -> Result<()> {
        self.shared.registry.read_bytes(region, offset, out)
    }

    /// Copies bytes into a local region (control path; for tools and tests).
    pub fn write_region(&self, region: RegionId, offset: u64, data: &[u8]) -> Result<()> {
        self.shared.registry.write_bytes(region, offset, data)
    }

    // ----- control path: metadata and peers -----

    /// This engine's metadata blob: what a peer needs to reach it. Fetch it again after
    /// registering new regions.
    pub fn local_metadata(&self) -> Result<Vec<u8>> {
        let mut conn = Vec::with_capacity(8);
        conn.extend_from_slice(&(self.config.capacity as u32).to_le_bytes());
        conn.extend_from_slice(&(self.config.max_notif_bytes as u32).to_le_bytes());
        let md = Metadata {
            engine_name: self.config.name.clone(),
            engine_id: self.engine_id,
            process_id: std::process::id(),
            backends: vec![BackendInfo {
                kind: BackendKind::Local,
                conn,
            }],
            regions: self.shared.registry.regions(),
        };
        Ok(md.encode()?)
    }

    /// Loads (or reloads) a peer from its metadata blob and introduces this engine to
    /// it, so it accepts our notifications.
    pub fn load_peer(&self, blob: &[u8]) -> Result<PeerId> {
        let md = Metadata::decode(blob)?;
        let unreachable = |reason| Error::PeerUnreachable {
            name: md.engine_name.clone(),
            reason,
        };
        let local = md
            .backends
            .iter()
            .find(|b| b.kind == BackendKind::Local)
            .ok_or_else(|| unreachable("it offers no transport this engine has"))?;
        let (Some(cap), Some(notif)) = (local.conn.get(0..4), local.conn.get(4..8)) else {
            return Err(unreachable("its local transport info is malformed"));
        };
        let sender_capacity = u32::from_le_bytes(cap.try_into().expect("4 bytes")) as usize;
        let max_notif_bytes = u32::from_le_bytes(notif.try_into().expect("4 bytes")) as usize;
        if md.process_id != std::process::id() {
            return Err(unreachable(
                "it lives in another process; the cross-process local transport is not built yet",
            ));
        }
        let target =
            local::lookup(md.engine_id).ok_or_else(|| unreachable("no such engine is alive in this process"))?;
        let us_there = target
            .inbox
            .accept_sender(self.engine_id, &self.config.name, self.config.capacity)?;
        debug_assert!(sender_capacity > 0);
        let mut regions = md.regions;
        regions.sort_by_key(|r| r.id);
        let peer = Peer {
            name: md.engine_name,
            engine_id: md.engine_id,
            regions,
            target,
            us_there,
            max_notif_bytes,
        };
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = peers.iter().position(|p| p.engine_id == peer.engine_id) {
            peers[i] = peer;
            return Ok(PeerId(i as u32));
        }
        if peers.len() >= self.config.max_peers {
            return Err(Error::PeerTableFull {
                capacity: self.config.max_peers,
            });
        }
        peers.push(peer);
        Ok(PeerId(peers.len() as u32 - 1))
    }

    /// The name of a loaded peer.
    pub fn peer_name(&self, peer: PeerId) -> Result<String> {
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        peers
            .get(peer.0 as usize)
            .map(|p| p.name.clone())
            .ok_or(Error::UnknownPeer { peer: peer.0 })
    }

    /// The name of an engine that sent us notifications.
    pub fn sender_name(&self, sender: SenderId) -> Option<String> {
        self.shared.inbox.sender_name(sender)
    }

    // ----- hot path -----

    /// Validates a transfer and takes a slot for it: every local descriptor against
    /// this engine's registrations (and pins its region), every remote one against the
    /// peer's metadata, the two lists pairwise equal in length, the notification within
    /// both engines' limits. Nothing moves until [`post`](Engine::post).
    pub fn prepare(
        &self,
        op: Op,
        local: &[Desc],
        peer: PeerId,
        remote: &[Desc],
        notif: Option<&[u8]>,
    ) -> Result<Handle> {
        let max = self.config.max_descs_per_xfer;
        if local.len() > max {
            return Err(Error::TooManyDescriptors {
                count: local.len(),
                max,
            });
        }
        if local.len() != remote.len() {
            return Err(Error::LengthMismatch {
                what: "descriptor count",
                local: local.len() as u64,
                remote: remote.len() as u64,
            });
        }
        if local.is_empty() && notif.is_none() {
            return Err(Error::InvalidDescriptor {
                reason: "a transfer needs descriptors or a notification",
            });
        }
        if let Some((l, r)) = local.iter().zip(remote).find(|(l, r)| l.len != r.len) {
            return Err(Error::LengthMismatch {
                what: "length of a descriptor pair",
                local: l.len,
                remote: r.len,
            });
        }
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        let p = peers.get(peer.0 as usize).ok_or(Error::UnknownPeer { peer: peer.0 })?;
        if let Some(n) = notif {
            let max = self.config.max_notif_bytes.min(p.max_notif_bytes);
            if n.len() > max {
                return Err(Error::NotificationTooLarge { len: n.len(), max });
            }
        }
        for d in remote {
            check_remote(&p.regions, d)?;
        }
        drop(peers);
        let registry = &self.shared.registry;
        self.ring.acquire_try(|t: &mut Transfer| {
            for (i, d) in local.iter().enumerate() {
                match registry.pin(d) {
                    Ok(r) => t.local[i] = r,
                    Err(e) => {
                        t.local[..i].iter().for_each(|r| registry.unpin(r.entry));
                        return Err(e);
                    }
                }
            }
            t.op = op;
            t.peer = peer.0;
            t.count = local.len();
            t.remote[..remote.len()].copy_from_slice(remote);
            t.notif_len = notif.map(|n| {
                t.notif[..n.len()].copy_from_slice(n);
                n.len()
            });
            Ok(())
        })
    }

    /// Starts a prepared transfer. With the `local` transport the bytes move before
    /// `post` returns, and the notification, if any, is queued at the peer after the
    /// last byte landed.
    ///
    /// If the peer's inbox is full the call fails with [`Error::InboxFull`] and the
    /// transfer stays prepared: retry later, or release it.
    pub fn post(&self, handle: Handle) -> Result<()> {
        // SAFETY: the context is only read here. It cannot be rewritten while we read:
        // contexts are written only by `acquire_try` (before a handle exists) and by the
        // reclaim that runs when the slot is freed, and this slot is not freed before
        // our `complete_with` below (a release meanwhile only detaches it). The reference
        // is dropped before that call.
        let t = unsafe { self.ring.context(handle) }?;
        // Take what we need of the peer and let go of the peer table before moving bytes.
        let (target, us_there) = {
            let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
            let p = peers.get(t.peer as usize).ok_or(Error::UnknownPeer { peer: t.peer })?;
            (Arc::clone(&p.target), p.us_there)
        };
        let record = match t.notif_len {
            Some(_) => Some(target.inbox.reserve().ok_or(Error::InboxFull { peer: t.peer })?),
            None => None,
        };
        if let Err(e) = self.ring.post(handle) {
            if let Some(r) = record {
                target.inbox.unreserve(r);
            }
            return Err(e);
        }
        // The peer's registry read lock is held while its memory is copied, so the
        // peer cannot deregister (or drop) a region under the copy; it waits instead.
        let outcome = {
            let access = target.registry.access();
            let mut outcome = Outcome::Done;
            for (l, d) in t.local[..t.count].iter().zip(&t.remote[..t.count]) {
                match access.resolve(d) {
                    // SAFETY: `l` is pinned by this transfer, `r` is valid while `access`
                    // holds the peer's registry, and prepare checked equal lengths.
                    Ok(r) => unsafe { local::copy(t.op, std::slice::from_ref(l), std::slice::from_ref(&r)) },
                    Err(_) => {
                        outcome = Outcome::Failed(FailCode::PEER_LOST);
                        break;
                    }
                }
            }
            outcome
        };
        if let (Some(r), Some(len)) = (record, t.notif_len) {
            if outcome == Outcome::Done {
                target.inbox.deliver(r, us_there, handle, &t.notif[..len]);
            } else {
                target.inbox.unreserve(r);
            }
        }
        drop(target);
        let registry = &self.shared.registry;
        self.ring.complete_with(handle, outcome, |t| reclaim(registry, t));
        Ok(())
    }

    /// Where a transfer is.
    pub fn status(&self, handle: Handle) -> Result<Status> {
        self.ring.status(handle)
    }

    /// Waits until the transfer ends or `timeout` passes ([`Error::Timeout`]; the
    /// transfer goes on). Spins briefly, then yields, then sleeps in growing steps, so
    /// a long wait does not hold a core.
    pub fn wait(&self, handle: Handle, timeout: Duration) -> Result<Status> {
        let start = Instant::now();
        let backoff = crossbeam_utils::Backoff::new();
        let mut sleep = Duration::from_micros(10);
        loop {
            let status = self.ring.status(handle)?;
            if status.is_terminal() {
                return Ok(status);
            }
            if start.elapsed() >= timeout {
                return Err(Error::Timeout { handle });
            }
            if backoff.is_completed() {
                std::thread::sleep(sleep);
                sleep = (sleep * 2).min(Duration::from_millis(1));
            } else {
                backoff.snooze();
            }
        }
    }

    /// Cancels a transfer: one not yet posted ends CANCELLED at once; one in flight is
    /// left to its transport ([`CancelResult::InFlight`]).
    pub fn cancel(&self, handle: Handle) -> Result<CancelResult> {
        self.ring.cancel(handle)
    }

    /// Gives the handle up. An ended or never-posted transfer frees its slot and
    /// unpins its regions now; one in flight is detached and freed by its completion.
    pub fn release(&self, handle: Handle) -> Result<Released> {
        let registry = &self.shared.registry;
        self.ring.release_with(handle, |t| reclaim(registry, t))
    }

    /// Sends a notification on its own (it still takes a slot, so it has a generation
    /// and the peer can tell a duplicate from a new one).
    pub fn notify(&self, peer: PeerId, payload: &[u8]) -> Result<()> {
        let h = self.prepare(Op::Write, &[], peer, &[], Some(payload))?;
        let posted = self.post(h);
        self.release(h)?;
        posted
    }

    /// Pops the oldest notification into `buf` (which must hold `max_notif_bytes`).
    pub fn pop_notification(&self, buf: &mut [u8]) -> Result<Option<Notification>> {
        self.shared.inbox.pop(buf)
    }

    /// Counters and the resource ledger.
    pub fn stats(&self) -> EngineStats {
        let (registrations, pins) = self.shared.registry.counts();
        let (notifications_queued, notifications_delivered, notifications_stale) = self.shared.inbox.counts();
        EngineStats {
            ring: self.ring.stats(),
            registrations,
            pins,
            peers: self.peers.read().unwrap_or_else(|e| e.into_inner()).len(),
            notifications_queued,
            notifications_delivered,
            notifications_stale,
        }
    }
}

/// A remote descriptor against the peer's metadata (sorted by region id).
fn check_remote(regions: &[RegionInfo], d: &Desc) -> Result<()> {
    let Ok(i) = regions.binary_search_by_key(&d.region.to_raw(), |r| r.id) else {
        return Err(Error::UnknownRegion {
            region: d.region.to_raw(),
        });
    };
    let len = regions[i].len;
    if d.len == 0 || d.offset.checked_add(d.len).is_none_or(|end| end > len) {
        return Err(Error::OutOfBounds {
            region: d.region.to_raw(),
            offset: d.offset,
            len: d.len,
            region_len: len,
        });
    }
    Ok(())
}

/// Returns a freed slot's resources: its region pins.
fn reclaim(registry: &Registry, t: &mut Transfer) {
    for r in &t.local[..t.count] {
        registry.unpin(r.entry);
    }
    t.count = 0;
    t.notif_len = None;
}

impl Drop for Engine {
    fn drop(&mut self) {
        local::withdraw(self.engine_id);
        // Peers holding our shared half now find no regions: their transfers fail
        // instead of writing memory the caller may free after this.
        self.shared.registry.clear();
    }
}
