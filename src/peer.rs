//! A loaded peer: how this engine reaches another engine's memory and inbox with the
//! `local` transport.
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

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::types::Op;
use crate::backend::fabric::{Fabric, FabricInfo, Sink};
use crate::backend::local::{self, LocalInfo};
use crate::sys::regtable::RegTable;
use crate::sys::shm::Segment;
use crate::engine::Shared;
use crate::error::{Error, Result};
use crate::mem::{Resolved, regtable_name, segment_name};
use crate::types::Desc;
use crate::notify::{Geometry, InboxMap, Outbox};
use crate::ring::{FailCode, FailSource, Outcome};
use crate::wire::metadata::{BackendKind, MemKind, Metadata, RegionInfo};

/// How often, at most, a peer process's liveness is asked of the kernel.
const LIVENESS_CHECK_NANOS: u64 = 1_000_000;

pub(crate) struct Peer {
    pub(crate) name: String,
    pub(crate) engine_id: u64,
    /// The peer's regions as its metadata described them, sorted by id.
    regions: Vec<RegionInfo>,
    pub(crate) max_notif_bytes: usize,
    /// The lane we claimed in the peer's inbox (local transport only; the fabric
    /// carries notifications itself); kept across reloads of the same peer.
    pub(crate) outbox: Option<Arc<Outbox>>,
    reach: Reach,
}

enum Reach {
    InProcess(Arc<Shared>),
    OtherProcess(Remote),
    Fabric(FabricPeer),
    /// The fault-injecting sim transport: no bytes move.
    Sim,
}

/// A peer reached through the fabric transport.
pub(crate) struct FabricPeer {
    /// Its endpoint in our address vector.
    pub(crate) addr: u64,
    /// Remote key of each region, parallel to `Peer::regions` (`None`: the region
    /// was not registered with the fabric).
    keys: Vec<Option<u64>>,
    /// Remote addresses are virtual addresses (else offsets in the region).
    virt_addr: bool,
    /// Our tag at the peer (its WELCOME), carried in every write and message.
    tag: u16,
}

