//! [`Engine`]: the control path (registration, metadata, peers) and the hot path
//! (prepare, post, status, wait, cancel, release, notify, pop a notification), on the
//! slot ring and the transports.
//!
//! Everything the hot path uses is allocated by [`Engine::new`]: the slot ring, each
//! slot's descriptor storage (`max_descs_per_xfer` entries) and notification buffer
//! (`max_notif_bytes`), the registration table, the peer table and the notification
//! inbox. Afterwards the hot path only reads tables (under short read locks that are
//! never held across I/O) and moves bytes.
//!
//! The engine names no transport: it asks [`Transports`] which one moves a transfer
//! (at prepare) and hands it everything else. One file per job:
//!
//! - `config.rs`: [`Config`];
//! - this file: the engine, what its threads share ([`Core`]), `Engine::new` and drop;
//! - `control.rs`: memory registration, metadata and peers;
//! - `hot.rs`: prepare, post, progress, status, wait, cancel, release, notify, pop;
//! - `lists.rs`: prepared descriptor lists;
//! - `stats.rs`: the counters and the ledger;
//! - `server.rs`: metadata over TCP.

mod blocks;
mod completions;
mod config;
mod control;
mod hot;
mod lists;
mod metrics;
mod peers;
mod server;
mod stats;
mod waiting;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use self::config::{Config, Secret};
use self::lists::ListEntry;
pub use self::lists::ListId;
pub use self::server::{CLIENT_TIMEOUT, MAX_CLIENTS, MetadataServer, fetch_metadata, fetch_metadata_with};
pub use self::stats::EngineStats;
use crate::backend::runs::Shape;
use crate::backend::{Link, Transfer, Transports, WORKER_QUIET, Xfer};
use crate::error::{Error, Result};
use crate::mem::{Holder, Registry, Resolved};
use crate::notify::{Geometry, Inbox, InboxMap, inbox_name};
use crate::ring::{FailCode, Handle, Job, Outcome, SlotRing, Status};
use crate::shared::Shared;
use crate::sys::sharded::Sharded;
use crate::sys::shm;
use crate::types::{Desc, Op, RegionId};
use crate::wire::metadata::Metadata;

/// The transfer as its transport sees it.
#[inline(always)]
fn xfer<'a>(t: &'a Transfer, handle: Handle, link: Option<&'a Link>, timeout: Option<u64>) -> Xfer<'a> {
    Xfer {
        handle,
        t,
        link,
        timeout,
    }
}

/// A transfer's timeout in the ring's form: nanoseconds, below `u64::MAX` (which
/// the ring reads as "no deadline").
pub(crate) fn timeout_nanos(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX).min(u64::MAX - 1)
}

/// Poisons the engine when dropped by a panic's unwinding (`Engine::poison_on_unwind`).
pub(crate) struct PoisonOnUnwind<'a>(&'a AtomicBool);

impl Drop for PoisonOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Release);
        }
    }
}

/// What the engine's threads share: the ring, the engine's shared half and the
/// transports.
pub(crate) struct Core {
    pub(crate) ring: SlotRing<Transfer>,
    /// The eventfd the completion queue raises (with a completion queue only).
    completion_signal: Option<Arc<completions::CompletionSignal>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) transports: Transports,
    /// The engine's threads (workers, progress) that have started running.
    threads_started: AtomicUsize,
    /// What the engine's own tables hold, kept here for `Core::stats` (which the
    /// metadata server calls without the engine).
    census: Census,
    /// The clock of transfers' deadlines: nanoseconds since this instant.
    epoch: Instant,
    /// A panic inside the engine was seen: it refuses new work (`Error::Poisoned`).
    poisoned: AtomicBool,
}

/// Counts of the engine's control-path tables, stored when they change.
#[derive(Default)]
pub(crate) struct Census {
    peers: AtomicUsize,
    lists: AtomicUsize,
    fixed_bytes: std::sync::atomic::AtomicU64,
}

impl Core {
    /// The ring's one exit function for this engine's transfers: ends `handle` with
    /// `outcome` and, if that frees its slot, lets go of its regions. False if refused
    /// (a duplicate or stale completion).
    #[inline]
    pub(crate) fn complete(&self, handle: Handle, outcome: Outcome) -> bool {
        let registry = &self.shared.registry;
        self.ring.complete_with(handle, outcome, |t| reclaim(registry, t))
    }

