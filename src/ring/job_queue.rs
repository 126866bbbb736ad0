//! `JobQueue`: posted transfers waiting for a worker, each slot queued at most once.
//!
//! A transport that runs transfers on worker threads (the file transport) hands each
//! posted slot to them through this queue. A transfer can also be taken *out of its
//! slot* instead of from the queue front ([`take`](JobQueue::take)): its waiter runs
//! it on its own thread rather than wait for a worker. That leaves the slot's queue
//! entry behind with no job in it; if the slot is reused and posted again before a
//! worker pops that entry, the entry serves the new job instead of a second entry
//! being added. So the queue never holds two entries for one slot and never fills,
//! and pushing never waits for a worker to take or finish a job.
//!
//! The queue is a bounded array queue of twice the ring's size. Its one wait: a push
//! into a cell whose previous consumer has claimed it but not yet handed it back (a
//! worker preempted between the two stores of a pop) spins until that worker runs.
//! With one entry per slot, that consumer must have stalled there while a whole
//! ring's worth of later entries was pushed and popped; the old queue (a new entry
//! per post) could block `post` whenever the workers fell behind.
//!
//! Each slot has one word: the generation of the job posted in it and not yet taken
//! (0: none), and a `QUEUED` bit that says an entry for the slot is in the queue (or
//! being popped from it). Every change to a word is one atomic read-modify-write, so
//! the poster's and the worker's changes are totally ordered:
//!
//! - push: `swap(generation | QUEUED)`; an entry is added only if `QUEUED` was clear;
//! - pop: pop an index from the queue, then `swap(0)`: the entry is gone and the job
//!   (if any) is the popper's;
//! - take: `compare_exchange(generation | QUEUED → QUEUED)`: the job is the taker's,
//!   the entry stays.
//!
//! A push that finds `QUEUED` set comes either before the popper's swap (which then
//! takes the new job) or after it (and then finds `QUEUED` clear): no job is lost and
//! none is run twice. `tests/loom.rs` checks this.

use crossbeam_utils::CachePadded;

use super::free_list::FreeList;
use super::sync::{AtomicU64, Ordering};
use crate::types::Handle;

/// The word's bit saying an entry for the slot is queued.
const QUEUED: u64 = 1 << 63;

/// What a pop found at the front of the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Popped {
    /// The queue was empty.
    Empty,
    /// An entry whose job its waiter had taken already (nothing to run).
    Taken,
    /// A job to run.
    Job(Handle),
}

/// A bounded queue of posted slots for worker threads; see the module docs.
pub struct JobQueue {
    queue: FreeList,
    /// Per slot: `generation | QUEUED` (see the module docs). Each on its own cache
    /// line: threads posting into different slots write different lines.
    words: Box<[CachePadded<AtomicU64>]>,
}

impl JobQueue {
    /// An empty queue for the slots `0..capacity` of one ring.
    pub fn new(capacity: usize) -> JobQueue {
        JobQueue {
            // Twice the entries there can be, so a push reaches a cell a stalled
            // popper still holds only after a ring's worth of entries (module docs).
            queue: FreeList::with_capacity(capacity.next_power_of_two() * 2),
            words: (0..capacity).map(|_| CachePadded::new(AtomicU64::new(0))).collect(),
        }
    }

    /// Queues the job of `handle`, whose slot holds no job now (the slot's previous
    /// job was popped or taken). Never fails; waits only in the case the module docs
    /// describe.
    #[inline]
    pub fn push(&self, handle: Handle) {
        let index = handle.index();
        // Release: the popper or taker (Acquire) sees the transfer posted in the slot.
        let old = self.words[index as usize].swap(handle.generation() | QUEUED, Ordering::AcqRel);
        debug_assert_eq!(old & !QUEUED, 0, "a slot holds one job at a time");
        if old & QUEUED == 0 {
            // No entry for the slot is queued, so there is room: one entry per slot.
            let pushed = self.queue.push(index);
            debug_assert!(pushed, "a job queue holds one entry per slot");
        }
    }

    /// Pops the front entry.
    pub fn pop(&self) -> Popped {
        let Some(index) = self.queue.pop() else {
            return Popped::Empty;
        };
        let generation = self.words[index as usize].swap(0, Ordering::AcqRel) & !QUEUED;
        match Handle::new(index, generation) {
            Some(handle) => Popped::Job(handle),
            None => Popped::Taken,
        }
    }

    /// Takes `handle`'s job out of its slot if it is still queued (its entry stays,
    /// empty, for a later pop). True if taken: the job is the caller's to run.
    #[inline]
    pub fn take(&self, handle: Handle) -> bool {
        let wanted = handle.generation() | QUEUED;
        self.words.get(handle.index() as usize).is_some_and(|w| {
            // A load first: a transfer that was never queued (another transport's)
            // costs no read-modify-write. A stale load only means the job is left to
            // a worker, which runs it as it would have anyway.
            w.load(Ordering::Relaxed) == wanted
                && w.compare_exchange(wanted, QUEUED, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
        })
    }

    /// Entries queued now, jobs and taken ones (a snapshot).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no entry is queued (a snapshot). Its reads of the queue's positions are
    /// SeqCst (see `FileQueue::submit`).
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Bytes it allocated.
    pub fn bytes(&self) -> usize {
        self.queue.capacity() * 16 + std::mem::size_of_val(&*self.words)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn h(index: u32, generation: u64) -> Handle {
        Handle::new(index, generation).unwrap()
    }

    #[test]
    fn a_taken_job_leaves_an_entry_that_serves_the_next_one() {
        let q = JobQueue::new(2);
        q.push(h(0, 1));
        assert!(q.take(h(0, 1)));
        assert!(!q.take(h(0, 1)), "taken once");
        // Reused and posted again before any pop: no second entry.
        q.push(h(0, 2));
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop(), Popped::Job(h(0, 2)));
        assert_eq!(q.pop(), Popped::Empty);
    }

    #[test]
    fn a_stale_entry_pops_as_taken_and_a_stale_take_is_refused() {
        let q = JobQueue::new(2);
        q.push(h(1, 5));
        assert!(!q.take(h(1, 4)), "another generation");
        assert!(q.take(h(1, 5)));
        assert_eq!(q.pop(), Popped::Taken);
        assert_eq!(q.pop(), Popped::Empty);
        q.push(h(1, 6));
        assert_eq!(q.len(), 1);
        assert!(!q.take(h(7, 1)), "out of range");
        assert_eq!(q.pop(), Popped::Job(h(1, 6)));
    }

    #[test]
    fn every_slot_taken_and_reposted_many_times_never_overfills() {
        let q = JobQueue::new(4);
        for generation in 1..100 {
            for index in 0..4 {
                q.push(h(index, generation));
                assert!(q.take(h(index, generation)));
            }
            assert!(q.len() <= 4);
        }
        (0..4).for_each(|_| assert_eq!(q.pop(), Popped::Taken));
        assert_eq!(q.pop(), Popped::Empty);
    }
}

/// A posted transfer's job, taken once from a [`JobQueue`] (by a worker or by the
/// transfer's waiter): whoever holds it runs the transfer and ends it, and may read
/// its context meanwhile ([`SlotRing::resume`](super::SlotRing::resume)).
#[derive(Debug)]
pub(crate) struct Job(Handle);

impl Job {
    /// A job its queue gave out: an entry popped (`Popped::Job`) or taken
    /// ([`JobQueue::take`]) by this thread, which alone holds it.
    pub(crate) fn taken(handle: Handle) -> Job {
        Job(handle)
    }

    /// The transfer it belongs to.
    pub(crate) fn handle(&self) -> Handle {
        self.0
    }
}
