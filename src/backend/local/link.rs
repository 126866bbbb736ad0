//! How the `local` transport reaches one peer.
//!
//! - **Same process**: the peer's registry and inbox directly (found through the
//!   process-wide directory). Remote descriptors are resolved against the peer's own
//!   registry under its read lock at post time, so a region it deregistered fails the
//!   transfer instead of being written after it is gone.
//! - **Another process on this host**: the peer's engine-allocated regions are
//!   shared-memory segments, mapped here when the peer is loaded, and copied into with
//!   `memcpy`; memory the peer registered itself (not in a segment) is reached with
//!   `process_vm_writev`/`process_vm_readv`, which the kernel may forbid (ptrace
//!   rules), in which case the transfer fails with that errno. The peer's inbox is
//!   mapped too, and this engine writes its notifications into a lane it claimed.
//!   Whether the peer process is alive is checked through a pidfd at most once a
//!   millisecond per peer: transfers to a dead peer fail with `FailCode::PEER_LOST`.

// Unsafe code: `process_vm_readv`/`writev` and pidfds (the crate root denies it elsewhere).
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use super::LocalInfo;
use super::vm::VmBatch;
use crate::backend::runs::Runs;
use crate::error::{Error, Result};
use crate::mem::{regtable_name, segment_name};
use crate::notify::{Geometry, InboxMap, Outbox};
use crate::ring::{FailCode, FailSource, Outcome, PinLane};
use crate::shared::Shared;
use crate::sys::regtable::RegTable;
use crate::sys::shm::Segment;
use crate::types::Desc;
use crate::types::Op;
use crate::wire::metadata::{BackendKind, Metadata, RegionInfo};

/// How often, at most, a peer process's liveness is asked of the kernel.
const LIVENESS_CHECK_NANOS: u64 = 1_000_000;

/// A peer reached with the local transport.
pub(crate) struct LocalLink {
    /// The peer's regions as its metadata described them, sorted by id.
    regions: Vec<RegionInfo>,
    /// The lane we claimed in the peer's inbox; kept across reloads of the same peer.
    outbox: Arc<Outbox>,
    engine_id: u64,
    reach: Reach,
}

enum Reach {
    InProcess(Arc<Shared>),
    OtherProcess(Remote),
}

struct Remote {
    pid: u32,
    pidfd: Option<OwnedFd>,
    /// The peer's registration table: is a region still registered, and pins for
    /// copies into memory that is not in a segment.
    regs: Arc<RegTable>,
    /// Our lane in that table (the index of our lane in the peer's inbox).
    lane: PinLane,
    /// Parallel to `Peer::regions`.
    memory: Vec<RemoteMemory>,
    alive: AtomicBool,
    checked_at: AtomicU64,
    epoch: Instant,
}

enum RemoteMemory {
    /// A segment mapped here.
    Mapped(Segment),
    /// Memory in the peer's address space (process_vm_*).
    Process { addr: u64 },
    /// A segment that was gone when the peer was loaded.
    Missing,
}