    /// Now, in the clock of transfers' deadlines (never 0).
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Where a transfer is; one in flight past its deadline is failed for its owner
    /// (`TIMEOUT`) first, while its transport keeps the slot.
    #[inline]
    pub(crate) fn status(&self, handle: Handle) -> Result<Status> {
        let status = self.ring.status(handle)?;
        if status == Status::Posted && self.ring.expire_if_due(handle, || self.now()) {
            return Ok(Status::Failed(FailCode::TIMEOUT));
        }
        Ok(status)
    }

    /// Drives the asynchronous transports: reads completions and ends finished
    /// transfers.
    #[inline]
    pub(crate) fn progress(&self) -> usize {
        self.transports
            .progress(&mut |h, o| self.complete(h, o), &|h, code| self.ring.expire(h, code))
    }

    /// `progress`, waiting up to `timeout` on the fabric's wait descriptor while
    /// nothing completes (`Transports::progress_blocking`): (entries handled, whether
    /// the descriptor woke it).
    pub(crate) fn progress_blocking(&self, timeout: Duration) -> (usize, bool) {
        self.transports.progress_blocking(
            &mut |h, o| self.complete(h, o),
            &|h, code| self.ring.expire(h, code),
            timeout,
        )
    }

    /// A worker thread's loop: run the transports' jobs until the engine shuts down.
    fn work(&self) {
        let mut quiet = WORKER_QUIET;
        while let Some((job, cancelled)) = self.transports.next_job(&mut quiet) {
            self.run_job(job, cancelled);
        }
    }

    /// Runs (or cancels) one job taken from the transports, and ends its transfer.
    #[inline]
    fn run_job(&self, job: Job, cancelled: bool) {
        let handle = job.handle();
        let outcome = if cancelled {
            Outcome::Cancelled
        } else {
            // The job's holder alone ends the transfer, after `posted` is dropped.
            let posted = self.ring.resume(job);
            self.transports.run_job(xfer(posted.context(), handle, None, None))
        };
        self.complete(handle, outcome);
    }

    /// The metadata blob describing this engine now.
    pub(crate) fn metadata(&self) -> Result<Vec<u8>> {
        let shared = &self.shared;
        let md = Metadata {
            engine_name: shared.name.clone(),
            engine_id: shared.engine_id,
            process_id: std::process::id(),
            backends: self.transports.publish(&shared.registry),
            regions: shared.registry.regions(),
        };
        Ok(md.encode()?)
    }
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
    /// `config.deadline` in nanoseconds.
    timeout: Option<u64>,
    core: Arc<Core>,
    workers: Vec<JoinHandle<()>>,
    /// The progress thread and its stop flag.
    progress_thread: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    peers: Sharded<peers::PeerTable>,
    lists: Sharded<Vec<ListEntry>>,
    /// Set once `shut_down` has run (by `shutdown`, then not again by the drop).
    shut: bool,
}

static NEXT_ENGINE: AtomicU32 = AtomicU32::new(1);

/// 64 random bits from std's RandomState (seeded from the OS), mixed with `n`.
fn random(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    h.finish()
}

/// A new engine id: pid (for liveness checks) in the high half, random bits in the
/// low half, so ids differ across restarts and across PID namespaces that share
/// /dev/shm. The low half is never 0 or all ones (the inbox's "claiming" mark).
fn new_engine_id() -> u64 {
    let low = match random(u64::from(NEXT_ENGINE.fetch_add(1, Ordering::Relaxed))) as u32 {
        0 | u32::MAX => 1,
        v => v,
    };
    u64::from(std::process::id()) << 32 | u64::from(low)
}

impl Engine {
    /// Marks the engine poisoned: a panic inside it may have left its tables
    /// half-updated, so from now on it refuses new work ([`Error::Poisoned`]): no
    /// prepare, post, registration or peer. Transfers in flight can still be
    /// watched, cancelled and released, and the engine dropped. The C boundary calls
    /// it when it catches a panic (`RX_PANIC`); a Rust caller that catches one
    /// around an engine call should call it too. The engine also poisons itself when
    /// it finds one of its locks poisoned.
    pub fn poison(&self) {
        self.core.poisoned.store(true, Ordering::Release);
    }

    /// Whether the engine is poisoned ([`poison`](Engine::poison)).
    pub fn is_poisoned(&self) -> bool {
        self.core.poisoned.load(Ordering::Acquire)
    }

    /// `Err(Poisoned)` once the engine is poisoned (one load of a line nobody writes).
    #[inline(always)]
    pub(crate) fn usable(&self) -> Result<()> {
        match self.core.poisoned.load(Ordering::Relaxed) {
            false => Ok(()),
            true => Err(Error::Poisoned),
        }
    }

