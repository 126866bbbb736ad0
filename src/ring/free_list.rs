//! `FreeList`: a bounded lock-free FIFO of slot indices.
//!
//! Dmitry Vyukov's bounded MPMC queue: every cell has a sequence number that says
//! whose turn the cell is (a producer's at lap `pos`, a consumer's at `pos + 1`), and
//! head and tail are 64-bit positions that never wrap in practice (2^64 operations).
//! Head and tail sit on separate cache lines so producers and consumers do not share
//! one. The value is an `AtomicU32` published by the cell's sequence store (Release)
//! and read after its sequence load (Acquire), so the queue needs no `unsafe` at all.
//!
//! FIFO order matters to the ring: a freed slot goes to the back, so reuse cycles
//! through all N slots and generations grow N times slower than with a LIFO stack.
//! (A ring with its recent-slot cache on, `SlotRing::reuse_recent`, trades that away
//! for the slot it reuses; the engine turns the cache on only without the fabric.)

use crossbeam_utils::CachePadded;

use super::sync::{AtomicU32, AtomicU64, Ordering, fence, spin_loop};

struct Cell {
    /// `pos` when the cell is free for the producer at position `pos`; `pos + 1` when
    /// it holds the value for the consumer at position `pos`.
    sequence: AtomicU64,
    value: AtomicU32,
}

/// A bounded, lock-free, multi-producer multi-consumer FIFO of `u32` indices.
///
/// Capacity is fixed at construction (a power of two) and all memory is allocated
/// then; [`push`](FreeList::push) and [`pop`](FreeList::pop) never allocate.
pub struct FreeList {
    head: CachePadded<AtomicU64>,
    tail: CachePadded<AtomicU64>,
    cells: Box<[Cell]>,
    mask: u64,
}

impl FreeList {
    /// An empty list for `capacity` values. `capacity` must be a power of two ≥ 1.
    pub fn with_capacity(capacity: usize) -> FreeList {
        assert!(capacity.is_power_of_two(), "free list capacity must be a power of two");
        let cells = (0..capacity as u64)
            .map(|pos| Cell {
                sequence: AtomicU64::new(pos),
                value: AtomicU32::new(0),
            })
            .collect();
        FreeList {
            head: CachePadded::new(AtomicU64::new(0)),
            tail: CachePadded::new(AtomicU64::new(0)),
            cells,
            mask: capacity as u64 - 1,
        }
    }

    /// A full list holding `0..capacity` in order.
    pub fn full(capacity: usize) -> FreeList {
        let list = FreeList::with_capacity(capacity);
        for index in 0..capacity as u32 {
            let pushed = list.push(index);
            debug_assert!(pushed, "a new list has room for its capacity");
        }
        list
    }

    /// How many values the list can hold.
    pub fn capacity(&self) -> usize {
        self.cells.len()
    }

    /// Appends `value`. Returns `false`, changing nothing, if the list is full.
    pub fn push(&self, value: u32) -> bool {
        let mut pos = self.tail.load(Ordering::Acquire);
        loop {
            let cell = &self.cells[(pos & self.mask) as usize];
            let sequence = cell.sequence.load(Ordering::Acquire);
            if sequence == pos {
                // The cell is free for lap `pos`: claim the position.
                match self
                    .tail
                    .compare_exchange_weak(pos, pos + 1, Ordering::SeqCst, Ordering::Acquire)
                {
                    Ok(_) => {
                        cell.value.store(value, Ordering::Relaxed);
                        cell.sequence.store(pos + 1, Ordering::Release);
                        return true;
                    }
                    Err(current) => pos = current,
                }
            } else if sequence < pos {
                // The cell still holds a value from the previous lap: full, unless a
                // consumer has claimed it and is about to hand it back.
                fence(Ordering::SeqCst);
                if self.head.load(Ordering::Acquire) + self.capacity() as u64 == pos {
                    return false;
                }
                spin_loop();
                pos = self.tail.load(Ordering::Acquire);
            } else {
                // Another producer took `pos`; move on.
                pos = self.tail.load(Ordering::Acquire);
            }
        }
    }