impl LocalLink {
    /// Reaches the engine `md` describes, on behalf of `us` (control path).
    /// `previous` is this peer as loaded before (a reload): its inbox lane is kept.
    /// Returns the link and the peer's largest notification.
    pub(crate) fn connect(md: &Metadata, us: &Shared, previous: Option<&LocalLink>) -> Result<(LocalLink, usize)> {
        let unreachable = |reason: &str| Error::PeerUnreachable {
            name: md.engine_name.clone(),
            reason: reason.to_owned(),
        };
        let conn = md
            .backends
            .iter()
            .find(|b| b.kind == BackendKind::Local)
            .ok_or_else(|| unreachable("it offers no transport this engine has"))?;
        let info = LocalInfo::decode(&conn.conn).ok_or_else(|| unreachable("its local transport info is malformed"))?;
        // The blob comes from outside: every number and path in it is checked before it
        // sizes a mapping or names a file.
        let geometry = Geometry {
            lanes: info.lanes as usize,
            lane_capacity: info.lane_capacity as usize,
            max_bytes: info.max_notif_bytes as usize,
        };
        let sane = (1..=4096).contains(&geometry.lanes)
            && geometry.lane_capacity.is_power_of_two()
            && geometry.lane_capacity <= 1 << 20
            && geometry.max_bytes <= 1 << 16
            && geometry.checked_segment_bytes().is_some_and(|b| b <= 1 << 32)
            && info.capacity.is_power_of_two()
            && (1..=1 << 20).contains(&info.max_registrations)
            && info.prefix == format!("ringxfer-{:016x}", md.engine_id);
        if !sane {
            return Err(unreachable("its local transport info is out of range"));
        }
        if info.dir != us.registry.segments().0 {
            return Err(unreachable(
                "its shared-memory directory differs from ours (set the same RINGXFER_SHM_DIR for both)",
            ));
        }
        if us.capacity > info.capacity as usize {
            return Err(unreachable(
                "this engine has more slots than the peer tracks per sender (give both the same capacity)",
            ));
        }
        let mut regions = md.regions.clone();
        regions.sort_by_key(|r| r.id);
        let (reach, inbox) = if md.process_id == std::process::id() {
            let target =
                super::lookup(md.engine_id).ok_or_else(|| unreachable("no such engine is alive in this process"))?;
            let inbox = Arc::clone(target.inbox.map());
            (Reach::InProcess(target), inbox)
        } else {
            let inbox = match InboxMap::open(&info.inbox_path(), geometry) {
                Ok(map) => Arc::new(map),
                Err(Error::Io {
                    kind: std::io::ErrorKind::NotFound,
                    ..
                }) => {
                    return Err(unreachable(
                        "its inbox segment is gone (the engine ended, or lives on another host)",
                    ));
                }
                Err(e) => return Err(e),
            };
            let memory = regions
                .iter()
                .map(|r| match r.remote_key {
                    1 => match Segment::open(&info.dir.join(segment_name(&info.prefix, r.id)), r.len as usize) {
                        Ok(segment) => Ok(RemoteMemory::Mapped(segment)),
                        Err(Error::Io {
                            kind: std::io::ErrorKind::NotFound,
                            ..
                        }) => Ok(RemoteMemory::Missing),
                        Err(e) => Err(e),
                    },
                    _ => Ok(RemoteMemory::Process { addr: r.addr }),
                })
                .collect::<Result<Vec<_>>>()?;
            let regs = Arc::new(RegTable::open(
                &info.dir.join(regtable_name(&info.prefix)),
                info.max_registrations as usize,
                geometry.lanes,
            )?);
            let remote = Remote {
                pid: md.process_id,
                pidfd: pidfd_open(md.process_id),
                regs,
                // Set below, once our inbox lane is known.
                lane: PinLane { lane: 0, epoch: 0 },
                memory,
                alive: AtomicBool::new(true),
                checked_at: AtomicU64::new(0),
                epoch: Instant::now(),
            };
            if !remote.alive() {
                return Err(unreachable("its process has exited"));
            }
            (Reach::OtherProcess(remote), inbox)
        };
        let previous = previous.filter(|p| p.engine_id == md.engine_id);
        let outbox = match previous {
            Some(p) => Arc::clone(&p.outbox),
            None => Arc::new(Outbox::claim(inbox, us.engine_id, &us.name)?),
        };
        let mut reach = reach;
        if let Reach::OtherProcess(remote) = &mut reach {
            // Our pins in the peer's table go in the lane of our inbox lane's index:
            // the same lane (and epoch) as before for a reload, so pins of copies
            // still running under the previous load keep counting.
            remote.lane = match previous.and_then(LocalLink::pin_lane) {
                Some(lane) => lane,
                None => remote
                    .regs
                    .take_lane(outbox.lane())
                    .ok_or_else(|| unreachable("its registration table has fewer lanes than its inbox"))?,
            };
        }
        let link = LocalLink {
            regions,
            outbox,
            engine_id: md.engine_id,
            reach,
        };
        Ok((link, info.max_notif_bytes as usize))
    }

    /// Our lane in the peer's inbox.
    #[inline]
    pub(crate) fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// The peer's registration table and our lane in it, for a peer in another
    /// process (its regions' entries are pinned while a copy uses them).
    pub(crate) fn regtable(&self) -> Option<(&Arc<RegTable>, PinLane)> {
        match &self.reach {
            Reach::OtherProcess(r) => Some((&r.regs, r.lane)),
            Reach::InProcess(_) => None,
        }
    }

    fn pin_lane(&self) -> Option<PinLane> {
        self.regtable().map(|(_, lane)| lane)
    }

    /// The peer's shared-memory segments mapped here: (start, length) each (none for
    /// a peer in this process).
    pub(crate) fn mapped_segments(&self) -> Vec<(usize, usize)> {
        match &self.reach {
            Reach::OtherProcess(remote) => remote
                .memory
                .iter()
                .filter_map(|m| match m {
                    RemoteMemory::Mapped(segment) => Some((segment.as_ptr() as usize, segment.len())),
                    _ => None,
                })
                .collect(),
            Reach::InProcess(_) => Vec::new(),
        }
    }

    /// Where the bytes of a remote descriptor lie in this process, for a region of a
    /// peer in another process that lives in a shared-memory segment mapped here;
    /// `None` otherwise (or out of the segment's bounds).
    pub(crate) fn segment_addr(&self, d: &Desc) -> Option<usize> {
        let Reach::OtherProcess(remote) = &self.reach else {
            return None;
        };
        let i = self.regions.binary_search_by_key(&d.region.to_raw(), |r| r.id).ok()?;
        let RemoteMemory::Mapped(segment) = &remote.memory[i] else {
            return None;
        };
        let end = d.offset.checked_add(d.len)?;
        (end <= segment.len() as u64).then(|| segment.as_ptr() as usize + d.offset as usize)
    }

