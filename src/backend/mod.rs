//! Transports, behind one interface.
//!
//! Each transport moves the bytes of posted transfers and reports how they ended to a
//! [`Sink`]: the engine's call of the ring's one exit function, `SlotRing::complete`.
//! None frees a slot itself. The engine never names a transport: it holds one
//! [`Transports`] value, asks it at prepare which transport moves a transfer (a
//! [`Via`], stored in the slot), and hands every posted transfer, progress call,
//! cancel and control-path request to it. [`Transports`] dispatches by matching
//! [`Via`] in this file alone — static dispatch: no virtual call and no lookup on the
//! hot path.
//!
//! - [`local`]: engines in the same process, by `memcpy`, and across processes on one
//!   host through shared memory ([`Via::Local`]); and copies between the engine's own
//!   host memory regions ([`Via::Memory`]).
//! - [`fabric`]: libfabric RDM endpoints (tcp, shm, verbs, efa, …), loaded at run
//!   time; on when `Config::fabric` is set ([`Via::Fabric`]).
//! - `cuda`: host ↔ GPU and GPU ↔ GPU copies on CUDA streams (cudarc, loaded at run
//!   time), one event per slot; on when `Config::cuda` is set ([`Via::Cuda`]).
//! - `file`: registered memory to and from registered files, on I/O worker threads
//!   that the engine runs ([`Via::File`]).
//! - `sim` (cargo feature `testing`): a fault-injecting transport for tests, soaks
//!   and fuzzing ([`Via::Sim`]).
//!
//! # Adding a transport
//!
//! 1. A module under `src/backend/` with a type that implements [`Transport`] (and,
//!    if it reaches peers, a link type made by its `connect`).
//! 2. In this file: a variant of [`Via`] (and of [`Link`] if it reaches peers), a
//!    field of [`Transports`] built in `Opening::finish`, and its arms in this file's
//!    matches: `Transports::start` and `Transports::launch` (the hot path),
//!    `Transports::each` (the control path), `Transports::progress` if it completes
//!    asynchronously, `Transports::connect` and `Link::route` if it reaches peers, or
//!    `Via::own` for the memory kinds it moves within one engine.
//! 3. A field of `Config` (`src/engine/config.rs`) that turns it on, validated in
//!    `Config::validate` and passed on in [`Settings`] by `Config::settings`.
//!
//! Nothing else changes: the engine, the ring, the registry and the FFI stay as they
//! are. `tests/layering.rs` checks that the engine names no transport.

#[cfg(feature = "cuda")]
pub(crate) mod cuda;
#[cfg(feature = "cuda")]
pub(crate) mod cuda_batch;
pub(crate) mod cuda_config;
#[cfg(feature = "cuda")]
pub(crate) mod cuda_ipc;
#[cfg(feature = "cuda")]
pub(crate) mod cuda_order;
#[cfg(all(feature = "cuda", feature = "testing"))]
pub(crate) mod cuda_raw;
#[cfg(feature = "cuda")]
pub(crate) mod cuda_vmm;
pub mod fabric;
pub(crate) mod file;
pub(crate) mod local;
pub(crate) mod runs;
#[cfg(feature = "testing")]
pub(crate) mod sim;

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::mem::{Keyring, Pairs, Registry, Resolved};
use crate::ring::{FailCode, Handle, Job, Outcome};
use crate::shared::Shared;
use crate::types::{Desc, Op, RegionId};
use crate::wire::metadata::{BackendInfo, Metadata};

use self::cuda_config::CudaConfig;
use self::fabric::{Fabric, FabricConfig, FabricStats};
use self::file::Files;
use self::local::Local;

/// How long an engine's worker thread first stays off its job queue after finding
/// only jobs their waiters took (see the file transport).
pub(crate) const WORKER_QUIET: Duration = file::QUIET_FIRST;

/// Where an asynchronous transport reports a transfer's end: the engine's call of the
/// ring's one exit function, `SlotRing::complete`, which says whether it took it
/// (false: a duplicate or stale completion, refused).
pub(crate) type Sink<'a> = &'a mut dyn FnMut(Handle, Outcome) -> bool;

/// Where a transport fails a transfer whose deadline passed for its owner
/// (`SlotRing::expire`), while the transport may still complete it later.
pub(crate) type Expire<'a> = &'a dyn Fn(Handle, FailCode) -> bool;

