//! `SlotRing`: fixed request slots, a free list, and the state machine between them.

// Unsafe code: the slot contexts (`UnsafeCell`) and the `Send`/`Sync` of the ring (the crate root denies it elsewhere).
#![allow(unsafe_code)]

use crossbeam_utils::CachePadded;

use super::completions::{Completion, Completions, Signal};
use super::free_list::FreeList;
use super::job_queue::Job;
use super::state::{self, CANCELLED, DETACHED, DONE, FAILED, FREE, POSTED, RESERVED, RETIRED};
use super::sync::{AtomicU32, AtomicU64, Ordering, UnsafeCell, home, spin_loop};
use crate::error::{Error, Result};
use crate::types::{
    CancelResult, FIRST_GENERATION, FailCode, Handle, INDEX_BITS, MAX_CAPACITY, MAX_GENERATION, Outcome, Released,
    Status,
};

/// The high-water mark is sampled on every `HIGH_WATER_SAMPLE`-th acquire from the
/// free list (and on every `RingFull`); acquires served by the recent-slot cache
/// ([`SlotRing::reuse_recent`]) do not sample, as they never raise the number of slots
/// held above what it was before that slot was freed. So the mark may read up to
/// `HIGH_WATER_SAMPLE − 1` below the true peak but reaches the full capacity whenever
/// the ring was ever full.
pub const HIGH_WATER_SAMPLE: u64 = 8;

/// One request slot: its state word, its completion counters and its context.
struct Slot<C> {
    /// `generation << 20 | fail_code << 3 | state`; see `state.rs`.
    word: AtomicU64,
    /// Completions this slot has seen, by outcome. Only the winner of a completion
    /// CAS adds to them, in the slot's own cache line, so they cost no shared traffic.
    done: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    /// Times this slot was handed out from `recent` (the free list counts its own).
    /// Added to only by the thread that took the slot, before it publishes RESERVED:
    /// a load and a store, no read-modify-write (see `take_recent`).
    reused: AtomicU64,
    /// When the posted transfer's deadline passes, in the caller's clock
    /// ([`arm_deadline`](SlotRing::arm_deadline)); 0: none (yet). Zeroed by `post`
    /// before the transfer reads POSTED, so a reader that sees POSTED never reads a
    /// deadline of an earlier generation.
    deadline: AtomicU64,
    /// A timeout chosen for one prepared transfer ([`set_timeout`](SlotRing::set_timeout)),
    /// valid only for the handle in `timeout_for`: no reset is needed when the slot
    /// is reused.
    timeout: AtomicU64,
    timeout_for: AtomicU64,
    /// The handle whose end goes to the completion queue
    /// ([`report_completion`](SlotRing::report_completion)), on ticket `ticket`;
    /// keyed by the full handle as `timeout_for` is.
    report_for: AtomicU64,
    ticket: AtomicU32,
    /// Written only by the slot's owner while it is RESERVED (see `SlotRing`).
    context: UnsafeCell<C>,
}

/// The ring's counters, read by [`SlotRing::stats`].
///
/// A snapshot: exact when no operation runs concurrently, and always consistent with
/// `live = acquired − freed`, `freed = released + detached completions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingStats {
    /// The fixed number of slots.
    pub capacity: usize,
    /// Slots held by a transfer now (reserved, posted, detached or ended but not released).
    pub live: usize,
    /// The most slots held at once since construction, sampled every
    /// [`HIGH_WATER_SAMPLE`]-th acquire and on every `RingFull`: at most
    /// `HIGH_WATER_SAMPLE − 1` below the true peak, and equal to the capacity (less
    /// retired slots) once the ring has been full.
    pub high_water: usize,
    /// Successful acquires since construction.
    pub acquired: u64,
    /// Slots returned to service (or retired) since construction.
    pub freed: u64,
    /// Transfers completed DONE.
    pub done: u64,
    /// Transfers completed FAILED.
    pub failed: u64,
    /// Transfers CANCELLED (by the transport's proof, or before they were posted).
    pub cancelled: u64,
    /// Completions rejected because the handle's transfer had already ended, been
    /// released, or never existed: duplicates, late arrivals, stale generations.
    pub stale_completions: u64,
    /// Slots taken out of service for good at their last generation.
    pub retired: u64,
}

