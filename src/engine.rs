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

use crate::backend::Sink;
#[cfg(feature = "cuda")]
use crate::backend::cuda::Cuda;
use crate::backend::cuda_config::CudaConfig;
use crate::backend::fabric::{Fabric, FabricConfig, FabricInfo, FabricStats};
use crate::backend::file::{self, FileQueue};
use crate::backend::local::{self, LocalInfo};
use crate::backend::sim::{Sim, SimConfig, SimStats};
use crate::error::{Error, Result};
use crate::types::{Op, PeerId};
use crate::mem::{Allowed, FileOptions, Holder, Pairs, Registry, Resolved};
use crate::types::{Desc, RegionId};
use crate::notify::{Geometry, Inbox, InboxMap, Notification, Outbox, SenderId};
use crate::peer::Peer;
use crate::ring::{CancelResult, Handle, Outcome, Released, RingStats, SlotRing, Status};
use crate::wire::metadata::{BackendInfo, BackendKind, MemKind, Metadata};

/// Engine capacities, all fixed at [`Engine::new`]. Every field has a default
/// ([`Config::default`]) and a documented range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The engine's name, sent to peers in its metadata (≤ 255 bytes).
    pub name: String,
    /// Transfer slots: how many transfers may be prepared or in flight at once. A
    /// power of two, 1 ..= 2^20. Default 1024.
    pub capacity: usize,
    /// Descriptors per transfer, 1 ..= 65536. Default 64. Memory: about (capacity × 128 +
    /// max_prepared_lists × 8) × this bytes: each slot's descriptor storage (two resolved
    /// sides and the remote descriptors) and each holder's record of the regions it holds.
    pub max_descs_per_xfer: usize,
    /// Registered regions at once, 1 ..= 2^20. Default 1024.
    pub max_registrations: usize,
    /// Peers this engine loads, and senders it accepts notifications from, 1 ..= 4096.
    /// Default 64.
    pub max_peers: usize,
    /// Largest notification payload, 0 ..= 65536 bytes. Default 256.
    pub max_notif_bytes: usize,
    /// I/O worker threads for transfers to and from registered files, 0 ..= 64 (0: file
    /// transfers are refused). Created with the engine. Default 2.
    pub file_workers: usize,
    /// How long an idle I/O worker keeps polling for work before it sleeps, at most
    /// 10 ms. Polling costs a core while it lasts; a sleeping worker costs the next
    /// `post` a wake (a system call, microseconds). Default 100 µs; zero sleeps at
    /// once (for a binary whose cores are all spoken for).
    pub file_worker_poll: Duration,
    /// Prepared descriptor lists alive at once ([`Engine::prepare_list`]), 1 ..= 4096.
    /// Default 64.
    pub max_prepared_lists: usize,
    /// Notifications waiting to be popped *per sender* (each sender has its own lane
    /// of the inbox), a power of two 1 ..= 2^20. A full lane is backpressure to that
    /// sender (`InboxFull`), never a silent drop. Default 128. The inbox is a
    /// shared-memory segment of about `max_peers × inbox_capacity × (max_notif_bytes
    /// + 24)` bytes (2.3 MB with the defaults).
    pub inbox_capacity: usize,
    /// The fabric transport (libfabric, loaded at run time): `None` (the default)
    /// leaves it off; peers are then reached with the local transport only. With it
    /// on, peers that offer a fabric endpoint are reached through it.
    pub fabric: Option<FabricConfig>,
    /// The cuda transport (cudarc, loaded at run time): `None` (the default) leaves
    /// it off. With it on, `alloc_vram`/`register_vram` regions move to and from host
    /// memory (and each other) in transfers with [`Engine::local_peer`].
    pub cuda: Option<CudaConfig>,
    /// The fault-injecting sim transport, for tests and fuzzing: `None` (the
    /// default) leaves it off; with it, [`Engine::sim_peer`] makes a peer it serves.
    pub sim: Option<SimConfig>,
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
            max_prepared_lists: 64,
            file_workers: 2,
            file_worker_poll: Duration::from_micros(100),
            inbox_capacity: 128,
            fabric: None,
            cuda: None,
            sim: None,
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
        if self.file_workers > 64 {
            return bad("file_workers", "must be at most 64");
        }
        if self.file_worker_poll > Duration::from_millis(10) {
            return bad("file_worker_poll", "must be at most 10 ms");
        }
        if self.max_prepared_lists == 0 || self.max_prepared_lists > 4096 {
            return bad("max_prepared_lists", "must be 1 to 4096");
        }
        if let Some(c) = &self.cuda
            && (c.streams == 0 || c.streams > 64)
        {
            return bad("cuda.streams", "must be 1 to 64");
        }
        if !self.inbox_capacity.is_power_of_two() || self.inbox_capacity > 1 << 20 {
            return bad("inbox_capacity", "must be a power of two from 1 to 2^20");
        }
        let inbox_bytes = (self.max_peers * self.inbox_capacity) as u64 * (self.max_notif_bytes as u64 + 24);
        if inbox_bytes > 1 << 32 {
            return bad(
                "inbox_capacity",
                "× max_peers × (max_notif_bytes + 24) must stay within 4 GiB of shared memory",
            );
        }
        Ok(())
    }
}

/// The half of an engine that peers in the same process reach: its memory and inbox.
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) engine_id: u64,
    pub(crate) capacity: usize,
    pub(crate) registry: Registry,
    pub(crate) inbox: Inbox,
    /// What peers need to reach us with the local transport.
    local_info: LocalInfo,
    /// Our fabric endpoint (its keys are filled in when the metadata is built).
    fabric_info: Option<FabricInfo>,
}

impl Shared {
    /// The metadata blob describing this engine now.
    pub(crate) fn metadata(&self) -> Result<Vec<u8>> {
        let mut backends = vec![BackendInfo {
            kind: BackendKind::Local,
            conn: self.local_info.encode(),
        }];
        if let Some(info) = &self.fabric_info {
            let info = FabricInfo {
                keys: self.registry.fabric_keys(),
                ..info.clone()
            };
            backends.push(BackendInfo {
                kind: BackendKind::Fabric,
                conn: info.encode(),
            });
        }
        let md = Metadata {
            engine_name: self.name.clone(),
            engine_id: self.engine_id,
            process_id: std::process::id(),
            backends,
            regions: self.registry.regions(),
        };
        Ok(md.encode()?)
    }
}

/// One slot's transfer context, allocated once per slot and reused.
pub(crate) struct Transfer {
    /// The ring slot this context belongs to: its row of the registry's holds.
    slot: usize,
    op: Op,
    /// For a transfer to [`PeerId::SELF`]: how it runs.
    route: Route,
    peer: u32,
    count: usize,
    /// Local descriptors, resolved (and their regions held) from prepare until the slot
    /// is freed.
    local: Box<[Resolved]>,
    remote: Box<[Desc]>,
    /// For transfers to [`PeerId::SELF`]: the remote descriptors resolved (and held)
    /// against this engine's own registrations.
    own: Box<[Resolved]>,
    notif: Box<[u8]>,
    notif_len: Option<usize>,
}