/// Which transport moves a transfer: decided once, at prepare, and stored in the
/// transfer's slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Via {
    /// Between the engine's own host memory regions: copied in `post`.
    #[default]
    Memory,
    /// To a peer in this process or on this host (the `local` transport).
    Local,
    /// Between the engine's memory and its registered files, on the I/O workers.
    File,
    /// With the engine's GPU memory (the `cuda` transport).
    Cuda,
    /// To a peer reached through libfabric.
    Fabric,
    /// To the fault-injecting sim peer.
    #[cfg(feature = "testing")]
    Sim,
}

impl Via {
    /// The transport for a transfer to a peer whose GPU memory is mapped here
    /// ([`Link::moves_device_memory`]): the cuda transport's when either side names
    /// GPU memory, else this one.
    #[inline]
    pub(crate) fn with_device_memory(self, device: bool) -> Via {
        if device { Via::Cuda } else { self }
    }

    /// Which transport moves a transfer between the engine's own regions, given what
    /// its pairs name; `None` for GPU memory with a file anywhere in the transfer, or
    /// a pair of two non-memory sides (other than GPU ↔ GPU): no transport moves
    /// those.
    #[inline(always)]
    pub(crate) fn own(pairs: Pairs) -> Option<Via> {
        let Pairs { mixed, vram, file } = pairs;
        if mixed || (vram && file) {
            return None;
        }
        Some(match (vram, file) {
            (true, _) => Via::Cuda,
            (false, true) => Via::File,
            (false, false) => Via::Memory,
        })
    }
}

/// One slot's transfer context, allocated once per slot when the engine is built and
/// reused by every transfer that takes the slot. The engine fills it at prepare; a
/// transport reads it (through [`Xfer`]) while the transfer is posted.
pub(crate) struct Transfer {
    /// The ring slot this context belongs to: its row of the registry's holds.
    pub(crate) slot: usize,
    pub(crate) op: Op,
    /// Which transport moves it, decided at prepare.
    pub(crate) via: Via,
    /// The peer's id (`PeerId::SELF`'s for a transfer between the engine's own
    /// regions).
    pub(crate) peer: u32,
    /// Descriptors in use, of the `max_descs_per_xfer` each array holds.
    pub(crate) count: usize,
    /// Local descriptors, resolved (and their regions held) from prepare until the
    /// slot is freed.
    pub(crate) local: Box<[Resolved]>,
    /// A transfer to a peer: the peer's descriptors, checked against its metadata.
    pub(crate) remote: Box<[Desc]>,
    /// A transfer between the engine's own regions: the other side, resolved (and
    /// held) against the engine's own registrations.
    pub(crate) own: Box<[Resolved]>,
    pub(crate) notif: Box<[u8]>,
    pub(crate) notif_len: Option<usize>,
    /// A block transfer: each descriptor pair is a pair of block sets' spans, shaped
    /// by `shapes` (the ids in `local_ids` and `remote_ids`).
    pub(crate) blocks: bool,
    pub(crate) shapes: Box<[runs::Shape]>,
    /// Block ids of the indexed sets, `max_blocks_per_xfer` a side.
    pub(crate) local_ids: Box<[u32]>,
    pub(crate) remote_ids: Box<[u32]>,
    /// A block transfer's local spans before they are resolved (at prepare only).
    pub(crate) spans: Box<[Desc]>,
}

impl Transfer {
    /// Stages the notification sent after the last byte lands (`None`: none); its
    /// length was checked against `max_notif_bytes`.
    #[inline(always)]
    pub(crate) fn stage_notif(&mut self, notif: Option<&[u8]>) {
        self.notif_len = notif.map(|bytes| {
            self.notif[..bytes.len()].copy_from_slice(bytes);
            bytes.len()
        });
    }
}

/// A posted transfer, as its transport sees it: its context (borrowed from its slot
/// while the poster or the job's holder holds it), its handle, and how its peer is
/// reached.
#[derive(Clone, Copy)]
pub(crate) struct Xfer<'a> {
    pub(crate) handle: Handle,
    pub(crate) t: &'a Transfer,
    pub(crate) link: Option<&'a Link>,
    /// How long it may stay in flight, in nanoseconds (`None`: no deadline).
    pub(crate) timeout: Option<u64>,
}