/// A fixed-capacity ring of request slots with generation-counted handles.
///
/// All memory (slots, contexts, the free list) is allocated by [`SlotRing::new`];
/// no other method allocates. Every method takes `&self` and is safe to call from
/// any number of threads: each state transition is one compare-and-swap on the slot's
/// word, which carries the generation, so an operation with a stale handle always
/// fails and never touches the slot's current transfer.
///
/// The life of a slot (handle generation `g`):
///
/// ```text
/// FREE(g) --acquire--> RESERVED(g) --post--> POSTED(g) --complete--> DONE | FAILED(code) | CANCELLED
/// RESERVED(g) --release--> FREE(g+1)          RESERVED(g) --cancel--> CANCELLED(g)
/// DONE | FAILED | CANCELLED --release--> FREE(g+1)
/// POSTED(g) --release--> DETACHED(g) --complete--> FREE(g+1)
/// POSTED(g) --unpost--> RESERVED(g)   (the poster only, before a transport saw it)
/// at the last generation, FREE(g+1) is RETIRED(g) instead: never reissued
/// ```
///
/// `C` is the per-slot transfer context (descriptors, notification buffer, …),
/// preallocated once per slot and reused by every transfer that takes the slot.
///
/// ```
/// use ringxfer::ring::{Outcome, Released, SlotRing, Status};
///
/// let ring: SlotRing<[u64; 8]> = SlotRing::new(4)?;
/// let h = ring.acquire_with(|ctx| ctx[0] = 42)?;
/// ring.post(h)?;
/// assert!(ring.complete(h, Outcome::Done)); // the transport reports
/// assert!(!ring.complete(h, Outcome::Done)); // a duplicate loses
/// assert_eq!(ring.status(h)?, Status::Done);
/// assert_eq!(ring.release(h)?, Released::Freed);
/// assert!(ring.status(h).is_err()); // the handle is dead now
/// assert_eq!(ring.stats().stale_completions, 1);
/// # Ok::<(), ringxfer::Error>(())
/// ```
pub struct SlotRing<C> {
    slots: Box<[CachePadded<Slot<C>>]>,
    free: FreeList,
    /// With [`reuse_recent`](SlotRing::reuse_recent): [`RECENT_CELLS`] cells, one per
    /// thread (by [`home`], threads beyond the cells sharing them), each holding the
    /// index of the slot its threads freed last, or [`NO_SLOT`]; handed out to them
    /// before the free list's. An index in a cell belongs to the cell, as an index in
    /// the free list belongs to the list: a swap moves it out whole, so two acquirers
    /// never get the same slot. Each cell on its own cache line: a thread doing one
    /// transfer at a time touches no line another thread writes.
    recent: Option<Box<[CachePadded<AtomicU64>; RECENT_CELLS]>>,
    max_generation: u64,
    high_water: CachePadded<AtomicU64>,
    /// Rare paths only: stale completions and retirements.
    stale_completions: AtomicU64,
    retired: AtomicU64,
    /// The completion queue, if the ring has one ([`with_completions`](SlotRing::with_completions)).
    completions: Option<Completions>,
}

// SAFETY: a slot's context is reached only through `acquire_with` (by the thread that
// popped the slot's index, before any handle to it exists) and the `unsafe` accessors,
// whose callers promise the exclusive or shared access those need. Moving the ring to
// another thread moves the contexts with it, so `C: Send` suffices.
unsafe impl<C: Send> Send for SlotRing<C> {}
// SAFETY: as above; sharing the ring lets several threads reach contexts, one owner
// writing (`C: Send`) and possibly several reading through `context` (`C: Sync`).
unsafe impl<C: Send + Sync> Sync for SlotRing<C> {}

/// A `SlotRing::recent` cell that holds no slot.
const NO_SLOT: u64 = u64::MAX;

/// Cells of `SlotRing::recent` (a power of two): threads get their own up to this
/// many, then share. Under loom, as many as its models have threads.
#[cfg(not(loom))]
pub(crate) const RECENT_CELLS: usize = 16;
#[cfg(loom)]
pub(crate) const RECENT_CELLS: usize = 4;

impl<C: Default> SlotRing<C> {
    /// A ring of `capacity` slots (a power of two, 1 ..= 2^20), every context
    /// `C::default()`.
    pub fn new(capacity: usize) -> Result<SlotRing<C>> {
        SlotRing::with_contexts(capacity, |_| C::default())
    }

    /// As [`new`](SlotRing::new), but slots retire after generation `max_generation`
    /// instead of 2^44 − 1. For tests of retirement, which would otherwise need 2^44
    /// transfers per slot.
    pub fn with_generation_limit(capacity: usize, max_generation: u64) -> Result<SlotRing<C>> {
        let mut ring = SlotRing::new(capacity)?;
        ring.max_generation = max_generation.clamp(FIRST_GENERATION, MAX_GENERATION);
        Ok(ring)
    }
}

impl<C> SlotRing<C> {
    /// A ring of `capacity` slots whose contexts are built by `make(index)`, once each.
    pub fn with_contexts(capacity: usize, make: impl FnMut(u32) -> C) -> Result<SlotRing<C>> {
        SlotRing::with_contexts_from(capacity, FIRST_GENERATION, make)
    }

    /// As [`with_contexts`](SlotRing::with_contexts), with every slot starting at
    /// generation `first_generation` (clamped to 1 ..= 2^43) instead of 1.
    ///
    /// An engine starts its ring at a random generation so that a handle of another
    /// engine (a caller's mix-up) names a generation this ring's slots will not reach
    /// for trillions of transfers, and is refused as stale instead of matching one of
    /// its transfers. Retirement still happens only at 2^44 − 1.
    pub fn with_contexts_from(
        capacity: usize,
        first_generation: u64,
        mut make: impl FnMut(u32) -> C,
    ) -> Result<SlotRing<C>> {
        let first_generation = first_generation.clamp(FIRST_GENERATION, 1 << (crate::types::GENERATION_BITS - 1));
        if !capacity.is_power_of_two() || capacity > MAX_CAPACITY {
            return Err(Error::InvalidCapacity {
                requested: capacity,
                max: MAX_CAPACITY,
            });
        }
        let slots = (0..capacity as u32)
            .map(|index| {
                CachePadded::new(Slot {
                    word: AtomicU64::new(state::pack(first_generation, 0, FREE)),
                    done: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                    cancelled: AtomicU64::new(0),
                    reused: AtomicU64::new(0),
                    deadline: AtomicU64::new(0),
                    timeout: AtomicU64::new(0),
                    timeout_for: AtomicU64::new(0),
                    report_for: AtomicU64::new(0),
                    ticket: AtomicU32::new(0),
                    context: UnsafeCell::new(make(index)),
                })
            })
            .collect();
        Ok(SlotRing {
            slots,
            free: FreeList::full(capacity),
            recent: None,
            max_generation: MAX_GENERATION,
            high_water: CachePadded::new(AtomicU64::new(0)),
            stale_completions: AtomicU64::new(0),
            retired: AtomicU64::new(0),
            completions: None,
        })
    }

