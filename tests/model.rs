//! Model-based property test: random operation sequences run against the `SlotRing`
//! and against a plain single-threaded reference model; every result and every
//! counter must agree.
//!
//! The model is written as simply as possible — a vector of (generation, state) and a
//! `VecDeque` free list — so it is easy to check by reading. Small capacities and a
//! small generation limit make full rings, slot reuse and retirement common.

use std::collections::VecDeque;

use proptest::prelude::*;
use ringxfer::Error;
use ringxfer::ring::{
    CancelResult, FailCode, FailSource, HIGH_WATER_SAMPLE, Handle, Outcome, Released, RingStats, SlotRing, Status,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Free,
    Reserved,
    Posted,
    Detached,
    Ended(Status),
    Retired,
}

struct Model {
    slots: Vec<(u64, St)>,
    free: VecDeque<u32>,
    /// With `SlotRing::reuse_recent`: the slot freed last (`Some(None)` when empty).
    recent: Option<Option<u32>>,
    /// Pops from `free`: the ring samples its high-water mark on every
    /// HIGH_WATER_SAMPLE-th.
    popped: u64,
    max_generation: u64,
    stats: RingStats,
}

impl Model {
    fn new(capacity: usize, max_generation: u64, reuse_recent: bool) -> Model {
        Model {
            slots: vec![(1, St::Free); capacity],
            free: (0..capacity as u32).collect(),
            recent: reuse_recent.then_some(None),
            popped: 0,
            max_generation,
            stats: RingStats {
                capacity,
                ..RingStats::default()
            },
        }
    }

    /// The slot if `h` names its current generation, else the error the ring gives.
    fn lookup(&self, h: Handle) -> Result<usize, Error> {
        let i = h.index() as usize;
        if h.is_null() || i >= self.slots.len() {
            return Err(Error::InvalidHandle {
                handle: h,
                capacity: self.slots.len(),
            });
        }
        match self.slots[i] {
            (g, St::Free | St::Detached | St::Retired) if g == h.generation() => Err(Error::StaleHandle { handle: h }),
            (g, _) if g == h.generation() => Ok(i),
            _ => Err(Error::StaleHandle { handle: h }),
        }
    }

    fn free_slot(&mut self, i: usize) {
        let g = self.slots[i].0;
        self.stats.live -= 1;
        self.stats.freed += 1;
        if g >= self.max_generation {
            self.slots[i].1 = St::Retired;
            self.stats.retired += 1;
        } else {
            self.slots[i] = (g + 1, St::Free);
            // Into `recent` if the ring has it (and the slot is not past half its
            // generations), pushing out the slot there.
            let out = match &mut self.recent {
                Some(recent) if g < self.max_generation / 2 => recent.replace(i as u32),
                _ => Some(i as u32),
            };
            self.free.extend(out);
        }
    }

    fn count(&mut self, o: Outcome) {
        match o {
            Outcome::Done => self.stats.done += 1,
            Outcome::Failed(_) => self.stats.failed += 1,
            Outcome::Cancelled => self.stats.cancelled += 1,
        }
    }

    fn acquire(&mut self) -> Result<Handle, Error> {
        let (i, sample) = match self.recent.as_mut().and_then(Option::take) {
            Some(i) => (i, false),
            None => {
                let Some(i) = self.free.pop_front() else {
                    self.stats.high_water = self.stats.high_water.max(self.stats.live);
                    return Err(Error::RingFull {
                        capacity: self.slots.len(),
                    });
                };
                self.popped += 1;
                // The ring samples its high-water mark every HIGH_WATER_SAMPLE-th pop.
                (i, (self.popped - 1).is_multiple_of(HIGH_WATER_SAMPLE))
            }
        };
        self.slots[i as usize].1 = St::Reserved;
        self.stats.live += 1;
        if sample {
            self.stats.high_water = self.stats.high_water.max(self.stats.live);
        }
        self.stats.acquired += 1;
        Ok(Handle::new(i, self.slots[i as usize].0).unwrap())
    }

    fn post(&mut self, h: Handle) -> Result<(), Error> {
        let i = self.lookup(h)?;
        match self.slots[i].1 {
            St::Reserved => {
                self.slots[i].1 = St::Posted;
                Ok(())
            }
            St::Posted => Err(Error::WrongState {
                handle: h,
                operation: "post",
                state: "posted (in flight)",
            }),
            St::Ended(s) => Err(Error::WrongState {
                handle: h,
                operation: "post",
                state: match s {
                    Status::Done => "done",
                    Status::Failed(_) => "failed",
                    _ => "cancelled",
                },
            }),
            _ => unreachable!(),
        }
    }