    /// Testing: a panic with the peer table locked for writing.
    #[cfg(feature = "testing")]
    pub(crate) fn inject_panic_in_peers(&self) {
        let _poison = self.poison_on_unwind();
        let _peers = self.unpoison(self.peers.write());
        panic!("injected panic inside the engine (testing)");
    }

    /// A guard that poisons the engine if it is dropped by a panic's unwinding: held
    /// across every update of the engine's tables.
    pub(crate) fn poison_on_unwind(&self) -> PoisonOnUnwind<'_> {
        PoisonOnUnwind(&self.core.poisoned)
    }

    /// A lock's guard; a lock a panic poisoned poisons the engine (this call goes
    /// on with the guard, later ones are refused).
    pub(crate) fn unpoison<G>(&self, locked: std::sync::LockResult<G>) -> G {
        locked.unwrap_or_else(|e| {
            self.poison();
            e.into_inner()
        })
    }
}

impl Engine {
    /// Builds an engine, allocating everything it will ever use.
    pub fn new(config: Config) -> Result<Engine> {
        config.validate()?;
        // A random first generation: a handle of another engine is refused as stale
        // (see `SlotRing::with_contexts_from`).
        let first_generation = 1 + (random(u64::from(NEXT_ENGINE.load(Ordering::Relaxed))) >> 21);
        let engine_id = new_engine_id();
        let opening = Transports::open(config.settings(engine_id))?;
        let shared = Arc::new(Self::shared_half(&config, engine_id, &opening)?);
        let transports = opening.finish(&shared)?;
        let ring = Self::ring(&config, first_generation, &transports)?;
        let (ring, completion_signal) = completions::attach(ring, config.completion_queue)?;
        let core = Arc::new(Core {
            ring,
            completion_signal,
            shared,
            transports,
            threads_started: AtomicUsize::new(0),
            census: Census::default(),
            epoch: Instant::now(),
            poisoned: AtomicBool::new(false),
        });
        let workers = spawn_workers(&core)?;
        let progress_thread = match core.transports.wants_progress_thread() {
            true => match spawn_progress(&core, workers.len()) {
                Ok(thread) => Some(thread),
                Err(e) => {
                    core.transports.stop_workers();
                    workers.into_iter().for_each(|w| drop(w.join()));
                    return Err(e);
                }
            },
            false => None,
        };
        let fixed_bytes = Self::fixed_bytes(&config, &core);
        core.census.fixed_bytes.store(fixed_bytes, Ordering::Relaxed);
        let lists = (0..config.max_prepared_lists).map(|_| ListEntry::default()).collect();
        Ok(Engine {
            timeout: config.deadline.map(timeout_nanos),
            progress_thread,
            peers: Sharded::new(peers::PeerTable::new(config.max_peers)),
            lists: Sharded::new(lists),
            shut: false,
            config,
            core,
            workers,
        })
    }

    /// The registry and the inbox: what in-process peers and the transports reach.
    fn shared_half(config: &Config, engine_id: u64, opening: &crate::backend::Opening<'_>) -> Result<Shared> {
        let prefix = format!("ringxfer-{engine_id:016x}");
        // Segments of engines killed before they could unlink them.
        shm::sweep_dead(&shm::dir());
        let registry = Registry::new(
            config.max_registrations,
            config.max_peers,
            (config.capacity, config.max_prepared_lists, config.max_descs_per_xfer),
            prefix.clone(),
            opening.keyring(),
        )?;
        let (dir, _) = registry.segments();
        let inbox = Inbox::new(
            InboxMap::create(dir, &inbox_name(&prefix), Self::geometry(config))?,
            config.capacity,
        );
        Ok(Shared {
            name: config.name.clone(),
            engine_id,
            capacity: config.capacity,
            registry,
            inbox,
        })
    }

    fn geometry(config: &Config) -> Geometry {
        Geometry {
            lanes: config.max_peers,
            lane_capacity: config.inbox_capacity,
            max_bytes: config.max_notif_bytes,
        }
    }

    /// The slot ring, every slot's context allocated now.
    fn ring(config: &Config, first_generation: u64, transports: &Transports) -> Result<SlotRing<Transfer>> {
        let (d, m) = (config.max_descs_per_xfer, config.max_notif_bytes);
        let b = config.max_blocks_per_xfer;
        let ring = SlotRing::with_contexts_from(config.capacity, first_generation, |slot| Transfer {
            slot: slot as usize,
            op: Op::Write,
            via: Default::default(),
            peer: 0,
            count: 0,
            local: vec![Resolved::default(); d].into_boxed_slice(),
            remote: vec![Desc::new(RegionId::from_raw(0), 0, 0); d].into_boxed_slice(),
            own: vec![Resolved::default(); d].into_boxed_slice(),
            notif: vec![0; m].into_boxed_slice(),
            notif_len: None,
            blocks: false,
            shapes: vec![Shape::default(); d].into_boxed_slice(),
            local_ids: vec![0; b].into_boxed_slice(),
            remote_ids: vec![0; b].into_boxed_slice(),
            spans: vec![Desc::new(RegionId::from_raw(0), 0, 0); d].into_boxed_slice(),
        })?;
        // The slot freed last is taken again first (its lines are still in cache),
        // unless a transport relies on reuse spreading over every slot.
        Ok(if transports.allow_reuse_recent() {
            ring.reuse_recent()
        } else {
            ring
        })
    }