/// What the I/O workers share with the engine: the ring and the engine's registry.
pub(crate) struct Core {
    pub(crate) ring: SlotRing<Transfer>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) files: FileQueue,
    /// The fabric transport, if configured.
    fabric: Option<Fabric>,
    /// The cuda transport, if configured (shared with device allocations, which free
    /// through it).
    #[cfg(feature = "cuda")]
    cuda: Option<Arc<Cuda>>,
    /// The sim transport, if configured.
    sim: Option<Sim>,
}

impl Core {
    /// The ring's one exit function for this engine's transfers: ends `handle` with
    /// `outcome` and, if that frees its slot, lets go of its regions. False if refused
    /// (a duplicate or stale completion).
    #[inline]
    fn complete(&self, handle: Handle, outcome: Outcome) -> bool {
        let registry = &self.shared.registry;
        self.ring.complete_with(handle, outcome, |t| reclaim(registry, t))
    }

    /// Drives the asynchronous transports (fabric, cuda): reads completions and ends
    /// finished transfers.
    fn progress(&self) -> usize {
        self.progress_cuda() + self.progress_fabric() + self.progress_sim()
    }

    fn progress_sim(&self) -> usize {
        let Some(sim) = &self.sim else { return 0 };
        sim.progress(&mut |h, o| self.complete(h, o), &|h, code| self.ring.expire(h, code))
    }

    #[cfg(feature = "cuda")]
    fn progress_cuda(&self) -> usize {
        let Some(cuda) = &self.cuda else { return 0 };
        cuda.progress(&mut |h, o| self.complete(h, o))
    }

    #[cfg(not(feature = "cuda"))]
    fn progress_cuda(&self) -> usize {
        0
    }

    /// Hands a recorded CUDA transfer to progress.
    fn launch_cuda(&self, handle: Handle, failure: u32) {
        #[cfg(feature = "cuda")]
        if let Some(cuda) = &self.cuda {
            cuda.launch(handle, failure);
        }
        #[cfg(not(feature = "cuda"))]
        let _ = (handle, failure);
    }

    /// CUDA events alive (one per slot while the transport is on).
    fn cuda_events(&self) -> usize {
        #[cfg(feature = "cuda")]
        return self.cuda.as_ref().map_or(0, |c| c.events_live());
        #[cfg(not(feature = "cuda"))]
        0
    }

    fn progress_fabric(&self) -> usize {
        let Some(fabric) = &self.fabric else { return 0 };
        fabric.progress(
            &mut |h, o| self.complete(h, o),
            Some(&|h, code| self.ring.expire(h, code)),
        )
    }

    /// A worker thread's loop: run file transfers until the engine shuts down.
    fn work(&self) {
        let mut quiet = file::QUIET_FIRST;
        while let Some((handle, cancelled)) = self.files.next(&mut quiet) {
            self.run_file_job(handle, cancelled);
        }
    }

    /// Runs (or cancels) one file transfer taken from the queue, and ends it.
    #[inline]
    fn run_file_job(&self, handle: Handle, cancelled: bool) {
        let outcome = if cancelled {
            Outcome::Cancelled
        } else {
            // SAFETY: `post` posted this handle and queued it; the job was taken once
            // (`FileQueue::next` or `steal`), and only its taker completes it, after
            // `t` is dropped.
            let t = unsafe { self.ring.posted_context(handle) };
            file::run(t.op, &t.local[..t.count], &t.own[..t.count])
        };
        self.complete(handle, outcome);
    }
}

/// Counters and the resource ledger, from [`Engine::stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineStats {
    /// The slot ring's counters (live slots, completions by outcome, stale completions…).
    pub ring: RingStats,
    /// Live memory registrations.
    pub registrations: usize,
    /// Regions held: by transfers whose slots are not yet freed and by prepared lists
    /// (one per run of a side's descriptors naming one region), plus control-path
    /// copies (`read_region`, `write_region`) in progress.
    pub pins: u64,
    /// Peers loaded.
    pub peers: usize,
    /// Prepared lists alive.
    pub prepared_lists: usize,
    /// File descriptors held by file registrations (one per registered file, opened
    /// at registration, closed at deregistration: never one per transfer).
    pub open_files: usize,
    /// Notifications waiting in this engine's inbox.
    pub notifications_queued: usize,
    /// Notifications popped.
    pub notifications_delivered: u64,
    /// Notifications dropped as duplicates or stale arrivals.
    pub notifications_stale: u64,
    /// The fabric transport's receiver counters (all zero without it).
    pub fabric: FabricStats,
    /// CUDA events alive: one per slot, created at `Engine::new` and destroyed at
    /// drop, whatever the transfers did (0 without the cuda transport).
    pub cuda_events: usize,
    /// What the sim transport did (all zero without it).
    pub sim: SimStats,
    /// Bytes the engine holds: what `Engine::new` allocated (slot contexts, the
    /// inbox segment, transports' per-slot state and buffers), fixed for its life,
    /// plus the regions it allocated (`alloc_region`, `alloc_vram`).
    pub bytes: u64,
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
    core: Arc<Core>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// Bytes allocated by `Engine::new` (see `EngineStats::bytes`).
    fixed_bytes: u64,
    /// The progress thread (`FabricConfig::progress_thread`) and its stop flag.
    progress_thread: Option<(Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<()>)>,
    peers: RwLock<Vec<Arc<Peer>>>,
    lists: RwLock<Vec<ListEntry>>,
}

/// A prepared descriptor list: validated and its regions held once, posted many times.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListId(u64);

impl ListId {
    /// Reinterprets a raw id (from C); validated when used.
    pub const fn from_raw(raw: u64) -> ListId {
        ListId(raw)
    }

    /// The raw `u64` form (`generation << 20 | index`).
    pub const fn to_raw(self) -> u64 {
        self.0
    }

    /// Its index in the engine's list table.
    const fn index(self) -> usize {
        (self.0 & 0xfffff) as usize
    }
}

impl std::fmt::Debug for ListId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ListId({}@{})", self.index(), self.0 >> 20)
    }
}

/// How a transfer between the engine's own regions moves its bytes, decided when its
/// descriptors are resolved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Route {
    /// Memory to memory: copied in `post`.
    #[default]
    Memory,
    /// To or from a file: run by the I/O workers (or its waiter).
    File,
    /// With GPU memory: the cuda transport.
    Cuda,
}

struct PreparedList {
    op: Op,
    peer: u32,
    route: Route,
    local: Box<[Resolved]>,
    remote: Box<[Desc]>,
    /// For a list to [`PeerId::SELF`]: the remote side, resolved (and held).
    own: Box<[Resolved]>,
}

struct ListEntry {
    generation: u64,
    list: Option<PreparedList>,
}

static NEXT_ENGINE: AtomicU32 = AtomicU32::new(1);

