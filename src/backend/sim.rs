//! `sim`: a fault-injecting transport for tests, soaks and fuzzing.
//!
//! A peer made by `Engine::sim_peer` moves no bytes: its
//! transfers go to this transport, which ends them when progress is driven, in an
//! order and with outcomes drawn from a seeded generator (so a run is reproducible):
//!
//! - out of order, late (many progress calls later), or never until the transfer's
//!   deadline fails it for its owner (`SlotRing::expire`) — and then late anyway;
//! - with an error (`FailCode::TRANSPORT`), or all at once when the peer is "lost"
//!   (`PEER_LOST`, `Engine::sim_lose_peer`);
//! - **twice** (the second completion must be rejected), or again long after the slot
//!   was released and reused (a stale generation, which must never match);
//! - with its notification dropped, or delivered twice (the inbox must drop the copy).
//!
//! Notifications go to the engine's own inbox (a lane of its own), so a test sees
//! exactly what a receiver would. Everything is allocated when the engine is built:
//! the transport itself is allocation-free, like the real ones.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Expire, Recall, Sink, Started, Transport, TransportStats, Xfer};
use crate::error::Result;
use crate::notify::Outbox;
use crate::ring::{FailCode, Handle, Outcome};

/// Fault rates of the sim transport, in percent per decision, and its seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// Seed of the generator: the same seed and calls give the same run.
    pub seed: u64,
    /// Transfers that end FAILED (`TRANSPORT`).
    pub fail: u8,
    /// Completions delivered a second time.
    pub duplicate: u8,
    /// Transfers left alone at a progress call (so they end late and out of order).
    pub delay: u8,
    /// Transfers that stall until their deadline fails them (then end late).
    pub stall: u8,
    /// Completed handles replayed much later, after their slot was reused.
    pub replay: u8,
    /// Notifications dropped.
    pub drop_notification: u8,
    /// Notifications delivered twice.
    pub duplicate_notification: u8,
    /// Progress calls after which a posted transfer's deadline passes.
    pub deadline_ticks: u64,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            seed: 1,
            fail: 10,
            duplicate: 10,
            delay: 30,
            stall: 2,
            replay: 10,
            drop_notification: 5,
            duplicate_notification: 10,
            deadline_ticks: 64,
        }
    }
}

/// What the sim transport did, in `EngineStats::sim`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Transfers posted to it.
    pub posted: u64,
    /// Completions it delivered (first ones).
    pub completed: u64,
    /// Completions delivered a second time, or replayed after reuse.
    pub extra_completions: u64,
    /// Transfers whose deadline passed while it stalled them.
    pub expired: u64,
    /// Notifications delivered to the inbox (first copies): what a receiver must pop,
    /// each exactly once.
    pub notifications_sent: u64,
    /// Notifications dropped.
    pub notifications_dropped: u64,
    /// Notifications delivered twice.
    pub notifications_duplicated: u64,
    /// Completions matched to the wrong transfer: a transfer's first completion
    /// refused, or an extra one (duplicate, replay after reuse) taken. Always 0 unless
    /// the ring is broken: soaks and fuzzing assert it.
    pub misattributed: u64,
}

struct Pending {
    handle: Handle,
    posted_at: u64,
    stalled: bool,
    expired: bool,
    /// Its owner asked it to stop: it ends CANCELLED at the next progress.
    cancelled: bool,
    /// Length of the notification in `notes`, if any.
    notification: Option<usize>,
}

struct State {
    rng: u64,
    tick: u64,
    pending: Vec<Pending>,
    /// Completed handles kept to replay later.
    ghosts: Vec<Handle>,
    /// Per slot: the notification payload copied at post, and its length.
    notes: Box<[u8]>,
    note_lens: Box<[Option<usize>]>,
    lose_peer: bool,
}

impl State {
    fn next(&mut self) -> u64 {
        // xorshift64*: small, fast, reproducible.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn chance(&mut self, percent: u8) -> bool {
        self.next() % 100 < u64::from(percent)
    }
}