struct Remote {
    pid: u32,
    pidfd: Option<OwnedFd>,
    /// The peer's registration table: is a region still registered, and pins for
    /// copies into memory that is not in a segment.
    regs: RegTable,
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

impl Peer {
    /// Reaches the engine `md` describes, on behalf of `us` (control path).
    /// `previous` is this peer as loaded before (a reload): its inbox lane is kept.
    pub(crate) fn connect(md: Metadata, us: &Shared, previous: Option<&Peer>) -> Result<Peer> {
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
        let mut regions = md.regions;
        regions.sort_by_key(|r| r.id);
        let (reach, inbox) = if md.process_id == std::process::id() {
            let target =
                local::lookup(md.engine_id).ok_or_else(|| unreachable("no such engine is alive in this process"))?;
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
            let regs = RegTable::open(
                &info.dir.join(regtable_name(&info.prefix)),
                info.max_registrations as usize,
            )?;
            let remote = Remote {
                pid: md.process_id,
                pidfd: pidfd_open(md.process_id),
                regs,
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
        let outbox = match previous.and_then(|p| p.outbox.as_ref().filter(|_| p.engine_id == md.engine_id)) {
            Some(o) => Arc::clone(o),
            None => Arc::new(Outbox::claim(inbox, us.engine_id, &us.name)?),
        };
        Ok(Peer {
            name: md.engine_name,
            engine_id: md.engine_id,
            regions,
            max_notif_bytes: info.max_notif_bytes as usize,
            outbox: Some(outbox),
            reach,
        })
    }

    /// Reaches the engine `md` describes through our fabric endpoint (control path):
    /// inserts its address and introduces us with a HELLO.
    pub(crate) fn connect_fabric(md: Metadata, us: &Shared, fabric: &Fabric, sink: Sink<'_>) -> Result<Peer> {
        let unreachable = |reason: String| Error::PeerUnreachable {
            name: md.engine_name.clone(),
            reason,
        };
        let conn = md
            .backends
            .iter()
            .find(|b| b.kind == BackendKind::Fabric)
            .ok_or_else(|| unreachable("it has no fabric endpoint (build it with Config::fabric)".into()))?;
        let info = FabricInfo::decode(&conn.conn).ok_or_else(|| unreachable("its fabric info is malformed".into()))?;
        if info.provider != fabric.provider() {
            return Err(unreachable(format!(
                "it uses the libfabric provider {:?}, this engine {:?} (set the same RINGXFER_FI_PROVIDER)",
                info.provider,
                fabric.provider()
            )));
        }
        if info.virt_addr != fabric.virt_addr() || info.max_notif_bytes > 1 << 16 {
            return Err(unreachable("its fabric info is out of range".into()));
        }
        if us.capacity > info.capacity as usize {
            return Err(unreachable(
                "this engine has more slots than the peer tracks per sender (give both the same capacity)".into(),
            ));
        }
        let mut regions = md.regions;
        regions.sort_by_key(|r| r.id);
        let keys = regions
            .iter()
            .map(|r| info.keys.iter().find(|(id, _)| *id == r.id).map(|(_, key)| *key))
            .collect();
        let (addr, _) = fabric.address(&info.address, md.engine_id)?;
        let tag = fabric.hello(addr, md.engine_id, us.capacity, std::time::Duration::from_secs(5), sink)?;
        Ok(Peer {
            name: md.engine_name,
            engine_id: md.engine_id,
            regions,
            max_notif_bytes: info.max_notif_bytes as usize,
            outbox: None,
            reach: Reach::Fabric(FabricPeer {
                addr,
                keys,
                virt_addr: info.virt_addr,
                tag,
            }),
        })
    }

    /// A peer served by the sim transport (`Engine::sim_peer`).
    pub(crate) fn sim(engine_id: u64, max_notif_bytes: usize) -> Peer {
        Peer {
            name: String::from("sim"),
            engine_id,
            regions: Vec::new(),
            max_notif_bytes,
            outbox: None,
            reach: Reach::Sim,
        }
    }

    /// Whether the sim transport serves this peer.
    pub(crate) fn is_sim(&self) -> bool {
        matches!(self.reach, Reach::Sim)
    }

    /// The fabric address of a peer reached through the fabric, and our tag there.
    pub(crate) fn fabric_addr(&self) -> Option<(u64, u16)> {
        match &self.reach {
            Reach::Fabric(f) => Some((f.addr, f.tag)),
            _ => None,
        }
    }

    /// A remote descriptor's (address, key) on the fabric (checked by `check` at
    /// prepare). `None` if the region is not registered with the peer's fabric.
    pub(crate) fn fabric_target(&self, d: &Desc) -> Option<(u64, u64)> {
        let Reach::Fabric(f) = &self.reach else { return None };
        let i = self.regions.binary_search_by_key(&d.region.to_raw(), |r| r.id).ok()?;
        let key = f.keys[i]?;
        let addr = if f.virt_addr {
            self.regions[i].addr.checked_add(d.offset)?
        } else {
            d.offset
        };
        Some((addr, key))
    }

    /// Checks a remote descriptor against the peer's metadata.
    pub(crate) fn check(&self, d: &Desc) -> Result<()> {
        if self.is_sim() {
            // The sim moves no bytes: any remote descriptor will do.
            return Ok(());
        }
        let Ok(i) = self.regions.binary_search_by_key(&d.region.to_raw(), |r| r.id) else {
            return Err(Error::UnknownRegion {
                region: d.region.to_raw(),
            });
        };
        if self.regions[i].kind == MemKind::Vram && !matches!(self.reach, Reach::Fabric(_)) {
            // Published only when registered with the peer's fabric (FI_HMEM): no
            // memcpy or process_vm_writev reaches GPU memory.
            return Err(Error::InvalidDescriptor {
                reason: "a peer's GPU memory is reached only over the fabric",
            });
        }
        let len = self.regions[i].len;
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

    /// Moves the bytes of one transfer and says how it ended.
    pub(crate) fn transfer(&self, op: Op, local: &[Resolved], remote: &[Desc]) -> Outcome {
        match &self.reach {
            Reach::InProcess(target) => {
                // The peer's registry read lock is held while its memory is copied, so
                // it cannot deregister (or drop) a region under the copy.
                let access = target.registry.access();
                for (l, d) in local.iter().zip(remote) {
                    let Ok(r) = access.resolve(d) else {
                        return Outcome::Failed(FailCode::PEER_LOST);
                    };
                    // SAFETY: `l` is pinned by the transfer, `r` is valid while `access`
                    // holds the peer's registry, and prepare checked equal lengths.
                    unsafe { local::copy(op, l.addr, r.addr, l.len) };
                }
                Outcome::Done
            }
            Reach::OtherProcess(remote_peer) => {
                if !remote_peer.alive() {
                    return Outcome::Failed(FailCode::PEER_LOST);
                }
                for (l, d) in local.iter().zip(remote) {
                    let Ok(i) = self.regions.binary_search_by_key(&d.region.to_raw(), |r| r.id) else {
                        return Outcome::Failed(FailCode::PEER_LOST);
                    };
                    let (entry, generation) = region_entry(d.region.to_raw());
                    match &remote_peer.memory[i] {
                        RemoteMemory::Mapped(segment) => {
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
                            unsafe { local::copy(op, l.addr, addr, l.len) };
                        }
                        RemoteMemory::Process { addr } => {
                            let Some(remote_addr) = addr.checked_add(d.offset) else {
                                return Outcome::Failed(FailCode::TRANSPORT);
                            };
                            // Pinned in the peer's table: it cannot deregister (and then
                            // free) this memory until the copy is over.
                            if !remote_peer.regs.pin(entry, generation) {
                                return Outcome::Failed(FailCode::REGION_GONE);
                            }
                            let copied = process_vm_copy(op, remote_peer.pid, l, remote_addr);
                            remote_peer.regs.unpin(entry);
                            if let Err(errno) = copied {
                                return Outcome::Failed(FailCode::new(FailSource::Errno, errno as u32));
                            }
                        }
                        RemoteMemory::Missing => return Outcome::Failed(FailCode::PEER_LOST),
                    }
                }
                Outcome::Done
            }
            // The engine posts fabric and sim transfers through their transports.
            Reach::Fabric(_) | Reach::Sim => Outcome::Failed(FailCode::TRANSPORT),
        }
    }

    /// Whether the peer still looks alive (always true for one in this process: its
    /// drop is seen through its registry instead).
    pub(crate) fn alive(&self) -> bool {
        match &self.reach {
            Reach::InProcess(_) | Reach::Fabric(_) | Reach::Sim => true,
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

/// A region id's (table index, generation).
fn region_entry(raw: u64) -> (usize, u64) {
    ((raw & 0xF_FFFF) as usize, raw >> 20)
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

/// Copies `l` to or from `remote_addr` in process `pid`; the errno on failure.
fn process_vm_copy(op: Op, pid: u32, l: &Resolved, remote_addr: u64) -> std::result::Result<(), i32> {
    let mut done = 0usize;
    while done < l.len {
        let local = libc::iovec {
            iov_base: (l.addr + done) as *mut libc::c_void,
            iov_len: l.len - done,
        };
        let remote = libc::iovec {
            iov_base: (remote_addr as usize + done) as *mut libc::c_void,
            iov_len: l.len - done,
        };
        // SAFETY: `local` lies in a region pinned by the transfer; the kernel checks
        // `remote` against the peer's address space and fails rather than fault.
        let n = unsafe {
            match op {
                Op::Write => libc::process_vm_writev(pid as libc::pid_t, &local, 1, &remote, 1, 0),
                Op::Read => libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0),
            }
        };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(libc::EIO),
            _ => match std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO) {
                libc::EINTR => {}
                errno => return Err(errno),
            },
        }
    }
    Ok(())
}