impl Engine {
    /// Builds an engine, allocating everything it will ever use.
    pub fn new(config: Config) -> Result<Engine> {
        config.validate()?;
        // CUDA first: without a driver this fails before anything else is made.
        #[cfg(feature = "cuda")]
        let cuda = config
            .cuda
            .as_ref()
            .map(|c| Cuda::open(c, config.capacity).map(Arc::new))
            .transpose()?;
        #[cfg(not(feature = "cuda"))]
        if config.cuda.is_some() {
            return Err(Error::CudaUnavailable {
                reason: "this build of ringxfer has no `cuda` feature".into(),
            });
        }
        let d = config.max_descs_per_xfer;
        let m = config.max_notif_bytes;
        // A random first generation: a handle of another engine is refused as stale
        // (see `SlotRing::with_contexts_from`). std's RandomState is seeded from the OS.
        let first_generation = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(u64::from(NEXT_ENGINE.load(Ordering::Relaxed)));
            1 + (h.finish() >> 21)
        };
        let ring = SlotRing::with_contexts_from(config.capacity, first_generation, |slot| Transfer {
            slot: slot as usize,
            op: Op::Write,
            route: Route::Memory,
            peer: 0,
            count: 0,
            local: vec![Resolved::default(); d].into_boxed_slice(),
            remote: vec![Desc::new(RegionId::from_raw(0), 0, 0); d].into_boxed_slice(),
            own: vec![Resolved::default(); d].into_boxed_slice(),
            notif: vec![0; m].into_boxed_slice(),
            notif_len: None,
        })?;
        // The slot freed last is taken again first (its lines are still in cache),
        // except with the fabric, whose immediate data carries truncated generations
        // and relies on reuse spreading over every slot (`SlotRing::reuse_recent`).
        let ring = if config.fabric.is_none() {
            ring.reuse_recent()
        } else {
            ring
        };
        // pid (for liveness checks) in the high half, random bits in the low half: ids
        // differ across restarts and across PID namespaces that share /dev/shm. The low
        // half is never 0 or all ones (the inbox's "claiming" mark).
        let low = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(NEXT_ENGINE.fetch_add(1, Ordering::Relaxed));
            match h.finish() as u32 {
                0 | u32::MAX => 1,
                v => v,
            }
        };
        let engine_id = u64::from(std::process::id()) << 32 | u64::from(low);
        let prefix = format!("ringxfer-{engine_id:016x}");
        // Segments of engines killed before they could unlink them.
        crate::sys::shm::sweep_dead(&crate::sys::shm::dir());
        // With a cuda transport, the fabric is asked for FI_HMEM, so GPU memory can be
        // a fabric transfer's source or target where the provider allows.
        let hmem = cfg!(feature = "cuda") && config.cuda.is_some();
        let domain = config
            .fabric
            .as_ref()
            .map(|fc| Fabric::open_domain(fc, hmem))
            .transpose()?;
        let registry = Registry::new(
            config.max_registrations,
            (config.capacity, config.max_prepared_lists, d),
            prefix.clone(),
            domain.clone(),
        )?;
        let (dir, _) = registry.segments();
        let geometry = Geometry {
            lanes: config.max_peers,
            lane_capacity: config.inbox_capacity,
            max_bytes: m,
        };
        let inbox = Inbox::new(
            InboxMap::create(dir, &local::inbox_name(&prefix), geometry)?,
            config.capacity,
        );
        let fabric = match (&domain, &config.fabric) {
            (Some(domain), Some(fc)) => Some(Fabric::open(
                domain,
                fc,
                config.capacity,
                m,
                config.max_peers,
                Arc::clone(inbox.map()),
                engine_id,
                &config.name,
            )?),
            _ => None,
        };
        let fabric_info = fabric.as_ref().map(|f| f.info(Vec::new()));
        let local_info = LocalInfo {
            capacity: config.capacity as u32,
            max_notif_bytes: m as u32,
            lanes: config.max_peers as u32,
            lane_capacity: config.inbox_capacity as u32,
            max_registrations: config.max_registrations as u32,
            dir: dir.to_path_buf(),
            prefix,
        };
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            engine_id,
            capacity: config.capacity,
            registry,
            inbox,
            local_info,
            fabric_info,
        });
        local::publish(engine_id, &shared);
        let lists = (0..config.max_prepared_lists)
            .map(|_| ListEntry {
                generation: 1,
                list: None,
            })
            .collect();
        let capacity = config.capacity;
        let core = Arc::new(Core {
            ring,
            shared,
            files: FileQueue::new(capacity, config.file_worker_poll),
            fabric,
            #[cfg(feature = "cuda")]
            cuda,
            sim: config.sim.clone().map(|c| Sim::new(c, capacity, m)),
        });
        let mut workers = Vec::with_capacity(config.file_workers);
        for i in 0..config.file_workers {
            let worker_core = Arc::clone(&core);
            match std::thread::Builder::new()
                .name(format!("ringxfer-io-{i}"))
                .spawn(move || worker_core.work())
            {
                Ok(worker) => workers.push(worker),
                Err(e) => {
                    // Undo: stop the workers already started, leave the directory.
                    core.files.shut_down();
                    workers.into_iter().for_each(|w| drop(w.join()));
                    local::withdraw(engine_id);
                    return Err(Error::io("starting a file I/O worker", &e));
                }
            }
        }
        let progress_thread = match &config.fabric {
            Some(fc) if fc.progress_thread => {
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let (thread_core, thread_stop) = (Arc::clone(&core), Arc::clone(&stop));
                let spawned = std::thread::Builder::new()
                    .name(String::from("ringxfer-progress"))
                    .spawn(move || progress_loop(&thread_core, &thread_stop));
                match spawned {
                    Ok(thread) => Some((stop, thread)),
                    Err(e) => {
                        core.files.shut_down();
                        workers.into_iter().for_each(|w| drop(w.join()));
                        local::withdraw(engine_id);
                        return Err(Error::io("starting the fabric progress thread", &e));
                    }
                }
            }
            _ => None,
        };
        // What `new` allocated, by its largest parts: the slot contexts, the inbox, the
        // registration table, and what each transport reports of its own.
        let fixed_bytes = {
            let per_slot = d * (2 * std::mem::size_of::<Resolved>() + std::mem::size_of::<Desc>()) + m;
            #[cfg(feature = "cuda")]
            let cuda_bytes = core.cuda.as_ref().map_or(0, |c| c.bytes());
            #[cfg(not(feature = "cuda"))]
            let cuda_bytes = 0;
            (capacity * per_slot
                + geometry.segment_bytes()
                + config.max_registrations * std::mem::size_of::<usize>() * 8
                + core.shared.registry.holds_bytes()
                + core.files.bytes()
                + core.fabric.as_ref().map_or(0, Fabric::bytes)
                + core.sim.as_ref().map_or(0, Sim::bytes)
                + cuda_bytes) as u64
        };
        Ok(Engine {
            fixed_bytes,
            progress_thread,
            peers: RwLock::new(Vec::with_capacity(config.max_peers)),
            lists: RwLock::new(lists),
            config,
            engine_id,
            core,
            workers,
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
        let id = self
            .core
            .shared
            .registry
            .register(addr as usize, len as u64, MemKind::Dram)?;
        self.pin_for_gpu(id)
    }

    /// With the cuda transport and `CudaConfig::pin_host`: page-locks a new host
    /// region for the GPU (`cuMemHostRegister`), undone when the region goes. On
    /// failure the region is deregistered again.
    fn pin_for_gpu(&self, id: RegionId) -> Result<RegionId> {
        #[cfg(feature = "cuda")]
        if let Some(cuda) = self.core.cuda.as_ref().filter(|c| c.pins_host()) {
            let registry = &self.core.shared.registry;
            let (addr, len) = registry.extent(id)?;
            match cuda.host_register(addr, len) {
                Ok(()) => {
                    let pin = HostPin {
                        cuda: Arc::clone(cuda),
                        addr,
                    };
                    registry.attach(id, Box::new(pin))?;
                }
                Err(e) => {
                    let _ = registry.deregister(id);
                    return Err(e);
                }
            }
        }
        Ok(id)
    }

    /// Allocates `len` zeroed bytes owned by the engine and registers them; they are
    /// freed by [`deregister`](Engine::deregister) or engine drop.
    pub fn alloc_region(&self, len: usize) -> Result<RegionId> {
        let id = self.core.shared.registry.allocate(len)?;
        self.pin_for_gpu(id)
    }

    /// Registers `len` bytes of GPU memory at device pointer `dev_ptr` (a
    /// `CUdeviceptr` of the engine's device) that the caller allocated. It moves to and
    /// from host memory and other GPU regions in transfers with
    /// [`local_peer`](Engine::local_peer), through the cuda transport.
    ///
    /// With the fabric transport too, it is registered with libfabric
    /// (`fi_mr_regattr`, `FI_HMEM_CUDA`) where the provider offers `FI_HMEM`: then it
    /// is published to peers and can be a fabric transfer's source or target. Where
    /// the provider or libfabric cannot, it is still registered for local use, and a
    /// fabric transfer naming it fails at prepare with [`Error::NotOnFabric`] saying
    /// why.
    ///
    /// # Safety
    /// The memory stays allocated, and is not otherwise used while a transfer may
    /// touch it, until [`deregister`](Engine::deregister) succeeds or the engine is
    /// dropped.
    pub unsafe fn register_vram(&self, dev_ptr: u64, len: usize) -> Result<RegionId> {
        self.need_cuda()?;
        self.core
            .shared
            .registry
            .register_vram(dev_ptr as usize, len as u64, self.cuda_device(), None)
    }

    /// Allocates `len` bytes of GPU memory (`cuMemAlloc`) and registers them; freed
    /// when the region is deregistered or the engine dropped. For tests, tools and
    /// the bench: serving binaries usually register memory they own.
    pub fn alloc_vram(&self, len: usize) -> Result<RegionId> {
        #[cfg(feature = "cuda")]
        {
            self.need_cuda()?;
            let Some(cuda) = &self.core.cuda else {
                unreachable!("checked by need_cuda")
            };
            if len == 0 {
                return Err(Error::InvalidDescriptor {
                    reason: "a region cannot be empty",
                });
            }
            let ptr = cuda.alloc(len)?;
            let owner = DeviceAlloc {
                cuda: Arc::clone(cuda),
                ptr,
            };
            self.core
                .shared
                .registry
                .register_vram(ptr as usize, len as u64, self.cuda_device(), Some(Box::new(owner)))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = len;
            self.need_cuda().map(|()| unreachable!("no cuda feature"))
        }
    }

    /// The cuda transport's device ordinal.
    fn cuda_device(&self) -> u32 {
        self.config.cuda.as_ref().map_or(0, |c| c.device)
    }

    fn need_cuda(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        if self.core.cuda.is_some() {
            return Ok(());
        }
        Err(Error::CudaUnavailable {
            reason: "the engine has no cuda transport (set Config::cuda)".into(),
        })
    }

    /// Opens the file at `path` once and registers it: its descriptor belongs to the
    /// registration and is closed by [`deregister`](Engine::deregister) (refused with
    /// [`Error::Busy`] while a transfer uses it) or engine drop — never per transfer.
    /// Move bytes to and from it with transfers to [`Engine::local_peer`], descriptors
    /// addressing it by (region, offset in the file, length).
    pub fn register_file(&self, path: impl AsRef<std::path::Path>, options: FileOptions) -> Result<RegionId> {
        self.core.shared.registry.register_file(path.as_ref(), &options, false)
    }

    /// As [`register_file`](Engine::register_file), but the file is also mapped
    /// (shared), and transfers copy to and from the mapping instead of calling
    /// `pread`/`pwrite`: repeated reads of cached data skip a system call each. It is
    /// slower for data not yet in the page cache (a page fault per 4 KiB instead of one
    /// large read) and for one-off writes. Measure with `ringxfer-bench --backend file
    /// --mapped`.
    ///
    /// Only regular files are mapped; a writable one has its blocks allocated first
    /// (`posix_fallocate`), so a full filesystem is an error here rather than a fault
    /// later; a read-only one is mapped read-only and a WRITE into it fails `EBADF`.
    ///
    /// # Safety
    /// Nothing may truncate the file below the registered length while it is
    /// registered: touching a mapped page past the end of a file raises SIGBUS, which
    /// ends the process.
    pub unsafe fn register_file_mapped(
        &self,
        path: impl AsRef<std::path::Path>,
        options: FileOptions,
    ) -> Result<RegionId> {
        self.core.shared.registry.register_file(path.as_ref(), &options, true)
    }

    /// The peer id of this engine itself ([`PeerId::SELF`]), for transfers between its
    /// own registrations: memory to and from registered files (run by the I/O workers),
    /// or memory to memory.
    pub fn local_peer(&self) -> PeerId {
        PeerId::SELF
    }

    /// Removes a registration. [`Error::Busy`] while a transfer not yet released uses it.
    pub fn deregister(&self, region: RegionId) -> Result<()> {
        self.core.shared.registry.deregister(region)
    }

    /// Copies bytes out of a local region (control path; for tools and tests).
    pub fn read_region(&self, region: RegionId, offset: u64, out: &mut [u8]) -> Result<()> {
        self.core.shared.registry.read_bytes(region, offset, out)
    }

    /// Copies bytes into a local region (control path; for tools and tests).
    pub fn write_region(&self, region: RegionId, offset: u64, data: &[u8]) -> Result<()> {
        self.core.shared.registry.write_bytes(region, offset, data)
    }

    // ----- control path: metadata and peers -----

    /// This engine's metadata blob: what a peer needs to reach it. Fetch it again after
    /// registering new regions.
    pub fn local_metadata(&self) -> Result<Vec<u8>> {
        self.core.shared.metadata()
    }

    /// Serves this engine's metadata over TCP at `addr` (e.g. `"127.0.0.1:0"`) from a
    /// background thread, until the returned server is dropped. Each connection gets
    /// the metadata as it is at that moment: a `u32` little-endian length, then the blob.
    pub fn serve_metadata(&self, addr: impl std::net::ToSocketAddrs) -> Result<MetadataServer> {
        MetadataServer::start(Arc::clone(&self.core.shared), addr)
    }

    /// Fetches a peer's metadata from its [`serve_metadata`](Engine::serve_metadata)
    /// address and loads it.
    pub fn fetch_peer(&self, addr: impl std::net::ToSocketAddrs) -> Result<PeerId> {
        let blob = fetch_metadata(addr)?;
        self.load_peer(&blob)
    }

    /// Loads (or reloads) a peer from its metadata blob and introduces this engine to
    /// it, so it accepts our notifications.
    pub fn load_peer(&self, blob: &[u8]) -> Result<PeerId> {
        let md = Metadata::decode(blob)?;
        // Connecting maps segments and opens a pidfd (I/O): done without the peer
        // table's write lock, which the hot path's readers would otherwise wait on.
        let previous = {
            let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
            peers.iter().find(|p| p.engine_id == md.engine_id).map(Arc::clone)
        };
        let via_fabric = self.core.fabric.is_some() && md.backends.iter().any(|b| b.kind == BackendKind::Fabric);
        let peer = Arc::new(match &self.core.fabric {
            Some(fabric) if via_fabric => {
                Peer::connect_fabric(md, &self.core.shared, fabric, &mut |h, o| self.core.complete(h, o))?
            }
            _ => Peer::connect(md, &self.core.shared, previous.as_deref())?,
        });
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = peers.iter().position(|p| p.engine_id == peer.engine_id) {
            let old = std::mem::replace(&mut peers[i], peer);
            drop(peers);
            drop(old); // unmaps outside the lock
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
        self.core.shared.inbox.sender_name(sender)
    }

    // ----- hot path -----

    /// Validates a transfer and takes a slot for it: every local descriptor against
    /// this engine's registrations (and holds its region), every remote one against the
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
        let allowed = self.validate(local, peer, remote, notif)?;
        self.core.ring.acquire_try(|t: &mut Transfer| {
            t.route = self.hold_sides(local, allowed, remote, (&mut t.local, &mut t.own), Holder::Slot(t.slot))?;
            t.op = op;
            t.peer = peer.0;
            t.count = local.len();
            // Only a peer's transfer reads them (one to the engine itself has them
            // resolved in `own`). Element by element: a transfer has few descriptors,
            // and `copy_from_slice` is a call to `memcpy`.
            if allowed != Allowed::Anything {
                for (to, from) in t.remote.iter_mut().zip(remote) {
                    *to = *from;
                }
            }
            t.notif_len = notif.map(|n| {
                t.notif[..n.len()].copy_from_slice(n);
                n.len()
            });
            Ok(())
        })
    }

    /// Every check of [`prepare`](Engine::prepare) that does not touch the registry;
    /// says what the local descriptors may name, given how the peer is reached.
    #[inline(always)]
    fn validate(&self, local: &[Desc], peer: PeerId, remote: &[Desc], notif: Option<&[u8]>) -> Result<Allowed> {
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
        if peer == PeerId::SELF {
            // Checked when resolved, against this engine's own registrations.
            return match notif {
                Some(_) => Err(Error::InvalidDescriptor {
                    reason: "a transfer to this engine itself has no peer to notify",
                }),
                None => Ok(Allowed::Anything),
            };
        }
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        let p = peers.get(peer.0 as usize).ok_or(Error::UnknownPeer { peer: peer.0 })?;
        if let Some(n) = notif {
            let max = self.config.max_notif_bytes.min(p.max_notif_bytes);
            if n.len() > max {
                return Err(Error::NotificationTooLarge { len: n.len(), max });
            }
        }
        remote.iter().try_for_each(|d| p.check(d))?;
        // GPU memory moves to a peer only over the fabric (registered with FI_HMEM).
        Ok(match (p.fabric_addr(), &self.core.fabric) {
            (Some(_), Some(_)) => Allowed::Fabric,
            _ => Allowed::Memory,
        })
    }

    /// Resolves a transfer's local descriptors, and for a transfer to [`PeerId::SELF`]
    /// its "remote" ones too (files allowed on either side, never on both of a pair),
    /// and records their regions as held by `holder`; says how a transfer to
    /// [`PeerId::SELF`] runs. On error it holds nothing.
    #[inline]
    fn hold_sides(
        &self,
        local: &[Desc],
        allowed: Allowed,
        remote: &[Desc],
        (local_out, own_out): (&mut [Resolved], &mut [Resolved]),
        holder: Holder,
    ) -> Result<Route> {
        let registry = &self.core.shared.registry;
        let pinner = registry.pinner();
        if allowed != Allowed::Anything {
            pinner.hold_all(local, local_out, allowed, holder)?;
            return Ok(Route::Memory);
        }
        let Pairs { mixed, vram, file } = pinner.hold_pairs(local, remote, (local_out, own_out), holder)?;
        // GPU memory with a file anywhere in the transfer, or a pair of two non-memory
        // sides (other than GPU ↔ GPU).
        if mixed || (vram && file) {
            registry.let_go(holder);
            return Err(Error::InvalidDescriptor {
                reason: "a file moves to or from host memory, not to another file or GPU memory",
            });
        }
        Ok(match (vram, file) {
            (true, _) => Route::Cuda,
            (false, true) => Route::File,
            (false, false) => Route::Memory,
        })
    }

    /// Validates a descriptor list and holds its regions once (control path), for
    /// [`post_list`](Engine::post_list) to post many times without re-validating.
    /// Its regions stay held until [`release_list`](Engine::release_list).
    pub fn prepare_list(&self, op: Op, local: &[Desc], peer: PeerId, remote: &[Desc]) -> Result<ListId> {
        if local.is_empty() {
            return Err(Error::InvalidDescriptor {
                reason: "a prepared list needs descriptors",
            });
        }
        let allowed = self.validate(local, peer, remote, None)?;
        let mut resolved = vec![Resolved::default(); local.len()].into_boxed_slice();
        let mut own = vec![Resolved::default(); if peer == PeerId::SELF { local.len() } else { 0 }].into_boxed_slice();
        // The list table's lock, then the registry's (as in `post_list`), held until
        // the list is in place: its index names its row of the registry's holds.
        let mut lists = self.lists.write().unwrap_or_else(|e| e.into_inner());
        let Some(index) = lists.iter().position(|e| e.list.is_none()) else {
            return Err(Error::ListTableFull {
                capacity: self.config.max_prepared_lists,
            });
        };
        let route = self.hold_sides(local, allowed, remote, (&mut resolved, &mut own), Holder::List(index))?;
        let entry = &mut lists[index];
        entry.list = Some(PreparedList {
            op,
            peer: peer.0,
            route,
            local: resolved,
            remote: remote.into(),
            own,
        });
        Ok(ListId(entry.generation << 20 | index as u64))
    }

    /// Posts a prepared list as a new transfer (a fresh slot and generation each time)
    /// with an optional notification; the handle is released like any other. If the
    /// post fails the slot is given back and nothing moved.
    pub fn post_list(&self, list: ListId, notif: Option<&[u8]>) -> Result<Handle> {
        let h = {
            let lists = self.lists.read().unwrap_or_else(|e| e.into_inner());
            let l = lookup_list(&lists, list)?;
            if let Some(n) = notif {
                self.validate(&[], PeerId(l.peer), &[], Some(n))?;
            }
            let registry = &self.core.shared.registry;
            self.core.ring.acquire_try(|t: &mut Transfer| {
                let n = l.local.len();
                t.local[..n].copy_from_slice(&l.local);
                t.own[..l.own.len()].copy_from_slice(&l.own);
                // The list is alive until `lists` is dropped (see `copy_holds`).
                registry.copy_holds(Holder::List(list.index()), Holder::Slot(t.slot));
                t.op = l.op;
                t.route = l.route;
                t.peer = l.peer;
                t.count = n;
                t.remote[..n].copy_from_slice(&l.remote);
                t.notif_len = notif.map(|bytes| {
                    t.notif[..bytes.len()].copy_from_slice(bytes);
                    bytes.len()
                });
                Ok::<(), Error>(())
            })?
        };
        if let Err(e) = self.post(h) {
            self.release(h)?;
            return Err(e);
        }
        Ok(h)
    }

    /// Drops a prepared list and lets go of its regions. Transfers posted from it keep
    /// holding theirs until they are released.
    pub fn release_list(&self, list: ListId) -> Result<()> {
        let mut lists = self.lists.write().unwrap_or_else(|e| e.into_inner());
        lookup_list(&lists, list)?;
        let entry = &mut lists[list.index()];
        if entry.list.take().is_some() {
            self.core.shared.registry.let_go(Holder::List(list.index()));
        }
        entry.generation += 1;
        Ok(())
    }

    /// Starts a prepared transfer. With the `local` transport the bytes move before
    /// `post` returns, and the notification, if any, is queued at the peer after the
    /// last byte landed.
    ///
    /// If the peer's inbox is full the call fails with [`Error::InboxFull`] and the
    /// transfer stays prepared: retry later, or release it.
    pub fn post(&self, handle: Handle) -> Result<()> {
        // RESERVED → POSTED first: from here until the transfer's completion the slot
        // cannot be freed (a concurrent release only detaches it), so its context is
        // stable.
        self.core.ring.post(handle)?;
        let registry = &self.core.shared.registry;
        let mut sink = |h, o| self.core.complete(h, o);
        let started = {
            // SAFETY: our post succeeded, and the transfer is handed to whoever may end
            // it (a worker, a transport's progress) only after `t` is dropped at the end
            // of this block: until then nothing can complete it and reclaim `t`.
            let t = unsafe { self.core.ring.posted_context(handle) };
            if t.peer == PeerId::SELF.0 {
                self.run_own(t, handle)
            } else {
                self.run_to_peer(t, handle, &mut sink)
            }
        };
        match started {
            Ok(Started::Ended(outcome)) => {
                sink(handle, outcome);
                Ok(())
            }
            Ok(Started::ToWorkers) => {
                // A worker ends it.
                self.core.files.submit(handle);
                Ok(())
            }
            Ok(Started::Fabric) => {
                if let Some(fabric) = &self.core.fabric {
                    fabric.launch(handle, &mut sink);
                }
                Ok(())
            }
            Ok(Started::Sim) => {
                if let Some(sim) = &self.core.sim {
                    sim.launch(handle);
                }
                Ok(())
            }
            Ok(Started::Cuda(failure)) => {
                self.core.launch_cuda(handle, failure);
                Ok(())
            }
            Err(e) => {
                // Nothing moved and no transport saw it: prepared again (or, if released
                // meanwhile, cancelled and freed).
                self.core.ring.unpost_with(handle, |t| reclaim(registry, t));
                Err(e)
            }
        }
    }

    /// A transfer between this engine's own registrations: memory to memory is copied
    /// now; one with a file goes to the I/O workers.
    fn run_own(&self, t: &Transfer, handle: Handle) -> Result<Started> {
        match t.route {
            Route::Cuda => return self.run_cuda(t, handle),
            Route::Memory => return Ok(Started::Ended(file::run(t.op, &t.local[..t.count], &t.own[..t.count]))),
            Route::File => {}
        }
        if self.workers.is_empty() {
            return Err(Error::InvalidConfig {
                field: "file_workers",
                reason: "is 0: file transfers are disabled",
            });
        }
        Ok(Started::ToWorkers)
    }

    /// A transfer with GPU memory: its copies go on a stream, its slot's event is
    /// recorded after them, and progress ends it when the event completes.
    #[cfg(feature = "cuda")]
    fn run_cuda(&self, t: &Transfer, handle: Handle) -> Result<Started> {
        let Some(cuda) = &self.core.cuda else {
            return Err(Error::CudaUnavailable {
                reason: "the engine has no cuda transport (Config::cuda)".into(),
            });
        };
        Ok(match cuda.post(handle, t.op, &t.local[..t.count], &t.own[..t.count])? {
            Err(outcome) => Started::Ended(outcome),
            Ok(failure) => Started::Cuda(failure),
        })
    }

    #[cfg(not(feature = "cuda"))]
    fn run_cuda(&self, _t: &Transfer, _handle: Handle) -> Result<Started> {
        Err(Error::CudaUnavailable {
            reason: "this build of ringxfer has no `cuda` feature".into(),
        })
    }

    /// A transfer to a peer: with the local transport the bytes move now, then the
    /// notification is queued; with the fabric the operations are posted.
    fn run_to_peer(&self, t: &Transfer, handle: Handle, sink: Sink<'_>) -> Result<Started> {
        // Take the peer (an Arc: no allocation) and let go of the peer table before
        // moving bytes.
        let peer = {
            let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
            peers.get(t.peer as usize).map(Arc::clone)
        };
        let Some(peer) = peer else {
            return Err(Error::UnknownPeer { peer: t.peer });
        };
        let remote = &t.remote[..t.count];
        if peer.is_sim() {
            let Some(sim) = &self.core.sim else {
                return Err(Error::UnknownPeer { peer: t.peer });
            };
            sim.stage(handle, t.notif_len.map(|n| &t.notif[..n]));
            return Ok(Started::Sim);
        }
        if let (Some((dest, tag)), Some(fabric)) = (peer.fabric_addr(), &self.core.fabric) {
            if fabric.is_lost(dest) {
                return Err(Error::PeerLost { peer: t.peer });
            }
            if let Some(d) = remote.iter().find(|d| peer.fabric_target(d).is_none()) {
                return Err(Error::UnknownRegion {
                    region: d.region.to_raw(),
                });
            }
            let notif = t.notif_len.map(|n| &t.notif[..n]);
            let target = |i: usize| peer.fabric_target(&remote[i]).unwrap_or_default();
            fabric.post(handle, t.op, &t.local[..t.count], target, dest, tag, notif, sink)?;
            return Ok(Started::Fabric);
        }
        let Some(outbox) = &peer.outbox else {
            return Err(Error::PeerUnreachable {
                name: peer.name.clone(),
                reason: String::from("it is a fabric peer and this engine has no fabric transport"),
            });
        };
        if t.notif_len.is_some() && !outbox.reserve() {
            return Err(if peer.alive() {
                Error::InboxFull { peer: t.peer }
            } else {
                Error::PeerLost { peer: t.peer }
            });
        }
        let outcome = peer.transfer(t.op, &t.local[..t.count], remote);
        if let Some(len) = t.notif_len {
            if outcome == Outcome::Done {
                outbox.deliver(handle, &t.notif[..len]);
            } else {
                outbox.unreserve();
            }
        }
        Ok(Started::Ended(outcome))
    }

    /// Test hook (not part of the API): sends one raw fabric write of `local` to
    /// `remote` at `peer`, carrying `handle` in its immediate data as if it were a
    /// transfer of this engine — a late completion of an old generation, say — for
    /// the receiver to reject. Waits for it to complete.
    #[doc(hidden)]
    pub fn inject_fabric_write(&self, peer: PeerId, local: Desc, remote: Desc, handle: Handle) -> Result<()> {
        let p = {
            let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
            peers.get(peer.0 as usize).map(Arc::clone)
        }
        .ok_or(Error::UnknownPeer { peer: peer.0 })?;
        let (Some(fabric), Some((dest, tag))) = (&self.core.fabric, p.fabric_addr()) else {
            return Err(Error::InvalidDescriptor {
                reason: "not a fabric peer",
            });
        };
        p.check(&remote)?;
        let (raddr, key) = p.fabric_target(&remote).ok_or(Error::UnknownRegion {
            region: remote.region.to_raw(),
        })?;
        let registry = &self.core.shared.registry;
        let resolved = registry.pin_memory(&local)?;
        let result = fabric.inject_write(dest, tag, &resolved, raddr, key, handle, &mut |h, o| {
            self.core.complete(h, o)
        });
        registry.unpin(resolved.entry);
        result
    }

    /// Adds a peer served by the sim transport (`Config::sim`): transfers to it move no
    /// bytes and end as the sim's seeded faults decide (late, out of order, twice,
    /// failed, stalled past their deadline, replayed after reuse); its notifications
    /// arrive in this engine's own inbox, sometimes dropped or doubled. Any remote
    /// descriptor is accepted. For tests, soaks and fuzzing.
    pub fn sim_peer(&self) -> Result<PeerId> {
        let Some(sim) = &self.core.sim else {
            return Err(Error::InvalidConfig {
                field: "sim",
                reason: "is None: the engine has no sim transport",
            });
        };
        // The sim "engine" id: our pid (alive), other low bits than ours.
        let id = self.engine_id ^ 0x5A5A_0000 | 1;
        let outbox = Outbox::claim(Arc::clone(self.core.shared.inbox.map()), id, "sim")?;
        sim.set_outbox(outbox);
        let peer = Arc::new(Peer::sim(id, self.config.max_notif_bytes));
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        if peers.len() >= self.config.max_peers {
            return Err(Error::PeerTableFull {
                capacity: self.config.max_peers,
            });
        }
        peers.push(peer);
        Ok(PeerId(peers.len() as u32 - 1))
    }

    /// Sim transport: fails every transfer in flight with `PEER_LOST` at the next
    /// progress (the peer is "lost mid-transfer").
    pub fn sim_lose_peer(&self) {
        if let Some(sim) = &self.core.sim {
            sim.lose_peer();
        }
    }

    /// Sim transport: ends everything it holds now and replays its kept handles (the
    /// end of a run, before a quiescence check).
    pub fn sim_drain(&self) {
        if let Some(sim) = &self.core.sim {
            sim.drain(&mut |h, o| self.core.complete(h, o));
        }
    }

    /// The libfabric provider the fabric transport uses (e.g. `tcp;ofi_rxm`), if it
    /// is on.
    pub fn fabric_provider(&self) -> Option<String> {
        self.core.fabric.as_ref().map(|f| f.provider().to_owned())
    }

    /// Drives the transports that need it (the fabric's data progress is manual with
    /// the providers ringxfer uses): reads completions and ends finished transfers.
    /// Returns the number of completion entries handled. `status`, `wait` and
    /// `pop_notification` call it too; call it yourself when the engine only serves
    /// others (or configure `FabricConfig::progress_thread`). Never allocates.
    pub fn progress(&self) -> usize {
        self.core.progress()
    }

    /// Where a transfer is (after driving progress once).
    pub fn status(&self, handle: Handle) -> Result<Status> {
        self.core.progress();
        self.core.ring.status(handle)
    }

    /// Waits until the transfer ends or `timeout` passes ([`Error::Timeout`]; the
    /// transfer goes on), driving progress meanwhile. Spins briefly, then yields for
    /// up to 2 ms, then sleeps in growing steps (up to 0.5 ms), so a long wait does
    /// not hold a core.
    pub fn wait(&self, handle: Handle, timeout: Duration) -> Result<Status> {
        // A file transfer still queued runs here, on the waiting thread (a released
        // handle's is left to the workers: the status check refuses it first).
        self.core.ring.status(handle)?;
        if let Some(cancelled) = self.core.files.steal(handle) {
            self.core.run_file_job(handle, cancelled);
            // Ended here (unless released meanwhile by another thread: then the status
            // check below refuses the handle).
            let status = self.core.ring.status(handle)?;
            if status.is_terminal() {
                return Ok(status);
            }
        }
        // The clock is read only once the transfer is found unfinished: a stolen
        // file transfer (or a quick one) ends without a clock read.
        let mut start = None;
        let backoff = crossbeam_utils::Backoff::new();
        let mut sleep = Duration::from_micros(10);
        loop {
            self.core.progress();
            let status = self.core.ring.status(handle)?;
            if status.is_terminal() {
                return Ok(status);
            }
            let waited = start.get_or_insert_with(Instant::now).elapsed();
            if waited >= timeout {
                return Err(Error::Timeout { handle });
            }
            if waited < Duration::from_micros(50) {
                // Each turn reads the completion queues, and a transfer an I/O worker
                // is running usually ends within this: spinning keeps a yield's
                // latency (microseconds) off it.
                std::hint::spin_loop();
            } else if !backoff.is_completed() {
                backoff.snooze();
            } else if waited < Duration::from_millis(2) {
                // Most transfers end within this (a fabric window of them too, and
                // each turn drives progress): yielding keeps the latency of a
                // sleep-and-wake (tens of microseconds) off them.
                std::thread::yield_now();
            } else {
                std::thread::sleep(sleep);
                sleep = (sleep * 2).min(Duration::from_micros(500));
            }
        }
    }

    /// Cancels a transfer: one not yet posted ends CANCELLED at once; one in flight is
    /// left to its transport ([`CancelResult::InFlight`]).
    pub fn cancel(&self, handle: Handle) -> Result<CancelResult> {
        let result = self.core.ring.cancel(handle)?;
        if result == CancelResult::InFlight {
            // A file transfer still queued then ends CANCELLED instead of running.
            self.core.files.cancel(handle);
        }
        Ok(result)
    }

    /// Gives the handle up. An ended or never-posted transfer frees its slot and
    /// lets go of its regions now; one in flight is detached and freed by its completion.
    pub fn release(&self, handle: Handle) -> Result<Released> {
        let registry = &self.core.shared.registry;
        self.core.ring.release_with(handle, |t| reclaim(registry, t))
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
        self.core.progress();
        self.core.shared.inbox.pop(buf)
    }

    /// Checks that the engine holds nothing for transfers: no slot held (reserved,
    /// in flight, or ended but not released), no region held by a transfer. Prepared
    /// lists hold regions of their own and count as holding until released. The error
    /// names what is still held; registrations (the caller's to keep) are not counted.
    pub fn check_quiescent(&self) -> Result<()> {
        let s = self.stats();
        if s.ring.live == 0 && s.pins == 0 && s.prepared_lists == 0 && s.ring.acquired == s.ring.freed {
            return Ok(());
        }
        Err(Error::NotQuiescent {
            live_slots: s.ring.live,
            pins: s.pins,
            prepared_lists: s.prepared_lists,
        })
    }

    /// Counters and the resource ledger.
    pub fn stats(&self) -> EngineStats {
        let (registrations, pins, open_files) = self.core.shared.registry.counts();
        let lists = self.lists.read().unwrap_or_else(|e| e.into_inner());
        let prepared_lists = lists.iter().filter(|e| e.list.is_some()).count();
        drop(lists);
        let (notifications_queued, notifications_delivered, notifications_stale) = self.core.shared.inbox.counts();
        EngineStats {
            ring: self.core.ring.stats(),
            registrations,
            pins,
            peers: self.peers.read().unwrap_or_else(|e| e.into_inner()).len(),
            prepared_lists,
            open_files,
            notifications_queued,
            notifications_delivered,
            notifications_stale,
            fabric: self.core.fabric.as_ref().map(Fabric::stats).unwrap_or_default(),
            cuda_events: self.core.cuda_events(),
            sim: self.core.sim.as_ref().map(Sim::stats).unwrap_or_default(),
            bytes: self.fixed_bytes + self.core.shared.registry.owned_bytes(),
        }
    }
}