/// The sim transport of one engine.
pub(crate) struct Sim {
    config: SimConfig,
    max_notif_bytes: usize,
    state: Mutex<State>,
    /// Our lane in our own inbox (the "peer's" notifications to us), set by `sim_peer`.
    outbox: std::sync::OnceLock<Outbox>,
    posted: AtomicU64,
    completed: AtomicU64,
    extra: AtomicU64,
    expired: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    misattributed: AtomicU64,
    sent: AtomicU64,
}

const GHOSTS: usize = 64;

impl Sim {
    pub(crate) fn new(config: SimConfig, capacity: usize, max_notif_bytes: usize) -> Sim {
        let seed = config.seed | 1;
        Sim {
            config,
            max_notif_bytes,
            state: Mutex::new(State {
                rng: seed,
                tick: 0,
                pending: Vec::with_capacity(capacity),
                ghosts: Vec::with_capacity(GHOSTS),
                notes: vec![0; capacity * max_notif_bytes].into_boxed_slice(),
                note_lens: vec![None; capacity].into_boxed_slice(),
                lose_peer: false,
            }),
            outbox: std::sync::OnceLock::new(),
            posted: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            extra: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            misattributed: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        }
    }

    /// Sets the lane notifications are delivered to (once).
    pub(crate) fn set_outbox(&self, outbox: Outbox) {
        let _ = self.outbox.set(outbox);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies a posted transfer's notification (while the poster still borrows it).
    pub(crate) fn stage(&self, handle: Handle, notification: Option<&[u8]>) {
        let mut s = self.state();
        let index = handle.index() as usize;
        s.note_lens[index] = notification.map(|n| {
            let len = n.len().min(self.max_notif_bytes);
            let at = index * self.max_notif_bytes;
            s.notes[at..at + len].copy_from_slice(&n[..len]);
            len
        });
    }

    /// Takes a staged transfer (never fails: the pending list has a place per slot).
    pub(crate) fn launch(&self, handle: Handle) {
        let mut s = self.state();
        let notification = s.note_lens[handle.index() as usize];
        let stalled = s.chance(self.config.stall);
        let posted_at = s.tick;
        s.pending.push(Pending {
            handle,
            posted_at,
            stalled,
            expired: false,
            cancelled: false,
            notification,
        });
        self.posted.fetch_add(1, Ordering::Relaxed);
    }

    /// Asks that `handle` stop, if it is still pending: it ends CANCELLED (without
    /// its notification) at the next progress. A sim transfer can always be stopped.
    pub(crate) fn cancel(&self, handle: Handle) {
        let mut s = self.state();
        if let Some(p) = s.pending.iter_mut().find(|p| p.handle == handle) {
            p.cancelled = true;
        }
    }

    /// Makes every transfer in flight fail with `PEER_LOST` at the next progress.
    pub(crate) fn lose_peer(&self) {
        self.state().lose_peer = true;
    }

    /// Ends every transfer (and replays every ghost) now: for the end of a run.
    pub(crate) fn drain(&self, sink: Sink<'_>) {
        let mut s = self.state();
        while let Some(p) = s.pending.pop() {
            self.finish(&mut s, p, Outcome::Done, sink);
        }
        while let Some(g) = s.ghosts.pop() {
            self.extra_completion(g, sink);
        }
    }

    /// Delivers a completion that must be refused.
    fn extra_completion(&self, handle: Handle, sink: Sink<'_>) {
        if sink(handle, Outcome::Done) {
            self.misattributed.fetch_add(1, Ordering::Relaxed);
        }
        self.extra.fetch_add(1, Ordering::Relaxed);
    }

    /// One step: ends some transfers, replays a ghost, fails overdue ones for their
    /// owners. Returns the completions delivered.
    pub(crate) fn progress(&self, sink: Sink<'_>, expire: &dyn Fn(Handle, FailCode) -> bool) -> usize {
        let Ok(mut s) = self.state.try_lock() else { return 0 };
        s.tick += 1;
        let mut delivered = 0;
        if std::mem::take(&mut s.lose_peer) {
            while let Some(p) = s.pending.pop() {
                self.finish(&mut s, p, Outcome::Failed(FailCode::PEER_LOST), sink);
                delivered += 1;
            }
        }
        let mut i = 0;
        while i < s.pending.len() {
            if s.pending[i].cancelled {
                let p = s.pending.swap_remove(i);
                self.finish(&mut s, p, Outcome::Cancelled, sink);
                delivered += 1;
                continue;
            }
            let overdue = s.tick.saturating_sub(s.pending[i].posted_at) > self.config.deadline_ticks;
            if s.pending[i].stalled {
                if overdue && !s.pending[i].expired {
                    s.pending[i].expired = true;
                    if expire(s.pending[i].handle, FailCode::TIMEOUT) {
                        self.expired.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // A stalled transfer ends late, well past its deadline.
                if !(overdue && s.chance(5)) {
                    i += 1;
                    continue;
                }
            } else if s.chance(self.config.delay) {
                i += 1;
                continue;
            }
            // Out of order: take this one, the last moves into its place.
            let p = s.pending.swap_remove(i);
            let outcome = if s.chance(self.config.fail) {
                Outcome::Failed(FailCode::TRANSPORT)
            } else {
                Outcome::Done
            };
            self.finish(&mut s, p, outcome, sink);
            delivered += 1;
        }
        if !s.ghosts.is_empty() && s.chance(self.config.replay) {
            let at = (s.next() % s.ghosts.len() as u64) as usize;
            let ghost = s.ghosts.swap_remove(at);
            self.extra_completion(ghost, sink);
        }
        delivered
    }

    /// Delivers a transfer's end (its notification first when it is DONE), maybe
    /// twice, and maybe keeps it to replay later.
    fn finish(&self, s: &mut State, p: Pending, outcome: Outcome, sink: Sink<'_>) {
        if let (Outcome::Done, Some(len), Some(outbox)) = (outcome, p.notification, self.outbox.get()) {
            let at = p.handle.index() as usize * self.max_notif_bytes;
            let copies = if s.chance(self.config.drop_notification) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                0
            } else if s.chance(self.config.duplicate_notification) {
                self.duplicated.fetch_add(1, Ordering::Relaxed);
                2
            } else {
                1
            };
            for copy in 0..copies {
                // A full lane drops the copy here (the sim is a lossy peer); real
                // transports hold or refuse instead.
                if outbox.reserve() {
                    outbox.deliver(p.handle, &s.notes[at..at + len]);
                    if copy == 0 {
                        self.sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        if !sink(p.handle, outcome) {
            self.misattributed.fetch_add(1, Ordering::Relaxed);
        }
        self.completed.fetch_add(1, Ordering::Relaxed);
        if s.chance(self.config.duplicate) {
            self.extra_completion(p.handle, sink);
        }
        if s.ghosts.len() < GHOSTS && s.chance(self.config.replay) {
            s.ghosts.push(p.handle);
        }
    }

    /// Bytes it allocated at construction: the per-slot notification copies and the
    /// pending list.
    pub(crate) fn bytes(&self) -> usize {
        let s = self.state();
        s.notes.len() + s.pending.capacity() * std::mem::size_of::<Pending>()
    }

    pub(crate) fn stats(&self) -> SimStats {
        SimStats {
            posted: self.posted.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            extra_completions: self.extra.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            notifications_sent: self.sent.load(Ordering::Relaxed),
            notifications_dropped: self.dropped.load(Ordering::Relaxed),
            notifications_duplicated: self.duplicated.load(Ordering::Relaxed),
            misattributed: self.misattributed.load(Ordering::Relaxed),
        }
    }
}

impl Transport for Sim {
    /// Copies the notification; `launch` takes the transfer.
    fn start(&self, x: Xfer<'_>, _sink: Sink<'_>) -> Result<Started> {
        self.stage(x.handle, x.notif());
        Ok(Started::Handed(0))
    }

    fn launch(&self, handle: Handle, _word: u32, _sink: Sink<'_>) {
        Sim::launch(self, handle);
    }

    fn cancel(&self, handle: Handle) -> Recall {
        Sim::cancel(self, handle);
        Recall::Asked
    }

    fn progress(&self, sink: Sink<'_>, expire: Expire<'_>) -> usize {
        Sim::progress(self, sink, expire)
    }

    fn bytes(&self) -> usize {
        Sim::bytes(self)
    }

    fn stats(&self, stats: &mut TransportStats) {
        stats.sim = Sim::stats(self);
        stats.held += self.state().pending.len();
    }

    fn drain(&self, sink: Sink<'_>) {
        Sim::drain(self, sink);
    }
}