impl<'a> Xfer<'a> {
    #[inline(always)]
    pub(crate) fn op(&self) -> Op {
        self.t.op
    }

    /// A transfer between the engine's own regions: the other side.
    #[inline(always)]
    pub(crate) fn own(&self) -> &'a [Resolved] {
        &self.t.own[..self.t.count]
    }

    /// A transfer to a peer: the peer's descriptors.
    #[inline(always)]
    pub(crate) fn remote(&self) -> &'a [Desc] {
        &self.t.remote[..self.t.count]
    }

    /// What moves: contiguous runs over `local()`, each with its place in the other
    /// side's descriptor of the same pair (`own()[pair]` or `remote()[pair]`).
    #[inline(always)]
    pub(crate) fn runs(&self) -> runs::Runs<'a> {
        runs_of(self.t)
    }

    #[inline(always)]
    pub(crate) fn notif(&self) -> Option<&'a [u8]> {
        self.t.notif_len.map(|n| &self.t.notif[..n])
    }

    /// The peer's id, for errors.
    #[inline(always)]
    pub(crate) fn peer(&self) -> u32 {
        self.t.peer
    }
}

/// The runs of transfer `t` (see [`Xfer::runs`]).
#[inline(always)]
pub(crate) fn runs_of(t: &Transfer) -> runs::Runs<'_> {
    let plan = t.blocks.then(|| runs::Plan {
        shapes: &t.shapes[..t.count],
        local_ids: &t.local_ids,
        remote_ids: &t.remote_ids,
    });
    runs::Runs::new(&t.local[..t.count], plan)
}

/// What a transport's `start` did with a posted transfer.
pub(crate) enum Started {
    /// It ended already, with this outcome (the engine reports it).
    Ended(Outcome),
    /// The transport will end it, once the poster hands it over with
    /// [`Transport::launch`] (after letting go of the slot's context). The word is the
    /// transport's own (e.g. a failure already known).
    Handed(u32),
    /// It runs as a job on the engine's worker threads: the poster queues it with
    /// [`Transports::queue_job`] (after letting go of the slot's context), and a
    /// worker, or the transfer's waiter, runs it and ends it.
    Job,
}

/// What a transport did when asked to stop an in-flight transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Recall {
    /// Not one it holds (another transport's, or already ended), or one it will
    /// end by itself: CANCELLED if it can still stop it (a queued file job, the
    /// sim), else with its own outcome (a running file job, a GPU copy).
    Asked,
    /// One it holds and cannot recall, and will not report done either: the engine
    /// fails it for its owner with `CANCELLED` now (`SlotRing::expire`); the
    /// transport ends it (and frees the slot) once its operations let go.
    Abandon,
}

/// What every transport does. Hot path: `start`, `launch`, `progress`, `cancel`;
/// control path: the rest, each with a default for transports that have nothing to
/// do there.
pub(crate) trait Transport {
    /// Starts a posted transfer. An error means nothing moved and the transport kept
    /// nothing of it: the transfer is prepared again.
    fn start(&self, xfer: Xfer<'_>, sink: Sink<'_>) -> Result<Started>;

    /// Takes over a transfer `start` answered [`Started::Handed`]: from here the
    /// transport ends it (through `sink` or its `progress`).
    fn launch(&self, handle: Handle, word: u32, sink: Sink<'_>) {
        let _ = (handle, word, sink);
    }

    /// Reads completions and ends finished transfers; how many it handled.
    fn progress(&self, sink: Sink<'_>, expire: Expire<'_>) -> usize {
        let _ = (sink, expire);
        0
    }

    /// Asks that an in-flight transfer stop; it still ends through the sink.
    fn cancel(&self, handle: Handle) -> Recall {
        let _ = handle;
        Recall::Asked
    }

    /// What it puts in the engine's metadata for peers.
    fn publish(&self, registry: &Registry) -> Option<BackendInfo> {
        let _ = registry;
        None
    }

    /// Bytes it allocated when the engine was built.
    fn bytes(&self) -> usize {
        0
    }

    /// Its counters, added to `stats`.
    fn stats(&self, stats: &mut TransportStats) {
        let _ = stats;
    }

    /// Ends what it does in the background before the engine's memory goes.
    fn quiesce(&self) {}

    /// Ends everything it holds now (the end of a run, before a quiescence check;
    /// only the sim holds transfers it would not end by itself).
    fn drain(&self, sink: Sink<'_>) {
        let _ = sink;
    }
}