    /// What `new` allocated, by its largest parts: the slot contexts, the inbox, the
    /// registration table, and what each transport reports of its own.
    fn fixed_bytes(config: &Config, core: &Core) -> u64 {
        let (d, m) = (config.max_descs_per_xfer, config.max_notif_bytes);
        let per_desc =
            2 * std::mem::size_of::<Resolved>() + 2 * std::mem::size_of::<Desc>() + std::mem::size_of::<Shape>();
        let per_slot = d * per_desc + m + config.max_blocks_per_xfer * 8;
        (config.capacity * per_slot
            + Self::geometry(config).segment_bytes()
            + config.max_registrations * std::mem::size_of::<usize>() * 8
            + core.shared.registry.holds_bytes()
            + core.transports.bytes()) as u64
    }

    /// The configuration the engine was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What the engine's threads share (for the test hooks in `crate::testing`).
    #[cfg(feature = "testing")]
    pub(crate) fn core(&self) -> &Core {
        &self.core
    }

    /// The peer `peer`, taken out of the table (an `Arc`: no allocation) so the
    /// table's lock is not held while bytes move.
    #[cfg(feature = "testing")]
    pub(crate) fn peer(&self, peer: u32) -> Result<Arc<crate::peer::Peer>> {
        let peers = self.unpoison(self.peers.read());
        match peers.get(peer) {
            Some(p) => Ok(Arc::clone(p)),
            None => Err(Error::UnknownPeer { peer }),
        }
    }
}

/// Starts the worker threads the transports need (the file transport's I/O workers),
/// and returns once each is running: a thread's own start-up (the runtime names it,
/// sets up its stack guard, allocates) is over before the engine is handed out, never
/// in the middle of its first transfers.
fn spawn_workers(core: &Arc<Core>) -> Result<Vec<JoinHandle<()>>> {
    let count = core.transports.worker_threads();
    let mut workers = Vec::with_capacity(count);
    for i in 0..count {
        let worker_core = Arc::clone(core);
        match std::thread::Builder::new()
            .name(format!("ringxfer-io-{i}"))
            .spawn(move || {
                worker_core.threads_started.fetch_add(1, Ordering::Release);
                worker_core.work();
            }) {
            Ok(worker) => workers.push(worker),
            Err(e) => {
                // Undo: stop the workers already started.
                core.transports.stop_workers();
                workers.into_iter().for_each(|w| drop(w.join()));
                return Err(Error::io("starting a file I/O worker", &e));
            }
        }
    }
    wait_started(core, count, &workers);
    Ok(workers)
}

/// Waits until `count` threads of the engine said they run (a counter in the core:
/// nothing to allocate or free), or ended (panicked) first.
fn wait_started(core: &Core, count: usize, threads: &[JoinHandle<()>]) {
    while core.threads_started.load(Ordering::Acquire) < count && !threads.iter().any(JoinHandle::is_finished) {
        std::thread::yield_now();
    }
}

/// Starts the progress thread (`FabricConfig::progress_thread`), and returns once it
/// is running (as `spawn_workers`).
fn spawn_progress(core: &Arc<Core>, before: usize) -> Result<(Arc<AtomicBool>, JoinHandle<()>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let (thread_core, thread_stop) = (Arc::clone(core), Arc::clone(&stop));
    let thread = std::thread::Builder::new()
        .name(String::from("ringxfer-progress"))
        .spawn(move || {
            thread_core.threads_started.fetch_add(1, Ordering::Release);
            progress_loop(&thread_core, &thread_stop);
        })
        .map_err(|e| Error::io("starting the progress thread", &e))?;
    wait_started(core, before + 1, std::slice::from_ref(&thread));
    Ok((stop, thread))
}

/// How long the progress thread blocks in the fabric's wait descriptor at a time: it
/// looks at deadlines at least this often (shutdown wakes it at once). 1 ms cost an
/// idle thread with 1,000 transfers in flight to a stalled peer 5.0 % of a core, 10 ms
/// 0.8–1.4 % (`cargo run --release --example idle_cpu`).
const PROGRESS_BLOCK: Duration = Duration::from_millis(10);