    /// Gives the ring a completion queue of `entries` entries (rounded up to a power
    /// of two), allocated now, raising `signal` when it becomes non-empty: see
    /// [`report_completion`](SlotRing::report_completion).
    pub fn with_completions(mut self, entries: usize, signal: Option<Box<dyn Signal>>) -> SlotRing<C> {
        self.completions = Some(Completions::new(entries, signal));
        self
    }

    /// Makes the ring hand out the slot freed last before any from its free list.
    ///
    /// A thread that posts and releases one transfer at a time then keeps reusing one
    /// slot, whose state word and context are still in its caches, instead of cycling
    /// through all of them (measured: 64 KiB file writes went from 0.84× to 0.88× a
    /// plain `pwrite` loop).
    ///
    /// The price is that generations no longer spread evenly: that slot's generation
    /// climbs with every transfer, where the free list alone would spread them over all
    /// N slots. No handle is ever issued twice either way, and a slot past half its
    /// generations is no longer cached (it goes on at the free list's pace), so the
    /// cache does not retire slots early. But a transport that
    /// carries truncated generations on the wire (the fabric's immediate data: 32 or
    /// as few as 12 bits) relies on the spread to keep a late completion from aliasing
    /// a newer transfer, so the engine turns this on only without the fabric.
    ///
    /// Each thread has its own such slot (up to 16 threads; more share them), so
    /// posting threads do not hand slots to each other through one shared word. A slot sitting in the cell of a thread that exited, or that does nothing
    /// now, is not lost: an acquire that finds the free list empty takes one from any
    /// cell before it answers `RingFull`, and a thread later given that cell takes it
    /// first.
    pub fn reuse_recent(mut self) -> SlotRing<C> {
        self.recent = Some(Box::new(std::array::from_fn(|_| {
            CachePadded::new(AtomicU64::new(NO_SLOT))
        })));
        self
    }

    /// The fixed number of slots.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Takes a free slot: FREE(g) → RESERVED(g). Fails at once with
    /// [`Error::RingFull`] when every slot is taken.
    #[inline]
    pub fn acquire(&self) -> Result<Handle> {
        self.acquire_with(|_| {})
    }

    /// Takes a free slot and lets `init` fill its context before the handle exists,
    /// so no other thread can see the context half-written. If `init` panics the slot
    /// is released, not lost.
    pub fn acquire_with(&self, init: impl FnOnce(&mut C)) -> Result<Handle> {
        self.acquire_try(|context| {
            init(context);
            Ok(())
        })
    }