/// How this engine reaches one peer: the state of the transport that serves it,
/// made by that transport at `load_peer`.
pub(crate) enum Link {
    /// In this process, or another process on this host (with the peer's GPU
    /// regions mapped here, where it exports any and both engines have the cuda
    /// transport).
    Local(Arc<local::LocalLink>, Option<Arc<DeviceLink>>),
    /// Through the fabric endpoint.
    Fabric(fabric::FabricLink),
    /// The sim transport's peer.
    #[cfg(feature = "testing")]
    Sim,
}

impl Link {
    /// Whether the peer's GPU memory (published only when its transport registered
    /// it) can be a target: only a transport that keys memory reaches it.
    pub(crate) fn reaches_device_memory(&self) -> bool {
        matches!(self, Link::Fabric(_))
    }

    /// The transport that moves transfers to this peer, and whether their local
    /// side may name GPU memory that transport registered (one match, for prepare).
    #[inline(always)]
    pub(crate) fn route(&self) -> (Via, bool) {
        match self {
            Link::Local(..) => (Via::Local, false),
            Link::Fabric(_) => (Via::Fabric, true),
            #[cfg(feature = "testing")]
            Link::Sim => (Via::Sim, false),
        }
    }

    /// The length of the peer's GPU region `id` if it is mapped here (a peer in
    /// another process on this node, through the cuda transport).
    pub(crate) fn device_region(&self, id: u64) -> Option<u64> {
        match self {
            #[cfg(feature = "cuda")]
            Link::Local(_, Some(device)) => device.region(id).map(|(_, len)| len),
            _ => {
                let _ = id;
                None
            }
        }
    }

    /// Whether the local side of a transfer to this peer may name GPU memory (the
    /// cuda transport moves it to and from the peer's mapped regions).
    pub(crate) fn moves_device_memory(&self) -> bool {
        matches!(self, Link::Local(_, Some(_)))
    }

    /// Whether the peer is known to be gone: its process on this host exited (a
    /// fabric peer's or the sim's liveness is not known here: never gone).
    pub(crate) fn gone(&self) -> bool {
        match self {
            Link::Local(local, _) => !local.alive(),
            _ => false,
        }
    }

    /// Whether remote descriptors are checked against the peer's regions (the sim
    /// moves no bytes and accepts any).
    pub(crate) fn checks_regions(&self) -> bool {
        match self {
            #[cfg(feature = "testing")]
            Link::Sim => false,
            _ => true,
        }
    }
}

/// The GPU regions of a peer in another process, mapped here (`cuda_ipc`).
#[cfg(feature = "cuda")]
pub(crate) type DeviceLink = cuda_ipc::IpcLink;
/// Without the cuda transport there is no mapping of a peer's GPU memory.
#[cfg(not(feature = "cuda"))]
pub(crate) enum DeviceLink {}

/// Counters of the transports, for `EngineStats`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TransportStats {
    /// Transfers the transports hold now, each by its own tables (added up).
    pub(crate) held: usize,
    pub(crate) fabric: FabricStats,
    pub(crate) cuda_events: usize,
    pub(crate) cuda_ipc_mappings: usize,
    pub(crate) cuda_batch: bool,
    #[cfg(feature = "testing")]
    pub(crate) sim: sim::SimStats,
}

/// What the transports are built from: the engine's configuration.
pub(crate) struct Settings<'a> {
    pub(crate) name: &'a str,
    pub(crate) engine_id: u64,
    pub(crate) capacity: usize,
    pub(crate) max_notif_bytes: usize,
    pub(crate) max_descs_per_xfer: usize,
    pub(crate) max_peers: usize,
    pub(crate) max_registrations: usize,
    pub(crate) inbox_capacity: usize,
    pub(crate) file_workers: usize,
    pub(crate) file_worker_poll: Duration,
    /// The engine's default deadline (`Config::deadline`) in nanoseconds, `u64::MAX`
    /// for none: a peer that holds a transfer this long is taken as lost.
    pub(crate) liveness: u64,
    pub(crate) fabric: Option<&'a FabricConfig>,
    pub(crate) cuda: Option<&'a CudaConfig>,
    #[cfg(feature = "testing")]
    pub(crate) sim: Option<&'a sim::SimConfig>,
}