/// Serves an engine's metadata over TCP; stops when dropped. See
/// [`Engine::serve_metadata`].
pub struct MetadataServer {
    addr: std::net::SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetadataServer {
    fn start(shared: Arc<Shared>, addr: impl std::net::ToSocketAddrs) -> Result<MetadataServer> {
        let listener = std::net::TcpListener::bind(addr).map_err(|e| Error::io("binding the metadata server", &e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("binding the metadata server", &e))?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("ringxfer-md-{}", shared.name))
            .spawn(move || {
                for conn in listener.incoming() {
                    if stopping.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(mut conn) = conn else { continue };
                    // A peer that goes away mid-reply only loses its own reply.
                    if let Ok(blob) = shared.metadata() {
                        use std::io::Write;
                        let _ = conn
                            .write_all(&(blob.len() as u32).to_le_bytes())
                            .and_then(|()| conn.write_all(&blob));
                    }
                }
            })
            .map_err(|e| Error::io("starting the metadata server thread", &e))?;
        Ok(MetadataServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (with the port the OS chose for port 0).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one metadata blob from a [`MetadataServer`].
pub fn fetch_metadata(addr: impl std::net::ToSocketAddrs) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut conn =
        std::net::TcpStream::connect(addr).map_err(|e| Error::io("connecting to the metadata server", &e))?;
    let timeout = Some(Duration::from_secs(10));
    let _ = (conn.set_read_timeout(timeout), conn.set_write_timeout(timeout));
    let mut len = [0u8; 4];
    conn.read_exact(&mut len)
        .map_err(|e| Error::io("reading the metadata length", &e))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > crate::wire::metadata::MAX_BLOB_BYTES {
        return Err(crate::wire::metadata::MetadataError::TooLarge {
            what: "served metadata",
            len,
            max: crate::wire::metadata::MAX_BLOB_BYTES,
        }
        .into());
    }
    let mut blob = vec![0; len];
    conn.read_exact(&mut blob)
        .map_err(|e| Error::io("reading the metadata blob", &e))?;
    Ok(blob)
}

fn lookup_list(lists: &[ListEntry], id: ListId) -> Result<&PreparedList> {
    match lists.get(id.index()) {
        Some(ListEntry {
            generation,
            list: Some(l),
        }) if *generation == id.0 >> 20 => Ok(l),
        _ => Err(Error::UnknownList { list: id.0 }),
    }
}

/// Returns a freed slot's resources: the regions it holds.
fn reclaim(registry: &Registry, t: &mut Transfer) {
    registry.let_go(Holder::Slot(t.slot));
    t.count = 0;
    t.notif_len = None;
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Debug builds: let the asynchronous transports end what they still hold, then
        // say (on stderr) if anything is left: a handle never released, a prepared
        // list, a transfer a provider never gave back. Not a panic: a drop during
        // unwinding, or with a provider holding slots, must still clean up.
        if cfg!(debug_assertions) && !std::thread::panicking() {
            self.sim_drain();
            for _ in 0..1000 {
                if self.core.ring.stats().live == 0 {
                    break;
                }
                self.core.progress();
            }
            if let Err(e) = self.check_quiescent() {
                eprintln!("ringxfer: engine {:?} dropped while {e}", self.config.name);
            }
        }
        if let Some((stop, thread)) = self.progress_thread.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
        // The workers finish what is queued, then stop; only then can the files close.
        self.core.files.shut_down();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        // GPU copies in flight finish before device memory is freed with its region.
        #[cfg(feature = "cuda")]
        if let Some(cuda) = &self.core.cuda {
            cuda.synchronize();
        }
        // The endpoint closes before the memory registrations (and the caller's memory)
        // go: no fabric operation can touch them afterwards.
        if let Some(core) = Arc::get_mut(&mut self.core) {
            drop(core.fabric.take());
        }
        local::withdraw(self.engine_id);
        // Peers holding our shared half now find no regions: their transfers fail
        // instead of writing memory the caller may free after this.
        self.core.shared.registry.clear();
    }
}

/// What `post` started; `post` hands it over (`launch`) once it no longer borrows the
/// transfer's context.
enum Started {
    /// The transfer ended already.
    Ended(Outcome),
    /// To queue for the file I/O workers, which end it.
    ToWorkers,
    /// Posted to the fabric, the poster's reference still held: `Fabric::launch`.
    Fabric,
    /// Staged in the sim transport: `Sim::launch`.
    Sim,
    /// Copies enqueued and the slot's event recorded (with a failure already known,
    /// as `FailCode` bits, or 0): `Cuda::launch`.
    Cuda(u32),
}

/// The progress thread's loop: progress, and sleep a little when there is nothing
/// to do, so an idle engine costs little CPU.
fn progress_loop(core: &Core, stop: &std::sync::atomic::AtomicBool) {
    let mut idle_since: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        if core.progress() > 0 {
            idle_since = None;
            continue;
        }
        // Busy for 200 µs after the last completion (a burst's next operation comes
        // within that), then 50 µs naps.
        let since = *idle_since.get_or_insert_with(Instant::now);
        if since.elapsed() < Duration::from_micros(200) {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// A host region page-locked for the GPU, unlocked when its region goes.
#[cfg(feature = "cuda")]
struct HostPin {
    cuda: Arc<Cuda>,
    addr: usize,
}

#[cfg(feature = "cuda")]
impl Drop for HostPin {
    fn drop(&mut self) {
        self.cuda.host_unregister(self.addr);
    }
}

/// Device memory from `Engine::alloc_vram`, freed when its region goes.
#[cfg(feature = "cuda")]
struct DeviceAlloc {
    cuda: Arc<Cuda>,
    ptr: u64,
}

#[cfg(feature = "cuda")]
impl Drop for DeviceAlloc {
    fn drop(&mut self) {
        self.cuda.free(self.ptr);
    }
}