    fn complete(&mut self, h: Handle, o: Outcome) -> bool {
        let i = match self.lookup(h) {
            Ok(i) => i,
            // A detached slot is invisible to its old owner but still completes.
            Err(_) if self.slots.get(h.index() as usize) == Some(&(h.generation(), St::Detached)) => {
                self.count(o);
                self.free_slot(h.index() as usize);
                return true;
            }
            Err(_) => {
                self.stats.stale_completions += 1;
                return false;
            }
        };
        if self.slots[i].1 != St::Posted {
            self.stats.stale_completions += 1;
            return false;
        }
        self.slots[i].1 = St::Ended(match o {
            Outcome::Done => Status::Done,
            Outcome::Failed(c) => Status::Failed(c),
            Outcome::Cancelled => Status::Cancelled,
        });
        self.count(o);
        true
    }

    fn release(&mut self, h: Handle) -> Result<Released, Error> {
        let i = self.lookup(h)?;
        if self.slots[i].1 == St::Posted {
            self.slots[i].1 = St::Detached;
            return Ok(Released::Detached);
        }
        self.free_slot(i);
        Ok(Released::Freed)
    }

    fn cancel(&mut self, h: Handle) -> Result<CancelResult, Error> {
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

    fn status(&self, h: Handle) -> Result<Status, Error> {
        let i = self.lookup(h)?;
        Ok(match self.slots[i].1 {
            St::Reserved => Status::Reserved,
            St::Posted => Status::Posted,
            St::Ended(s) => s,
            _ => unreachable!(),
        })
    }
}

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    Post(usize),
    Complete(usize, Outcome),
    Cancel(usize),
    Release(usize),
    Status(usize),
    /// A handle nobody was given: random index (possibly out of range) and generation.
    Forged(u32, u64),
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Done),
        Just(Outcome::Cancelled),
        (0u32..2000).prop_map(|v| Outcome::Failed(FailCode::new(FailSource::Errno, v))),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    // `usize` picks among handles issued so far (modulo), old ones included.
    prop_oneof![
        4 => Just(Op::Acquire),
        3 => any::<usize>().prop_map(Op::Post),
        3 => (any::<usize>(), outcome()).prop_map(|(h, o)| Op::Complete(h, o)),
        1 => any::<usize>().prop_map(Op::Cancel),
        3 => any::<usize>().prop_map(Op::Release),
        1 => any::<usize>().prop_map(Op::Status),
        1 => (0u32..10, 0u64..8).prop_map(|(i, g)| Op::Forged(i, g)),
    ]
}

fn run(capacity: usize, max_generation: u64, reuse_recent: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let ring: SlotRing<u8> = SlotRing::with_generation_limit(capacity, max_generation).unwrap();
    let ring = if reuse_recent { ring.reuse_recent() } else { ring };
    let mut model = Model::new(capacity, max_generation, reuse_recent);
    let mut issued: Vec<Handle> = Vec::new();
    let pick = |issued: &Vec<Handle>, k: usize| {
        if issued.is_empty() {
            Handle::NULL
        } else {
            issued[k % issued.len()]
        }
    };
    for op in ops {
        match *op {
            Op::Acquire => {
                let got = ring.acquire();
                prop_assert_eq!(&got, &model.acquire());
                if let Ok(h) = got {
                    prop_assert!(!issued.contains(&h), "handle {} issued twice", h);
                    issued.push(h);
                }
            }
            Op::Post(k) => {
                let h = pick(&issued, k);
                prop_assert_eq!(ring.post(h), model.post(h));
            }
            Op::Complete(k, o) => {
                let h = pick(&issued, k);
                prop_assert_eq!(ring.complete(h, o), model.complete(h, o));
            }
            Op::Cancel(k) => {
                let h = pick(&issued, k);
                prop_assert_eq!(ring.cancel(h), model.cancel(h));
            }
            Op::Release(k) => {
                let h = pick(&issued, k);
                prop_assert_eq!(ring.release(h), model.release(h));
            }
            Op::Status(k) => {
                let h = pick(&issued, k);
                prop_assert_eq!(ring.status(h), model.status(h));
            }
            Op::Forged(i, g) => {
                let h = Handle::new(i, g.max(1)).unwrap();
                prop_assert_eq!(ring.status(h), model.status(h));
                prop_assert_eq!(ring.complete(h, Outcome::Done), model.complete(h, Outcome::Done));
            }
        }
        prop_assert_eq!(ring.stats(), model.stats);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn ring_agrees_with_the_model(
        capacity in prop_oneof![Just(1usize), Just(2), Just(4), Just(8)],
        max_generation in prop_oneof![1u64..8, Just(1000)],
        reuse_recent in any::<bool>(),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        run(capacity, max_generation, reuse_recent, &ops)?;
    }
}