/// The first half of building the transports: those the registry needs before it
/// exists (the fabric's domain registers memory; CUDA fails early without a driver).
pub(crate) struct Opening<'a> {
    settings: Settings<'a>,
    #[cfg(feature = "cuda")]
    cuda: Option<Arc<cuda::Cuda>>,
    domain: Option<Arc<fabric::Domain>>,
}

impl<'a> Opening<'a> {
    /// What registers memory for the registry, if any transport does.
    pub(crate) fn keyring(&self) -> Option<Arc<dyn Keyring>> {
        self.domain
            .as_ref()
            .map(|d| Arc::new(fabric::DomainKeys(Arc::clone(d))) as Arc<dyn Keyring>)
    }

    /// Opens the rest, now that the engine's registry and inbox exist.
    pub(crate) fn finish(self, shared: &Arc<Shared>) -> Result<Transports> {
        let s = &self.settings;
        let (dir, prefix) = shared.registry.segments();
        let local_info = local::LocalInfo {
            capacity: s.capacity as u32,
            max_notif_bytes: s.max_notif_bytes as u32,
            lanes: s.max_peers as u32,
            lane_capacity: s.inbox_capacity as u32,
            max_registrations: s.max_registrations as u32,
            dir: dir.to_path_buf(),
            prefix: prefix.to_owned(),
        };
        let fabric = match (&self.domain, s.fabric) {
            (Some(domain), Some(fc)) => Some(Fabric::open(
                domain,
                fc,
                s.capacity,
                s.max_notif_bytes,
                s.max_peers,
                Arc::clone(shared.inbox.map()),
                s.engine_id,
                s.name,
                s.liveness,
            )?),
            _ => None,
        };
        Ok(Transports {
            local: Local::new(shared, local_info),
            files: Files::new(s.capacity, s.file_workers, s.file_worker_poll),
            fabric,
            progress_thread: s.fabric.is_some_and(|f| f.progress_thread),
            #[cfg(feature = "cuda")]
            cuda: self.cuda,
            #[cfg(feature = "testing")]
            sim: s.sim.map(|c| sim::Sim::new(c.clone(), s.capacity, s.max_notif_bytes)),
        })
    }
}

/// Every transport the engine has, and the one place that dispatches to them.
pub(crate) struct Transports {
    local: Local,
    files: Files,
    fabric: Option<Fabric>,
    /// Whether the engine runs a thread that drives progress (`FabricConfig`).
    progress_thread: bool,
    #[cfg(feature = "cuda")]
    cuda: Option<Arc<cuda::Cuda>>,
    #[cfg(feature = "testing")]
    sim: Option<sim::Sim>,
}

/// The error of a transfer (or a call) that needs a transport the engine lacks.
fn absent(via: Via) -> Error {
    match via {
        Via::Cuda if cfg!(feature = "cuda") => Error::CudaUnavailable {
            reason: "the engine has no cuda transport (set Config::cuda)".into(),
        },
        Via::Cuda => Error::CudaUnavailable {
            reason: "this build of ringxfer has no `cuda` feature".into(),
        },
        Via::File => Error::InvalidConfig {
            field: "file_workers",
            reason: "is 0: file transfers are disabled",
        },
        _ => Error::InvalidConfig {
            field: "transport",
            reason: "the engine has no such transport",
        },
    }
}