    /// Moves the bytes of one transfer and says how it ended.
    pub(crate) fn transfer(&self, op: Op, runs: Runs<'_>, remote: &[Desc]) -> Outcome {
        match &self.reach {
            Reach::InProcess(target) => {
                // The peer's registry read lock is held while its memory is copied, so
                // it cannot deregister (or drop) a region under the copy.
                let access = target.registry.access();
                for run in runs {
                    let (l, d) = (&run.local, &run.other(&remote[run.pair]));
                    let Ok(r) = access.resolve(d) else {
                        return Outcome::Failed(FailCode::PEER_LOST);
                    };
                    // SAFETY: `l` is pinned by the transfer, `r` is valid while `access`
                    // holds the peer's registry, and prepare checked equal lengths.
                    unsafe { super::copy(op, l.addr, r.addr, l.len) };
                }
                Outcome::Done
            }
            Reach::OtherProcess(remote_peer) => {
                if !remote_peer.alive() {
                    return Outcome::Failed(FailCode::PEER_LOST);
                }
                let errno = |e: i32| Outcome::Failed(FailCode::new(FailSource::Errno, e as u32));
                // Runs into memory the peer registered itself, moved many per call.
                let mut vm = VmBatch::new(op, remote_peer.pid, &remote_peer.regs, remote_peer.lane);
                for run in runs {
                    let (l, d) = (&run.local, &run.other(&remote[run.pair]));
                    let Ok(i) = self.regions.binary_search_by_key(&d.region.to_raw(), |r| r.id) else {
                        return Outcome::Failed(FailCode::PEER_LOST);
                    };
                    let (entry, generation) = (d.region.index(), d.region.generation());
                    match &remote_peer.memory[i] {
                        RemoteMemory::Mapped(segment) => {
                            // Runs move in their order (two could overlap on this side).
                            if let Err(e) = vm.flush() {
                                return errno(e);
                            }
                            // A deregistered region fails the transfer rather than take
                            // bytes nobody will read (our mapping keeps it valid).
                            if !remote_peer.regs.is_open(entry, generation) {
                                return Outcome::Failed(FailCode::REGION_GONE);
                            }
                            // `check` used the metadata of this peer's load; the mapping
                            // is authoritative (a reload may have changed the metadata).
                            let in_bounds = d
                                .offset
                                .checked_add(d.len)
                                .is_some_and(|end| end <= segment.len() as u64)
                                && l.len as u64 == d.len;
                            if !in_bounds {
                                return Outcome::Failed(FailCode::TRANSPORT);
                            }
                            let addr = segment.as_ptr() as usize + d.offset as usize;
                            // SAFETY: `l` is pinned; the mapping stays valid while this
                            // peer (and so the segment) lives, whatever the owner does,
                            // and `check` kept the range inside it.
                            unsafe { super::copy(op, l.addr, addr, l.len) };
                        }
                        RemoteMemory::Process { addr } => {
                            let Some(remote_addr) = addr.checked_add(d.offset) else {
                                return Outcome::Failed(FailCode::TRANSPORT);
                            };
                            // Pinned in the peer's table: it cannot deregister (and then
                            // free) this memory until the copy is over (the batch
                            // unpins it after its call).
                            if !remote_peer.regs.pin(remote_peer.lane, entry, generation) {
                                return Outcome::Failed(FailCode::REGION_GONE);
                            }
                            if let Err(e) = vm.push(l.addr, remote_addr as usize, l.len, entry) {
                                return errno(e);
                            }
                        }
                        RemoteMemory::Missing => return Outcome::Failed(FailCode::PEER_LOST),
                    }
                }
                match vm.flush() {
                    Ok(()) => Outcome::Done,
                    Err(e) => errno(e),
                }
            }
        }
    }

    /// Whether the peer still looks alive (always true for one in this process: its
    /// drop is seen through its registry instead).
    pub(crate) fn alive(&self) -> bool {
        match &self.reach {
            Reach::InProcess(_) => true,
            Reach::OtherProcess(r) => r.alive(),
        }
    }
}

impl Remote {
    fn alive(&self) -> bool {
        if !self.alive.load(Ordering::Relaxed) {
            return false;
        }
        let now = self.epoch.elapsed().as_nanos() as u64;
        let last = self.checked_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) < LIVENESS_CHECK_NANOS && last != 0 {
            return true;
        }
        self.checked_at.store(now.max(1), Ordering::Relaxed);
        let gone = match &self.pidfd {
            Some(fd) => {
                let mut p = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, zero timeout.
                let n = unsafe { libc::poll(&mut p, 1, 0) };
                n > 0 && p.revents & (libc::POLLIN | libc::POLLHUP) != 0
            }
            None => {
                // SAFETY: signal 0 only checks that the pid exists.
                let r = unsafe { libc::kill(self.pid as libc::pid_t, 0) };
                r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
            }
        };
        if gone {
            self.alive.store(false, Ordering::Relaxed);
        }
        !gone
    }
}

/// A pidfd for `pid` (Linux ≥ 5.3), or `None` where the kernel has none.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