/// The progress thread's loop: progress, and sleep a little when there is nothing
/// to do, so an idle engine costs little CPU.
fn progress_loop(core: &Core, stop: &AtomicBool) {
    let can_block = core.transports.can_block();
    let mut idle_since: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        if core.progress() > 0 {
            idle_since = None;
            continue;
        }
        // Busy for 200 µs after the last completion (a burst's next operation comes
        // within that); then sleep in the fabric's wait descriptor (which wakes on
        // the provider's own events), or, where there is none, 50 µs naps.
        let since = *idle_since.get_or_insert_with(Instant::now);
        if since.elapsed() < Duration::from_micros(200) {
            std::hint::spin_loop();
        } else if can_block {
            // Woken by the provider (data arriving), spin again: a transfer is moving,
            // and tcp moves its bytes only while someone progresses.
            let (handled, woke) = core.progress_blocking(PROGRESS_BLOCK);
            if handled > 0 || woke {
                idle_since = None;
            }
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// Returns a freed slot's resources: the regions it holds.
fn reclaim(registry: &Registry, t: &mut Transfer) {
    registry.let_go(Holder::Slot(t.slot));
    t.count = 0;
    t.blocks = false;
    t.notif_len = None;
}

/// How long an engine's drop waits for its transports to end what they hold before
/// it closes them and fails the rest with `SHUTDOWN`.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(2);

impl Engine {
    /// Shuts the engine down, as dropping it does, and returns its ledger as it stands
    /// afterwards: every transfer that was in flight has ended (done, failed, or
    /// failed with `FailCode::SHUTDOWN`) and, if the caller had released them all,
    /// nothing is held (`ring.live`, `pins`, `transport_held` all 0,
    /// `ring.acquired == ring.freed`). Handles the caller still holds count as live.
    pub fn shutdown(mut self) -> EngineStats {
        self.shut_down();
        self.stats()
    }

    /// Shutdown ends every transfer through the one exit function: the threads stop
    /// (queued file jobs run first), the transports get up to `SHUTDOWN_PATIENCE` (2 s)
    /// to end what they hold (GPU streams drained, the sim drained, the fabric's
    /// completions read), the endpoints close — after which no operation can touch
    /// anything — and whatever is still in flight then fails with
    /// `FailCode::SHUTDOWN`, its slot's resources (holds, pins in peers' tables)
    /// let go like any other transfer's. Nothing is left for the process. Runs once:
    /// `shutdown` and then the drop.
    fn shut_down(&mut self) {
        if self.shut {
            return;
        }
        self.shut = true;
        if let Some((stop, thread)) = self.progress_thread.take() {
            stop.store(true, Ordering::Relaxed);
            self.core.transports.wake();
            let _ = thread.join();
        }
        // The workers finish what is queued, then stop; only then can the files close.
        self.core.transports.stop_workers();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        // GPU copies in flight finish before device memory is freed with its region,
        // and peers in this process no longer find the engine.
        self.core.transports.quiesce();
        let core = &self.core;
        let start = Instant::now();
        loop {
            core.transports.drain(&mut |h, o| core.complete(h, o));
            core.progress();
            let mut any = false;
            core.ring.in_flight(|_| any = true);
            if !any || start.elapsed() > SHUTDOWN_PATIENCE {
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        // The endpoints close before the memory registrations (and the caller's
        // memory) go: no operation can touch them afterwards. (A metadata server
        // still serving holds the core weakly; then they close with the core, below.)
        if let Some(core) = Arc::get_mut(&mut self.core) {
            core.transports.close();
        }
        let core = &self.core;
        core.ring.in_flight(|h| {
            let _ = core.complete(h, Outcome::Failed(FailCode::SHUTDOWN));
        });
        // Debug builds say (on stderr) what the caller left: a handle never released,
        // a prepared list. Not a panic: a drop during unwinding must still clean up.
        if cfg!(debug_assertions)
            && !std::thread::panicking()
            && let Err(e) = self.check_quiescent()
        {
            eprintln!("ringxfer: engine {:?} shut down while {e}", self.config.name);
        }
        // Peers holding our shared half now find no regions: their transfers fail
        // instead of writing memory the caller may free after this.
        self.core.shared.registry.clear();
    }
}

impl Drop for Engine {
    /// Shuts the engine down (see [`Engine::shutdown`]) unless that was done already.
    fn drop(&mut self) {
        self.shut_down();
    }
}