    /// As [`acquire_with`](SlotRing::acquire_with), but `init` may fail: then the slot
    /// is released at once (at the same generation: its handle never escaped) and `init`'s error returned. `init`
    /// must undo whatever it did to the context before failing.
    #[inline]
    pub fn acquire_try<E: From<Error>>(&self, init: impl FnOnce(&mut C) -> Result<(), E>) -> Result<Handle, E> {
        let (index, sample) = match self.take_recent() {
            Some(index) => (index, false),
            None => match self.free.pop_at() {
                Some((index, position)) => (index, position.is_multiple_of(HIGH_WATER_SAMPLE)),
                None => match self.take_any_recent() {
                    Some(index) => (index, false),
                    None => {
                        self.note_high_water();
                        return Err(Error::RingFull {
                            capacity: self.capacity(),
                        }
                        .into());
                    }
                },
            },
        };
        let slot = &self.slots[index as usize];
        let word = slot.word.load(Ordering::Acquire);
        debug_assert_eq!(state::state(word), FREE, "the free list holds only FREE slots");
        let generation = state::generation(word);
        // In range by construction: index < capacity ≤ 2^20, 1 ≤ generation ≤ the limit.
        let handle = Handle::from_raw(generation << INDEX_BITS | index as u64);
        debug_assert_eq!(Handle::new(index, generation), Some(handle));

        // The slot stays FREE while `init` runs: no handle to it exists yet, and one
        // forged with its generation finds it FREE and is refused, so nothing else can
        // reach the context. If `init` fails or unwinds, the index goes back to the free
        // list at the same generation (the handle never escaped, so none is burnt).
        struct Unwind<'a, C>(&'a SlotRing<C>, u32);
        impl<C> Drop for Unwind<'_, C> {
            fn drop(&mut self) {
                self.0.push_free(self.1);
            }
        }
        let guard = Unwind(self, index);
        let result = slot.context.with_mut(|context| {
            // SAFETY: this thread popped the index and the slot is still FREE (above),
            // so this thread alone can reach its context.
            init(unsafe { &mut *context })
        });
        core::mem::forget(guard);
        if let Err(e) = result {
            self.push_free(index);
            return Err(e);
        }
        // Nobody else CASes a FREE word (every transition out of FREE starts here, and
        // only the thread that popped the index gets here), so a store suffices. Release:
        // whoever later sees RESERVED (a poster on another thread) sees the context.
        slot.word.store(state::pack(generation, 0, RESERVED), Ordering::Release);
        if sample {
            self.note_high_water();
        }
        Ok(handle)
    }

    /// RESERVED(g) → POSTED(g): the transfer is handed to a transport, and from now on
    /// only [`complete`](SlotRing::complete) ends it.
    #[inline]
    pub fn post(&self, handle: Handle) -> Result<()> {
        let slot = self.slot(handle)?;
        let word = slot.word.load(Ordering::Acquire);
        self.check_generation(handle, word)?;
        if state::state(word) != RESERVED {
            return Err(self.wrong_state(handle, word, "post"));
        }
        // Before POSTED is published: a reader that sees POSTED reads this or later.
        slot.deadline.store(0, Ordering::Relaxed);
        match slot.word.compare_exchange(
            word,
            state::pack(handle.generation(), 0, POSTED),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Ok(()),
            Err(current) => {
                self.check_generation(handle, current)?;
                Err(self.wrong_state(handle, current, "post"))
            }
        }
    }

    /// POSTED(g) → RESERVED(g): takes back a post that no transport has seen (the poster
    /// found it could not go on, e.g. the peer's inbox was full). Only the thread whose
    /// [`post`](SlotRing::post) succeeded may call it, before handing the transfer to a
    /// transport. Returns `true` if the transfer is prepared again; `false` if its owner
    /// released it meanwhile (it was detached), in which case it has been completed
    /// CANCELLED and its slot freed, `reclaim` running first.
    pub fn unpost_with(&self, handle: Handle, reclaim: impl FnOnce(&mut C)) -> bool {
        let Ok(slot) = self.slot(handle) else { return false };
        let posted = state::pack(handle.generation(), 0, POSTED);
        match slot.word.compare_exchange(
            posted,
            state::pack(handle.generation(), 0, RESERVED),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => true,
            Err(current) => {
                debug_assert_eq!(
                    current,
                    state::pack(handle.generation(), 0, DETACHED),
                    "only detach races a poster"
                );
                self.complete_with(handle, Outcome::Cancelled, reclaim);
                false
            }
        }
    }

    /// The context of a transfer this thread posted and has not completed.
    ///
    /// # Safety
    /// This thread's [`post`](SlotRing::post) of `handle` succeeded, and it has not
    /// completed or unposted it since: then the slot cannot be freed (a release only
    /// detaches it), so its context is not rewritten while the reference lives. The
    /// reference must be dropped before that completion.
    pub unsafe fn posted_context(&self, handle: Handle) -> &C {
        let slot = &self.slots[handle.index() as usize];
        debug_assert!(matches!(
            state::state(slot.word.load(Ordering::Relaxed)),
            POSTED | DETACHED
        ));
        // SAFETY: the caller's promise above.
        slot.context.with(|context| unsafe { &*context })
    }

    /// RESERVED(g) → POSTED(g), as [`post`](SlotRing::post), for a poster that reads
    /// the transfer's context before handing it to a transport: the [`Posted`] token
    /// grants that read for as long as it lives.
    #[inline]
    pub(crate) fn start(&self, handle: Handle) -> Result<Posted<'_, C>> {
        self.post(handle)?;
        Ok(Posted { ring: self, handle })
    }

    /// The context of a transfer whose job was taken from a job queue: its taker is
    /// the one that ends it, so until then the context is stable.
    #[inline]
    pub(crate) fn resume(&self, job: Job) -> Posted<'_, C> {
        Posted {
            ring: self,
            handle: job.handle(),
        }
    }

    /// The one way a posted transfer ends: POSTED(g) → DONE | FAILED(code) | CANCELLED,
    /// or DETACHED(g) → FREE(g+1) when the owner has already released it.
    ///
    /// Returns `true` if this call won. A duplicate, late or stale completion — the
    /// transfer already ended, was released and reused, never was posted, or the
    /// handle is forged — returns `false`, changes nothing and is counted in
    /// [`RingStats::stale_completions`].
    pub fn complete(&self, handle: Handle, outcome: Outcome) -> bool {
        self.complete_with(handle, outcome, |_| {})
    }

    /// As [`complete`](SlotRing::complete); if this call also frees the slot (the
    /// transfer was detached), `reclaim` runs first on the context, with exclusive
    /// access, so the transfer's resources are returned before the slot is reused.
    #[inline]
    pub fn complete_with(&self, handle: Handle, outcome: Outcome, reclaim: impl FnOnce(&mut C)) -> bool {
        let Ok(slot) = self.slot(handle) else {
            return self.reject_completion();
        };
        let mut word = slot.word.load(Ordering::Acquire);
        loop {
            if state::generation(word) != handle.generation() {
                return self.reject_completion();
            }
            let detached = match state::state(word) {
                POSTED => false,
                DETACHED => true,
                _ => return self.reject_completion(),
            };
            let expired = state::code(word);
            let next = if detached {
                self.free_word(handle.generation())
            } else if expired != 0 {
                // Failed for its owner already (`expire`): that failure stands.
                state::pack(handle.generation(), expired, FAILED)
            } else {
                state::terminal_word(outcome, handle.generation())
            };
            match slot
                .word
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let counter = match outcome {
                        _ if expired != 0 => &slot.failed,
                        Outcome::Done => &slot.done,
                        Outcome::Failed(_) => &slot.failed,
                        Outcome::Cancelled => &slot.cancelled,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    // An expired transfer was reported when it expired.
                    if expired == 0 {
                        match detached {
                            true => self.unreport(slot, handle),
                            false => self.report(slot, handle, next),
                        }
                    }
                    if detached {
                        self.recycle(handle.index(), next, reclaim);
                    }
                    return true;
                }
                Err(current) => word = current,
            }
        }
    }

    /// Fails a posted transfer for its owner while its transport still holds it: a
    /// deadline passed, or its peer is lost, and the transport cannot take the
    /// operation back. From now on [`status`](SlotRing::status) reports
    /// `Failed(code)` and [`cancel`](SlotRing::cancel) says it already ended;
    /// [`release`](SlotRing::release) detaches it (the slot is still the
    /// transport's). Only the transport's own [`complete`](SlotRing::complete) frees
    /// the slot, and whatever it reports then, the transfer's outcome stays `code`.
    ///
    /// False (nothing changed) if the handle is not posted, or already expired.
    pub fn expire(&self, handle: Handle, code: FailCode) -> bool {
        let Ok(slot) = self.slot(handle) else { return false };
        let bits = code.to_bits();
        debug_assert!(bits != 0, "an expiry needs a non-zero failure code");
        let posted = state::pack(handle.generation(), 0, POSTED);
        let expired = slot
            .word
            .compare_exchange(
                posted,
                state::pack(handle.generation(), bits.max(1), POSTED),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if expired {
            // Its owner sees the failure from now on: that is its end.
            self.report(
                slot,
                handle,
                state::terminal_word(Outcome::Failed(code), handle.generation()),
            );
        }
        expired
    }

    /// Sets the deadline of a transfer its poster just posted and has not handed on:
    /// `at` in the caller's clock (nanoseconds, never 0). Only the poster calls it,
    /// before anything can end the transfer.
    #[inline]
    pub(crate) fn arm_deadline(&self, handle: Handle, at: u64) {
        if let Ok(slot) = self.slot(handle) {
            slot.deadline.store(at.max(1), Ordering::Release);
        }
    }

    /// Fails `handle` for its owner with `TIMEOUT` if it is in flight and its
    /// deadline is at or before `now()` (read only when it has one); true if this
    /// call expired it. The transport still holds the slot ([`expire`](SlotRing::expire)).
    #[inline]
    pub(crate) fn expire_if_due(&self, handle: Handle, now: impl FnOnce() -> u64) -> bool {
        let Ok(slot) = self.slot(handle) else { return false };
        let at = slot.deadline.load(Ordering::Acquire);
        // A deadline of another generation fails the generation check in `expire`.
        at != 0 && at <= now() && self.expire(handle, FailCode::TIMEOUT)
    }

    /// Chooses how long the prepared transfer `handle` may stay in flight once posted
    /// (`None`: no deadline), instead of the engine's default. Its owner only.
    pub(crate) fn set_timeout(&self, handle: Handle, nanos: Option<u64>) -> Result<()> {
        let slot = self.reserved(handle, "set the deadline of")?;
        // u64::MAX: no deadline (a timeout that long never passes anyway).
        slot.timeout.store(nanos.unwrap_or(u64::MAX), Ordering::Relaxed);
        slot.timeout_for.store(handle.to_raw(), Ordering::Release);
        Ok(())
    }

    /// The timeout [`set_timeout`](SlotRing::set_timeout) chose for `handle`, if
    /// any (`Some(None)`: no deadline at all).
    #[inline]
    pub(crate) fn timeout_of(&self, handle: Handle) -> Option<Option<u64>> {
        let slot = self.slot(handle).ok()?;
        if slot.timeout_for.load(Ordering::Acquire) != handle.to_raw() {
            return None;
        }
        Some(match slot.timeout.load(Ordering::Relaxed) {
            u64::MAX => None,
            t => Some(t),
        })
    }

    /// Asks for the end of the prepared transfer `handle` in the completion queue,
    /// with `tag`: once it ends (done, failed, expired, or cancelled) a
    /// [`Completion`] waits in [`poll_completions`](SlotRing::poll_completions),
    /// exactly once. Its entry is taken now, so a full queue refuses here
    /// (`CompletionQueueFull`: back-pressure before posting) and never drops a
    /// completion later. Asking again changes the tag. A transfer released before it
    /// ends gives its entry back unreported. Its owner only.
    pub fn report_completion(&self, handle: Handle, tag: u64) -> Result<()> {
        let Some(completions) = &self.completions else {
            return Err(Error::CompletionQueueFull { capacity: 0 });
        };
        let slot = self.reserved(handle, "report the completion of")?;
        if slot.report_for.load(Ordering::Relaxed) == handle.to_raw() {
            completions.retag(slot.ticket.load(Ordering::Relaxed), tag);
            return Ok(());
        }
        let ticket = completions.take(tag).ok_or(Error::CompletionQueueFull {
            capacity: completions.capacity(),
        })?;
        slot.ticket.store(ticket, Ordering::Relaxed);
        // Release: whoever ends the transfer (after its POSTED, or the owner's cancel)
        // reads the ticket.
        slot.report_for.store(handle.to_raw(), Ordering::Release);
        Ok(())
    }

    /// Moves up to `out.len()` completions into `out`, in the order the transfers
    /// ended; how many. Each handle is still its owner's to release.
    #[inline]
    pub fn poll_completions(&self, out: &mut [Completion]) -> usize {
        self.completions.as_ref().map_or(0, |c| c.poll(out))
    }

    /// Completions waiting to be polled.
    pub fn completions_ready(&self) -> usize {
        self.completions.as_ref().map_or(0, Completions::ready)
    }

    /// Reports the end of `handle` (its owner reads the terminal state `word` from
    /// now on) if its owner asked for it.
    #[inline]
    fn report(&self, slot: &Slot<C>, handle: Handle, word: u64) {
        if let Some(completions) = &self.completions
            && slot.report_for.load(Ordering::Acquire) == handle.to_raw()
        {
            completions.report(slot.ticket.load(Ordering::Relaxed), handle, word);
        }
    }

    /// Gives back the entry of `handle`, released before it ended, if it had one.
    #[inline]
    fn unreport(&self, slot: &Slot<C>, handle: Handle) {
        if let Some(completions) = &self.completions
            && slot.report_for.load(Ordering::Acquire) == handle.to_raw()
        {
            completions.give_back(slot.ticket.load(Ordering::Relaxed));
        }
    }

    /// Gives the handle up. A RESERVED or ended transfer frees its slot at once
    /// ([`Released::Freed`]); an in-flight one is detached ([`Released::Detached`]) and
    /// its completion frees the slot. Either way the handle is dead afterwards: using
    /// it again (a double release included) is [`Error::StaleHandle`].
    pub fn release(&self, handle: Handle) -> Result<Released> {
        self.release_with(handle, |_| {})
    }

    /// As [`release`](SlotRing::release); if this call frees the slot, `reclaim` runs
    /// first on the context, with exclusive access (see
    /// [`complete_with`](SlotRing::complete_with)).
    #[inline]
    pub fn release_with(&self, handle: Handle, reclaim: impl FnOnce(&mut C)) -> Result<Released> {
        let slot = self.slot(handle)?;
        let mut word = slot.word.load(Ordering::Acquire);
        loop {
            self.check_generation(handle, word)?;
            let (next, released) = match state::state(word) {
                RESERVED | DONE | FAILED | CANCELLED => (self.free_word(handle.generation()), Released::Freed),
                // An expiry's code stays, so the completion counts the outcome the
                // owner saw.
                POSTED => (
                    state::pack(handle.generation(), state::code(word), DETACHED),
                    Released::Detached,
                ),
                _ => return Err(Error::StaleHandle { handle }),
            };
            match slot
                .word
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if state::state(word) == RESERVED {
                        // Released before it was posted: it never ends.
                        self.unreport(slot, handle);
                    }
                    if released == Released::Freed {
                        self.recycle(handle.index(), next, reclaim);
                    }
                    return Ok(released);
                }
                Err(current) => word = current,
            }
        }
    }

    /// Cancels a transfer: one never posted becomes CANCELLED at once; one in flight
    /// is left to the transport ([`CancelResult::InFlight`]), whose proof of
    /// cancellation (or real completion) ends it through [`complete`](SlotRing::complete).
    pub fn cancel(&self, handle: Handle) -> Result<CancelResult> {
        let slot = self.slot(handle)?;
        let mut word = slot.word.load(Ordering::Acquire);
        loop {
            self.check_generation(handle, word)?;
            match state::state(word) {
                POSTED if state::code(word) != 0 => return Ok(CancelResult::AlreadyComplete),
                POSTED => return Ok(CancelResult::InFlight),
                DONE | FAILED | CANCELLED => return Ok(CancelResult::AlreadyComplete),
                RESERVED => {}
                _ => return Err(Error::StaleHandle { handle }),
            }
            let next = state::pack(handle.generation(), 0, CANCELLED);
            match slot
                .word
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    slot.cancelled.fetch_add(1, Ordering::Relaxed);
                    self.report(slot, handle, next);
                    return Ok(CancelResult::Cancelled);
                }
                Err(current) => word = current,
            }
        }
    }

    /// Where the transfer is. A released handle is [`Error::StaleHandle`].
    #[inline]
    pub fn status(&self, handle: Handle) -> Result<Status> {
        let word = self.slot(handle)?.word.load(Ordering::Acquire);
        self.check_generation(handle, word)?;
        // A match, not `ok_or`: the error is built only on the path that returns it
        // (an eager `ok_or` costs the hot path about ten instructions per call).
        match state::status(word) {
            Some(status) => Ok(status),
            None => Err(Error::StaleHandle { handle }),
        }
    }

    /// The context of a RESERVED transfer, for its owner to fill in.
    ///
    /// # Safety
    /// The caller owns `handle` (it acquired it, or was handed it) and no other
    /// reference to this slot's context is alive or created while the returned one
    /// is: in particular the handle is not posted, released or cancelled meanwhile.
    #[allow(
        clippy::mut_from_ref,
        reason = "the slot's context is an UnsafeCell; exclusivity is the caller's promise"
    )]
    pub unsafe fn context_mut(&self, handle: Handle) -> Result<&mut C> {
        let slot = self.slot(handle)?;
        let word = slot.word.load(Ordering::Acquire);
        self.check_generation(handle, word)?;
        if state::state(word) != RESERVED {
            return Err(self.wrong_state(handle, word, "modify"));
        }
        // SAFETY: the caller promises exclusive access to a RESERVED slot it owns.
        Ok(slot.context.with_mut(|context| unsafe { &mut *context }))
    }

    /// The context of a live transfer (reserved, posted or ended, not released).
    ///
    /// # Safety
    /// The handle is not released (so the slot cannot be reacquired and rewritten)
    /// and [`context_mut`](SlotRing::context_mut) is not used on it while the returned
    /// reference is alive.
    pub unsafe fn context(&self, handle: Handle) -> Result<&C> {
        let slot = self.slot(handle)?;
        self.status(handle)?;
        // SAFETY: the caller promises the slot stays owned and unmodified meanwhile.
        Ok(slot.context.with(|context| unsafe { &*context }))
    }

    /// The ring's counters (a snapshot; see [`RingStats`]).
    pub fn stats(&self) -> RingStats {
        let (mut done, mut failed, mut cancelled, mut reused) = (0, 0, 0, 0);
        for slot in self.slots.iter() {
            reused += slot.reused.load(Ordering::Relaxed);
            done += slot.done.load(Ordering::Relaxed);
            failed += slot.failed.load(Ordering::Relaxed);
            cancelled += slot.cancelled.load(Ordering::Relaxed);
        }
        let retired = self.retired.load(Ordering::Relaxed);
        let acquired = self.free.popped() + reused;
        // Counted from where the indices went, not derived from `acquired`, so an index
        // freed twice shows as `freed > acquired`: every free went to the free list or
        // into `recent`; of those into `recent`, each was since taken (`reused`), is
        // still there, or was pushed out to the free list (and counted there).
        let freed = (self.free.pushed() - self.capacity() as u64) + reused + self.cached() + retired;
        RingStats {
            capacity: self.capacity(),
            live: acquired.saturating_sub(freed) as usize,
            high_water: self.high_water.load(Ordering::Relaxed) as usize,
            acquired,
            freed,
            done,
            failed,
            cancelled,
            stale_completions: self.stale_completions.load(Ordering::Relaxed),
            retired,
        }
    }

    /// Calls `f` with the handle of every transfer in flight now (posted and not yet
    /// ended, released or not): engine shutdown ends those its transports never will.
    pub(crate) fn in_flight(&self, mut f: impl FnMut(Handle)) {
        for (index, slot) in self.slots.iter().enumerate() {
            let word = slot.word.load(Ordering::Acquire);
            // Expired ones too (a code in the word): their transport still holds them.
            if matches!(state::state(word), POSTED | DETACHED) {
                f(Handle::from_raw(state::generation(word) << INDEX_BITS | index as u64));
            }
        }
    }

    /// The slot a handle names, or `InvalidHandle` for null and out-of-range indices.
    #[inline]
    fn slot(&self, handle: Handle) -> Result<&Slot<C>> {
        match self.slots.get(handle.index() as usize) {
            Some(slot) if !handle.is_null() => Ok(slot),
            _ => Err(Error::InvalidHandle {
                handle,
                capacity: self.capacity(),
            }),
        }
    }

    /// The slot of `handle`, a transfer prepared and not yet posted, for its owner
    /// to set something on before `post` (`operation` names it in the error).
    fn reserved(&self, handle: Handle, operation: &'static str) -> Result<&Slot<C>> {
        let slot = self.slot(handle)?;
        let word = slot.word.load(Ordering::Acquire);
        self.check_generation(handle, word)?;
        match state::state(word) {
            RESERVED => Ok(slot),
            _ => Err(self.wrong_state(handle, word, operation)),
        }
    }

    #[inline]
    fn check_generation(&self, handle: Handle, word: u64) -> Result<()> {
        if state::generation(word) == handle.generation() {
            Ok(())
        } else {
            Err(Error::StaleHandle { handle })
        }
    }

    fn wrong_state(&self, handle: Handle, word: u64, operation: &'static str) -> Error {
        match state::state(word) {
            FREE | DETACHED | RETIRED => Error::StaleHandle { handle },
            s => Error::WrongState {
                handle,
                operation,
                state: state::state_name(s),
            },
        }
    }

    #[cold]
    fn reject_completion(&self) -> bool {
        self.stale_completions.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// The word a slot released at `generation` gets: FREE at the next generation,
    /// or RETIRED if `generation` was its last.
    #[inline]
    fn free_word(&self, generation: u64) -> u64 {
        if generation >= self.max_generation {
            state::pack(generation, 0, RETIRED)
        } else {
            state::pack(generation + 1, 0, FREE)
        }
    }

    /// Returns a popped index to the free list.
    fn push_free(&self, index: u32) {
        // The list has room for every index and this one was popped, so `push` can only
        // fail transiently (a consumer between claiming its cell and handing it back).
        while !self.free.push(index) {
            spin_loop();
        }
    }

    /// Puts a slot whose word just became `word` back into service, after `reclaim`
    /// has returned its transfer's resources.
    #[inline]
    fn recycle(&self, index: u32, word: u64, reclaim: impl FnOnce(&mut C)) {
        self.slots[index as usize].context.with_mut(|context| {
            // SAFETY: this thread just won the CAS that made the slot FREE (or
            // RETIRED) and has not pushed its index yet: no handle reaches it and no
            // acquirer can pop it, so this thread alone can touch its context.
            reclaim(unsafe { &mut *context })
        });
        if state::state(word) == RETIRED {
            self.retired.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // The CAS that freed this slot was won once, so it is given back once.
        self.give_back(index, state::generation(word));
    }

    /// The calling thread's cell of `recent`, if the ring has them.
    #[inline]
    fn own_cell(&self) -> Option<&AtomicU64> {
        let cells = self.recent.as_deref()?;
        Some(&cells[home() & (RECENT_CELLS - 1)])
    }

    /// Takes the index in the calling thread's cell of `recent`, if it holds one.
    #[inline]
    fn take_recent(&self) -> Option<u32> {
        self.take_from(self.own_cell()?)
    }

    /// Takes an index from any cell of `recent` (the free list is empty: slots
    /// cached by other threads, or by threads gone, are served before `RingFull`).
    #[cold]
    fn take_any_recent(&self) -> Option<u32> {
        self.recent.as_deref()?.iter().find_map(|cell| self.take_from(cell))
    }

    /// Takes the index in `cell`, if it holds one.
    #[inline]
    fn take_from(&self, cell: &AtomicU64) -> Option<u32> {
        // A load first: when the cell is empty (the free list's turn) it costs no
        // read-modify-write.
        if cell.load(Ordering::Relaxed) == NO_SLOT {
            return None;
        }
        // Acquire: pairs with `give_back`'s swap, after the slot was made FREE and its
        // context reclaimed.
        let index = cell.swap(NO_SLOT, Ordering::AcqRel);
        if index == NO_SLOT {
            return None;
        }
        // This thread alone holds the slot until it publishes RESERVED, and whoever
        // held it before handed it on through the word and the cell (release, then
        // acquire): no other thread writes this counter meanwhile, so a load and a
        // store count exactly.
        let reused = &self.slots[index as usize].reused;
        reused.store(reused.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        Some(index as u32)
    }

    /// Gives back a slot made FREE at `generation`: into the calling thread's cell of
    /// `recent` (pushing out the one there to the free list), or straight to the free
    /// list. A slot past half its generations goes to the free list only: from then
    /// on it is reused at the list's pace, so the cache does not make the slots it
    /// favoured retire long before the rest.
    #[inline]
    fn give_back(&self, index: u32, generation: u64) {
        let index = match self.own_cell() {
            Some(cell) if generation <= self.max_generation / 2 => {
                match cell.swap(u64::from(index), Ordering::AcqRel) {
                    NO_SLOT => return,
                    out => out as u32,
                }
            }
            _ => index,
        };
        self.push_free(index);
    }

    /// Slots held in the cells of `recent` (a snapshot).
    fn cached(&self) -> u64 {
        self.recent.as_deref().map_or(0, |cells| {
            cells.iter().filter(|c| c.load(Ordering::Relaxed) != NO_SLOT).count() as u64
        })
    }

    /// Slots not held by anyone: in the free list, in `recent`, or retired (a snapshot).
    fn out_of_service(&self) -> u64 {
        self.free.len() as u64 + self.cached() + self.retired.load(Ordering::Relaxed)
    }

    /// Raises the high-water mark to the number of slots held now. Reading that
    /// number touches the free list's tail, a cache line the releasing threads write,
    /// so acquires sample it (see [`HIGH_WATER_SAMPLE`]) rather than pay for it every time.
    #[cold]
    fn note_high_water(&self) {
        let live = (self.capacity() as u64).saturating_sub(self.out_of_service());
        if live > self.high_water.load(Ordering::Relaxed) {
            self.high_water.fetch_max(live, Ordering::Relaxed);
        }
    }
}

impl<C> core::fmt::Debug for SlotRing<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SlotRing").field("stats", &self.stats()).finish()
    }
}

