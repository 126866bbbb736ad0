//! `Completions`: the ring's completion queue, reporting the end of the transfers
//! whose owners asked for it.
//!
//! A caller with many transfers in flight asks the ring to report some of them
//! ([`SlotRing::report_completion`](super::SlotRing::report_completion)), then drains
//! [`Completion`]s (handle, final status, the caller's tag) in the order the transfers
//! ended, instead of polling each handle.
//!
//! Everything is allocated at construction. An entry is a *ticket*: an index into a
//! fixed array of entries. Two bounded queues of tickets ([`FreeList`]s) hold them:
//! `free` and `ready`.
//!
//! - Asking for a report takes a ticket from `free` at once (none left: the caller
//!   gets `CompletionQueueFull` then, before posting: back-pressure, never a dropped
//!   completion later). The ticket belongs to the transfer's slot from then on.
//! - The transfer's end (completion, expiry, or cancel before posting: the moment its
//!   owner sees a final status) writes the entry and pushes the ticket on `ready`.
//!   Each transfer ends once (the slot's state machine), so a ticket is pushed once.
//! - A transfer released before it ended gives its ticket back to `free` unreported.
//! - A poll pops tickets from `ready`, copies their entries out and gives the tickets
//!   back to `free`.
//!
//! So tickets are conserved: `free + ready + held by slots = capacity`, and `ready`
//! can never overflow.
//!
//! An entry's words are written before its ticket is pushed (the push's Release) and
//! read after it is popped (the pop's Acquire); a ticket is in at most one place at a
//! time, so no entry is written and read at once.
//!
//! **Signal.** A caller sleeping in `epoll` needs a wake-up when the queue becomes
//! non-empty. A [`Signal`] (an eventfd, in the engine) is raised by the report that
//! puts the `signalled` flag up, and cleared by every poll, *before* the poll takes
//! the flag down and drains. Every change of the flag is a read-modify-write, so the
//! changes are totally ordered and each one synchronizes with the one before it: a
//! report whose swap comes before the poll's is seen by the poll's drain (the swap
//! chain carries its push), and a report whose swap comes after finds the flag down
//! and raises the signal anew. A poll that fills the caller's buffer and leaves
//! entries behind raises the signal again. So no entry is ever left with the signal
//! down; at worst a wake-up finds nothing (a raise that lands after the poll that
//! drained its entry), and the next poll clears it. `tests/loom.rs` checks it.

use super::free_list::FreeList;
use super::state;
use super::sync::{AtomicU32, AtomicU64, Ordering, spin_loop};
use crate::types::{Handle, Status};

/// One transfer's end, from [`SlotRing::poll_completions`](super::SlotRing::poll_completions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The transfer. It is still the caller's: release it as usual.
    pub handle: Handle,
    /// Its final status: `Done`, `Failed(code)` or `Cancelled`.
    pub status: Status,
    /// The tag its owner gave when asking for the report.
    pub tag: u64,
}

impl Completion {
    /// An empty completion, to fill a caller's buffer with before a poll.
    pub const EMPTY: Completion = Completion {
        handle: Handle::from_raw(0),
        status: Status::Done,
        tag: 0,
    };
}

/// What wakes a caller waiting for completions (an eventfd in the engine).
pub trait Signal: Send + Sync {
    /// The queue has entries: make the waiter's wait object ready.
    fn raise(&self);
    /// A poll is about to drain: make the wait object not ready.
    fn clear(&self);
}

/// One ticket's entry.
struct Entry {
    handle: AtomicU64,
    /// The transfer's terminal state word (`state.rs`), its final status.
    word: AtomicU64,
    tag: AtomicU64,
}

/// The completion queue; see the module docs.
pub(crate) struct Completions {
    free: FreeList,
    ready: FreeList,
    entries: Box<[Entry]>,
    /// 1 while the signal is raised (or being raised).
    signalled: AtomicU32,
    signal: Option<Box<dyn Signal>>,
}

/// Pushes a ticket. Tickets are conserved, so each list has room for every ticket
/// not in it: a push fails only transiently (a popper between claiming its cell and
/// handing it back), as the ring's own free list.
#[inline]
fn push(list: &FreeList, ticket: u32) {
    while !list.push(ticket) {
        spin_loop();
    }
}

impl Completions {
    /// A queue of `capacity` entries (rounded up to a power of two), all free.
    pub(crate) fn new(capacity: usize, signal: Option<Box<dyn Signal>>) -> Completions {
        let capacity = capacity.max(1).next_power_of_two();
        Completions {
            free: FreeList::full(capacity),
            ready: FreeList::with_capacity(capacity),
            entries: (0..capacity)
                .map(|_| Entry {
                    handle: AtomicU64::new(0),
                    word: AtomicU64::new(0),
                    tag: AtomicU64::new(0),
                })
                .collect(),
            signalled: AtomicU32::new(0),
            signal,
        }
    }

    /// Entries in all.
    pub(crate) fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Takes a ticket for a transfer to report, with its tag; `None` when all are
    /// taken (held by transfers, or reported and not yet polled).
    #[inline]
    pub(crate) fn take(&self, tag: u64) -> Option<u32> {
        let ticket = self.free.pop()?;
        self.entries[ticket as usize].tag.store(tag, Ordering::Relaxed);
        Some(ticket)
    }

    /// Sets the tag of a ticket its owner holds.
    pub(crate) fn retag(&self, ticket: u32, tag: u64) {
        self.entries[ticket as usize].tag.store(tag, Ordering::Relaxed);
    }

    /// Gives back the ticket of a transfer released before it ended.
    #[inline]
    pub(crate) fn give_back(&self, ticket: u32) {
        push(&self.free, ticket);
    }

    /// Reports a transfer's end on its ticket: `word` is its terminal state word.
    #[inline]
    pub(crate) fn report(&self, ticket: u32, handle: Handle, word: u64) {
        let entry = &self.entries[ticket as usize];
        entry.handle.store(handle.to_raw(), Ordering::Relaxed);
        entry.word.store(word, Ordering::Relaxed);
        // Release (in the push): the poller that pops the ticket sees the entry.
        push(&self.ready, ticket);
        self.raise();
    }

    /// Puts the flag up, raising the signal if it was down. Always a
    /// read-modify-write (module docs): a load first could miss a poll's swap.
    #[inline]
    fn raise(&self) {
        if self.signalled.swap(1, Ordering::AcqRel) == 0
            && let Some(signal) = &self.signal
        {
            signal.raise();
        }
    }

    /// Moves up to `out.len()` completions into `out`, oldest first; how many.
    pub(crate) fn poll(&self, out: &mut [Completion]) -> usize {
        // Cleared before the flag comes down: a report after this raises anew.
        if let Some(signal) = &self.signal {
            signal.clear();
        }
        if self.signalled.load(Ordering::Acquire) == 1 {
            self.signalled.swap(0, Ordering::AcqRel);
        }
        let mut n = 0;
        while n < out.len() {
            let Some(ticket) = self.ready.pop() else { break };
            let entry = &self.entries[ticket as usize];
            out[n] = Completion {
                handle: Handle::from_raw(entry.handle.load(Ordering::Relaxed)),
                status: state::status(entry.word.load(Ordering::Relaxed)).unwrap_or(Status::Done),
                tag: entry.tag.load(Ordering::Relaxed),
            };
            self.give_back(ticket);
            n += 1;
        }
        if n == out.len() && !self.ready.is_empty() {
            // Entries left behind: the waiter must wake again for them.
            self.raise();
        }
        n
    }

    /// Completions waiting to be polled.
    pub(crate) fn ready(&self) -> usize {
        self.ready.len()
    }
}