impl Transports {
    /// Opens the transports the registry needs first (see [`Opening`]).
    pub(crate) fn open(settings: Settings<'_>) -> Result<Opening<'_>> {
        // CUDA first: without a driver this fails before anything else is made.
        #[cfg(feature = "cuda")]
        let cuda = settings
            .cuda
            .map(|c| {
                cuda::Cuda::open(
                    c,
                    settings.capacity,
                    settings.max_descs_per_xfer,
                    settings.max_notif_bytes,
                )
                .map(Arc::new)
            })
            .transpose()?;
        #[cfg(not(feature = "cuda"))]
        if settings.cuda.is_some() {
            return Err(absent(Via::Cuda));
        }
        // With a cuda transport, the fabric is asked for FI_HMEM, so GPU memory can be
        // a fabric transfer's source or target where the provider allows.
        let hmem = cfg!(feature = "cuda") && settings.cuda.is_some();
        let domain = settings.fabric.map(|fc| Fabric::open_domain(fc, hmem)).transpose()?;
        Ok(Opening {
            settings,
            #[cfg(feature = "cuda")]
            cuda,
            domain,
        })
    }

    /// Calls `f` on every transport the engine has (control path and progress).
    #[inline]
    fn each(&self, mut f: impl FnMut(&dyn Transport)) {
        f(&self.local);
        f(&self.files);
        if let Some(t) = &self.fabric {
            f(t);
        }
        #[cfg(feature = "cuda")]
        if let Some(t) = &self.cuda {
            f(&**t);
        }
        #[cfg(feature = "testing")]
        if let Some(t) = &self.sim {
            f(t);
        }
    }

    // ----- hot path -----

    /// Starts a posted transfer on the transport `via` names. Inlined into `post`:
    /// a call here and the `Result` it returns through memory cost more than the
    /// match.
    #[inline(always)]
    pub(crate) fn start(&self, via: Via, xfer: Xfer<'_>, sink: Sink<'_>) -> Result<Started> {
        match via {
            Via::Memory => Ok(Started::Ended(file::run(xfer.op(), xfer.runs(), xfer.own()))),
            Via::Local => Transport::start(&self.local, xfer, sink),
            Via::File => Transport::start(&self.files, xfer, sink),
            Via::Fabric => Transport::start(self.fabric.as_ref().ok_or_else(|| absent(via))?, xfer, sink),
            #[cfg(feature = "cuda")]
            Via::Cuda => Transport::start(&**self.cuda.as_ref().ok_or_else(|| absent(via))?, xfer, sink),
            #[cfg(not(feature = "cuda"))]
            Via::Cuda => Err(absent(via)),
            #[cfg(feature = "testing")]
            Via::Sim => Transport::start(self.sim.as_ref().ok_or_else(|| absent(via))?, xfer, sink),
        }
    }

    /// Hands a started transfer to its transport ([`Started::Handed`]).
    #[inline(always)]
    pub(crate) fn launch(&self, via: Via, handle: Handle, word: u32, sink: Sink<'_>) {
        match via {
            Via::Memory | Via::Local | Via::File => {}
            Via::Fabric => {
                if let Some(t) = &self.fabric {
                    Transport::launch(t, handle, word, sink);
                }
            }
            #[cfg(feature = "cuda")]
            Via::Cuda => {
                if let Some(t) = &self.cuda {
                    Transport::launch(&**t, handle, word, sink);
                }
            }
            #[cfg(not(feature = "cuda"))]
            Via::Cuda => {}
            #[cfg(feature = "testing")]
            Via::Sim => {
                if let Some(t) = &self.sim {
                    Transport::launch(t, handle, word, sink);
                }
            }
        }
    }

    /// Drives every transport that needs it; completion entries handled.
    #[inline]
    pub(crate) fn progress(&self, sink: Sink<'_>, expire: Expire<'_>) -> usize {
        // Named one by one, not through `each`: no virtual call on the hot path. The
        // local and file transports end their transfers themselves.
        let mut n = 0;
        if let Some(t) = &self.fabric {
            n += Transport::progress(t, sink, expire);
        }
        #[cfg(feature = "cuda")]
        if let Some(t) = &self.cuda {
            n += Transport::progress(&**t, sink, expire);
        }
        #[cfg(feature = "testing")]
        if let Some(t) = &self.sim {
            n += Transport::progress(t, sink, expire);
        }
        n
    }

    /// As `progress`, but when the fabric is the only transport that needs progress
    /// and its CQ has a wait descriptor, waits on it up to `timeout` while nothing
    /// completes (see `Fabric::progress_blocking`); otherwise `progress` at once.
    /// Returns (entries handled, whether the descriptor woke it).
    pub(crate) fn progress_blocking(&self, sink: Sink<'_>, expire: Expire<'_>, timeout: Duration) -> (usize, bool) {
        match &self.fabric {
            Some(t) if self.can_block() => t.progress_blocking(sink, Some(expire), timeout),
            _ => (self.progress(sink, expire), false),
        }
    }

    /// Whether `progress_blocking` can block: a fabric with a wait object, and no
    /// other transport that needs progress calls.
    pub(crate) fn can_block(&self) -> bool {
        #[cfg(feature = "cuda")]
        if self.cuda.is_some() {
            return false;
        }
        #[cfg(feature = "testing")]
        if self.sim.is_some() {
            return false;
        }
        self.fabric.as_ref().is_some_and(Fabric::waitable)
    }

    /// Wakes a thread blocked in `progress_blocking`.
    pub(crate) fn wake(&self) {
        if let Some(t) = &self.fabric {
            t.wake();
        }
    }

    /// Asks the transports to stop an in-flight transfer. Each knows from its own
    /// per-slot state (keyed by the full handle) whether it holds it: a queued file
    /// job and a sim transfer end CANCELLED; the fabric abandons its own.
    pub(crate) fn cancel(&self, handle: Handle) -> Recall {
        Transport::cancel(&self.files, handle);
        if let Some(t) = &self.fabric
            && Transport::cancel(t, handle) == Recall::Abandon
        {
            return Recall::Abandon;
        }
        #[cfg(feature = "testing")]
        if let Some(t) = &self.sim {
            Transport::cancel(t, handle);
        }
        Recall::Asked
    }

    // ----- jobs run on the engine's worker threads -----

    /// Queues a transfer whose `start` answered [`Started::Job`] for the workers.
    #[inline(always)]
    pub(crate) fn queue_job(&self, handle: Handle) {
        self.files.submit(handle);
    }

    /// Worker threads the engine runs for transports that need them.
    pub(crate) fn worker_threads(&self) -> usize {
        self.files.workers()
    }

    /// The next job for a worker thread, blocking; `None` at shutdown.
    pub(crate) fn next_job(&self, quiet: &mut Duration) -> Option<(Job, bool)> {
        self.files.next(quiet)
    }

    /// Takes `handle`'s job if it is still queued, for its waiter to run.
    #[inline]
    pub(crate) fn steal_job(&self, handle: Handle) -> Option<(Job, bool)> {
        self.files.steal(handle)
    }

    /// Runs a job's transfer.
    #[inline]
    pub(crate) fn run_job(&self, xfer: Xfer<'_>) -> Outcome {
        #[cfg(feature = "testing")]
        while self.files.stalled.load(std::sync::atomic::Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        file::run(xfer.op(), xfer.runs(), xfer.own())
    }

    /// Testing: makes file jobs wait before their I/O while `on` (a stalled
    /// filesystem), for deadline and shutdown tests.
    #[cfg(feature = "testing")]
    pub(crate) fn stall_files(&self, on: bool) {
        self.files.stalled.store(on, std::sync::atomic::Ordering::Release);
    }

    /// Tells the worker threads to finish the queue and stop.
    pub(crate) fn stop_workers(&self) {
        self.files.shut_down();
    }

    // ----- control path -----

    /// Whether the ring may hand the slot freed last out first
    /// (`SlotRing::reuse_recent`): not when a transport carries truncated generations
    /// on the wire (the fabric's immediate data), which relies on reuse spreading
    /// over every slot.
    pub(crate) fn allow_reuse_recent(&self) -> bool {
        self.fabric.is_none()
    }

    /// Whether the engine should run a progress thread.
    pub(crate) fn wants_progress_thread(&self) -> bool {
        self.progress_thread
    }

    /// Whether a transfer of this engine may end only when someone drives progress
    /// (the fabric without a progress thread: tcp moves data only inside progress
    /// calls; the sim), so a waiter must keep driving it rather than sleep. The
    /// others end on their own (in `post`, on I/O workers, on the GPU) and a waiter
    /// may sleep.
    pub(crate) fn needs_caller_progress(&self) -> bool {
        #[cfg(feature = "testing")]
        if self.sim.is_some() {
            return true;
        }
        self.fabric.is_some() && !self.progress_thread
    }

    /// Every transport's part of the engine's metadata.
    pub(crate) fn publish(&self, registry: &Registry) -> Vec<BackendInfo> {
        let mut out = Vec::new();
        self.each(|t| out.extend(t.publish(registry)));
        out
    }

    /// Connects to the engine `md` describes (control path), through the fabric if
    /// both engines have it, else the local transport. `previous` is the peer's link
    /// as loaded before (a reload). Returns the link and the peer's largest
    /// notification.
    pub(crate) fn connect(
        &self,
        md: &Metadata,
        shared: &Shared,
        previous: Option<&Link>,
        sink: Sink<'_>,
    ) -> Result<(Link, usize)> {
        if let Some(fabric) = &self.fabric
            && let Some(info) = md.backends.iter().find(|b| b.kind == fabric::KIND)
        {
            let (link, max) = fabric::FabricLink::connect(md, &info.conn, shared, fabric, sink)?;
            return Ok((Link::Fabric(link), max));
        }
        let previous_link = previous;
        let previous = match previous {
            Some(Link::Local(l, _)) => Some(&**l),
            _ => None,
        };
        let (link, max) = local::LocalLink::connect(md, shared, previous)?;
        let link = Arc::new(link);
        #[cfg(feature = "cuda")]
        let device = match &self.cuda {
            Some(cuda) => {
                let previous = match previous_link {
                    Some(Link::Local(_, Some(d))) => Some(d),
                    _ => None,
                };
                cuda_ipc::IpcLink::connect(cuda, md, &link, previous.map(|d| &**d))?.map(Arc::new)
            }
            None => None,
        };
        #[cfg(not(feature = "cuda"))]
        let device = None;
        Ok((Link::Local(link, device), max))
    }

    /// Called for every new region of host memory: the cuda transport page-locks it
    /// (`CudaConfig::pin_host`). On failure the region is deregistered again.
    pub(crate) fn registered(&self, registry: &Registry, id: RegionId) -> Result<RegionId> {
        #[cfg(feature = "cuda")]
        if let Some(cuda) = &self.cuda {
            return cuda::pin_host(cuda, registry, id);
        }
        let _ = registry;
        Ok(id)
    }

    /// Registers GPU memory the caller allocated (`Engine::register_vram`).
    pub(crate) fn register_vram(&self, registry: &Registry, dev_ptr: u64, len: usize) -> Result<RegionId> {
        #[cfg(feature = "cuda")]
        if let Some(cuda) = &self.cuda {
            return cuda::register_region(cuda, registry, dev_ptr, len);
        }
        let _ = (registry, dev_ptr, len);
        Err(absent(Via::Cuda))
    }

    /// Allocates GPU memory and registers it (`Engine::alloc_vram`).
    pub(crate) fn alloc_vram(&self, registry: &Registry, len: usize) -> Result<RegionId> {
        #[cfg(feature = "cuda")]
        if let Some(cuda) = &self.cuda {
            return cuda::alloc_region(cuda, registry, len);
        }
        let _ = (registry, len);
        Err(absent(Via::Cuda))
    }

    /// The fabric's libfabric provider, if the engine has the fabric.
    pub(crate) fn provider(&self) -> Option<String> {
        self.fabric.as_ref().map(|f| f.provider().to_owned())
    }

    /// Bytes the transports allocated when the engine was built.
    pub(crate) fn bytes(&self) -> usize {
        let mut n = 0;
        self.each(|t| n += t.bytes());
        n
    }

    /// The transports' counters.
    pub(crate) fn stats(&self) -> TransportStats {
        let mut stats = TransportStats::default();
        self.each(|t| t.stats(&mut stats));
        stats
    }

    /// Ends what the transports do in the background (GPU copies in flight) and
    /// leaves the process's directory (engine drop).
    pub(crate) fn quiesce(&self) {
        self.each(|t| t.quiesce());
    }

    /// Closes the endpoints, before the engine's memory goes (engine drop, once no
    /// other thread holds the transports).
    pub(crate) fn close(&mut self) {
        drop(self.fabric.take());
    }

    /// Ends every transfer a transport holds and would not end by itself.
    pub(crate) fn drain(&self, sink: Sink<'_>) {
        self.each(|t| t.drain(&mut *sink));
    }

    /// Declares the peer `link` reaches lost (`Engine::lose_peer`): its fabric
    /// transfers in flight fail `PEER_LOST` now, new ones at `post`. A local peer's
    /// transfers do not stay in flight; the sim has its own hook.
    pub(crate) fn lose(&self, link: &Link, expire: Expire<'_>) {
        if let (Link::Fabric(l), Some(f)) = (link, self.fabric.as_ref()) {
            f.lose(l.addr, expire);
        }
    }

    /// The fabric transport, for test hooks.
    #[cfg(feature = "testing")]
    pub(crate) fn fabric(&self) -> Option<&Fabric> {
        self.fabric.as_ref()
    }

    /// The sim transport, for test hooks.
    #[cfg(feature = "testing")]
    pub(crate) fn sim(&self) -> Option<&sim::Sim> {
        self.sim.as_ref()
    }
}
