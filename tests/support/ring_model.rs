//! The reference model the model-based ring tests (`model.rs`, `model_threads.rs`)
//! check the `SlotRing` against, written as plainly as possible: slots as
//! (generation, state) and the ring's counters, with every operation whose result
//! does not depend on which free slot an acquire picks. Where a freed slot goes
//! (a free list, a recent-slot cache) is each test's own: `free` only says whether
//! the slot can be handed out again.

#![allow(dead_code)]

use proptest::prelude::*;
use ringxfer::Error;
use ringxfer::ring::{CancelResult, FailCode, FailSource, Handle, Outcome, Released, RingStats, Status};

/// Any way a transfer ends, failures with assorted codes.
pub fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Done),
        Just(Outcome::Cancelled),
        (0u32..2000).prop_map(|v| Outcome::Failed(FailCode::new(FailSource::Errno, v))),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum St {
    Free,
    Reserved,
    Posted,
    Detached,
    Ended(Status),
    Retired,
}

pub struct Slots {
    pub slots: Vec<(u64, St)>,
    pub max_generation: u64,
    pub stats: RingStats,
}

impl Slots {
    pub fn new(capacity: usize, max_generation: u64) -> Slots {
        Slots {
            slots: vec![(1, St::Free); capacity],
            max_generation,
            stats: RingStats {
                capacity,
                ..RingStats::default()
            },
        }
    }

    /// The slot if `h` names its current generation in a live state, else the
    /// error the ring gives.
    pub fn lookup(&self, h: Handle) -> Result<usize, Error> {
        let i = h.index() as usize;
        if h.is_null() || i >= self.slots.len() {
            return Err(Error::InvalidHandle {
                handle: h,
                capacity: self.slots.len(),
            });
        }
        match self.slots[i] {
            (g, St::Reserved | St::Posted | St::Ended(_)) if g == h.generation() => Ok(i),
            _ => Err(Error::StaleHandle { handle: h }),
        }
    }

    /// Frees slot `i`: its next generation, or retired past the limit. The
    /// generation it was freed at if it can be handed out again.
    pub fn free(&mut self, i: usize) -> Option<u64> {
        let g = self.slots[i].0;
        self.stats.live -= 1;
        self.stats.freed += 1;
        if g >= self.max_generation {
            self.slots[i].1 = St::Retired;
            self.stats.retired += 1;
            return None;
        }
        self.slots[i] = (g + 1, St::Free);
        Some(g)
    }

    /// Takes free slot `i` for a new transfer; its handle.
    pub fn take(&mut self, i: usize) -> Handle {
        self.slots[i].1 = St::Reserved;
        self.stats.live += 1;
        self.stats.acquired += 1;
        Handle::new(i as u32, self.slots[i].0).unwrap()
    }

    pub fn count(&mut self, o: Outcome) {
        match o {
            Outcome::Done => self.stats.done += 1,
            Outcome::Failed(_) => self.stats.failed += 1,
            Outcome::Cancelled => self.stats.cancelled += 1,
        }
    }

    pub fn post(&mut self, h: Handle) -> Result<(), Error> {
        let i = self.lookup(h)?;
        let state = match self.slots[i].1 {
            St::Reserved => {
                self.slots[i].1 = St::Posted;
                return Ok(());
            }
            St::Posted => "posted (in flight)",
            St::Ended(Status::Done) => "done",
            St::Ended(Status::Failed(_)) => "failed",
            _ => "cancelled",
        };
        Err(Error::WrongState {
            handle: h,
            operation: "post",
            state,
        })
    }

    /// The ring's answer to a completion, and the slot it freed (a detached one,
    /// with the generation it was freed at) if that can be handed out again.
    pub fn complete(&mut self, h: Handle, o: Outcome) -> (bool, Option<(usize, u64)>) {
        let i = h.index() as usize;
        if self.slots.get(i) == Some(&(h.generation(), St::Detached)) {
            // A detached slot is invisible to its old owner but still completes.
            self.count(o);
            return (true, self.free(i).map(|g| (i, g)));
        }
        if self.lookup(h).is_err() || self.slots[i].1 != St::Posted {
            self.stats.stale_completions += 1;
            return (false, None);
        }
        self.slots[i].1 = St::Ended(match o {
            Outcome::Done => Status::Done,
            Outcome::Failed(c) => Status::Failed(c),
            Outcome::Cancelled => Status::Cancelled,
        });
        self.count(o);
        (true, None)
    }

    /// The ring's answer to a release, and the slot it freed, as `complete`.
    pub fn release(&mut self, h: Handle) -> (Result<Released, Error>, Option<(usize, u64)>) {
        let i = match self.lookup(h) {
            Ok(i) => i,
            Err(e) => return (Err(e), None),
        };
        if self.slots[i].1 == St::Posted {
            self.slots[i].1 = St::Detached;
            return (Ok(Released::Detached), None);
        }
        (Ok(Released::Freed), self.free(i).map(|g| (i, g)))
    }

    pub fn cancel(&mut self, h: Handle) -> Result<CancelResult, Error> {
        let i = self.lookup(h)?;
        Ok(match self.slots[i].1 {
            St::Reserved => {
                self.slots[i].1 = St::Ended(Status::Cancelled);
                self.stats.cancelled += 1;
                CancelResult::Cancelled
            }
            St::Posted => CancelResult::InFlight,
            _ => CancelResult::AlreadyComplete,
        })
    }

    pub fn status(&self, h: Handle) -> Result<Status, Error> {
        let i = self.lookup(h)?;
        Ok(match self.slots[i].1 {
            St::Reserved => Status::Reserved,
            St::Posted => Status::Posted,
            St::Ended(s) => s,
            _ => unreachable!("lookup admits only live states"),
        })
    }
}