/// Leave to read the context of a posted transfer: made by [`SlotRing::start`] (the
/// poster, before it hands the transfer to a transport) and by [`SlotRing::resume`]
/// (the one thread that took the transfer's [`Job`]).
///
/// While it lives nothing ends the transfer: only the holder hands the handle on (to
/// a transport, a job queue or its own exit call), and does so after dropping the
/// token, so no completion can free the slot and rewrite the context under it.
pub(crate) struct Posted<'a, C> {
    ring: &'a SlotRing<C>,
    handle: Handle,
}

impl<C> Posted<'_, C> {
    /// The transfer's context.
    #[inline]
    pub(crate) fn context(&self) -> &C {
        // SAFETY: the token exists only for a transfer this thread posted
        // (`SlotRing::start`) or whose job it took (`SlotRing::resume`), and its handle
        // reaches nothing that could end the transfer until the token is dropped (see
        // the type's docs): the slot stays POSTED or DETACHED, so it is not freed and
        // its context is not written meanwhile.
        unsafe { self.ring.posted_context(self.handle) }
    }

    /// Gives the leave up (every reference to the context ends here: using one
    /// afterwards does not compile) and returns the handle, to hand on.
    #[inline]
    pub(crate) fn hand_on(self) -> Handle {
        self.handle
    }
}