    /// Removes the oldest value, or returns `None` if the list is empty.
    pub fn pop(&self) -> Option<u32> {
        self.pop_at().map(|(value, _)| value)
    }

    /// As [`pop`](FreeList::pop), also returning the position the value was taken
    /// from (the number of pops before this one).
    pub(crate) fn pop_at(&self) -> Option<(u32, u64)> {
        let mut pos = self.head.load(Ordering::Acquire);
        loop {
            let cell = &self.cells[(pos & self.mask) as usize];
            let sequence = cell.sequence.load(Ordering::Acquire);
            if sequence == pos + 1 {
                match self
                    .head
                    .compare_exchange_weak(pos, pos + 1, Ordering::SeqCst, Ordering::Acquire)
                {
                    Ok(_) => {
                        let value = cell.value.load(Ordering::Relaxed);
                        cell.sequence.store(pos + self.mask + 1, Ordering::Release);
                        return Some((value, pos));
                    }
                    Err(current) => pos = current,
                }
            } else if sequence < pos + 1 {
                // Nothing published here yet: empty, unless a producer has claimed the
                // cell and is about to publish (then wait for it, as crossbeam does,
                // rather than report a false "empty").
                fence(Ordering::SeqCst);
                if self.tail.load(Ordering::Acquire) == pos {
                    return None;
                }
                spin_loop();
                pos = self.head.load(Ordering::Acquire);
            } else {
                pos = self.head.load(Ordering::Acquire);
            }
        }
    }

    /// Values pushed since construction (the tail position).
    pub fn pushed(&self) -> u64 {
        // SeqCst (a plain load on x86): a job queue's emptiness check pairs with its
        // pushes' SeqCst tail CAS (`FileQueue::submit`).
        self.tail.load(Ordering::SeqCst)
    }

    /// Values popped since construction (the head position).
    pub fn popped(&self) -> u64 {
        self.head.load(Ordering::SeqCst)
    }

    /// How many values the list holds now. A snapshot: exact only when no push or
    /// pop runs concurrently.
    pub fn len(&self) -> usize {
        let popped = self.popped();
        self.pushed().saturating_sub(popped) as usize
    }

    /// Whether the list holds no value (a snapshot, as [`len`](FreeList::len)).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fifo_order_and_bounds() {
        let list = FreeList::with_capacity(4);
        assert_eq!(list.pop(), None);
        for v in 10..14 {
            assert!(list.push(v));
        }
        assert!(!list.push(99), "a full list refuses");
        assert_eq!(list.len(), 4);
        assert_eq!(list.pop(), Some(10));
        assert!(list.push(14));
        assert_eq!(
            (list.pop(), list.pop(), list.pop(), list.pop()),
            (Some(11), Some(12), Some(13), Some(14))
        );
        assert_eq!(list.pop(), None);
        assert!(list.is_empty());
    }

    #[test]
    fn full_list_starts_in_index_order() {
        let list = FreeList::full(8);
        assert_eq!(
            (0..8).map(|_| list.pop().unwrap()).collect::<Vec<_>>(),
            (0..8).collect::<Vec<_>>()
        );
    }

    #[test]
    fn many_threads_lose_and_duplicate_nothing() {
        const CAP: usize = 64;
        const ROUNDS: usize = 20_000;
        let list = FreeList::full(CAP);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..ROUNDS {
                        if let Some(v) = list.pop() {
                            assert!(list.push(v));
                        }
                    }
                });
            }
        });
        let mut seen: Vec<u32> = (0..CAP).map(|_| list.pop().unwrap()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..CAP as u32).collect::<Vec<_>>());
        assert_eq!(list.pop(), None);
    }
}
