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
use ringxfer::ring::{HIGH_WATER_SAMPLE, Handle, Outcome, Released, SlotRing};

#[path = "support/ring_model.rs"]
mod ring_model;
use ring_model::{Slots, outcome};

struct Model {
    s: Slots,
    free: VecDeque<u32>,
    /// With `SlotRing::reuse_recent`: the slot freed last (`Some(None)` when empty).
    recent: Option<Option<u32>>,
    /// Pops from `free`: the ring samples its high-water mark on every
    /// HIGH_WATER_SAMPLE-th.
    popped: u64,
}

impl Model {
    fn new(capacity: usize, max_generation: u64, reuse_recent: bool) -> Model {
        Model {
            s: Slots::new(capacity, max_generation),
            free: (0..capacity as u32).collect(),
            recent: reuse_recent.then_some(None),
            popped: 0,
        }
    }

    /// A freed slot (and the generation it was freed at) goes into `recent` if the
    /// ring has it and the slot is not past half its generations, pushing out the
    /// slot there; else to the free list.
    fn give_back(&mut self, freed: Option<(usize, u64)>) {
        let Some((i, g)) = freed else { return };
        let out = match &mut self.recent {
            Some(recent) if g < self.s.max_generation / 2 => recent.replace(i as u32),
            _ => Some(i as u32),
        };
        self.free.extend(out);
    }

    fn acquire(&mut self) -> Result<Handle, Error> {
        let (i, sample) = match self.recent.as_mut().and_then(Option::take) {
            Some(i) => (i, false),
            None => {
                let Some(i) = self.free.pop_front() else {
                    self.s.stats.high_water = self.s.stats.high_water.max(self.s.stats.live);
                    return Err(Error::RingFull {
                        capacity: self.s.slots.len(),
                    });
                };
                self.popped += 1;
                // The ring samples its high-water mark every HIGH_WATER_SAMPLE-th pop.
                (i, (self.popped - 1).is_multiple_of(HIGH_WATER_SAMPLE))
            }
        };
        let h = self.s.take(i as usize);
        if sample {
            self.s.stats.high_water = self.s.stats.high_water.max(self.s.stats.live);
        }
        Ok(h)
    }

    fn complete(&mut self, h: Handle, o: Outcome) -> bool {
        let (ended, freed) = self.s.complete(h, o);
        self.give_back(freed);
        ended
    }

    fn release(&mut self, h: Handle) -> Result<Released, Error> {
        let (released, freed) = self.s.release(h);
        self.give_back(freed);
        released
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
                prop_assert_eq!(ring.post(h), model.s.post(h));
            }
            Op::Complete(k, o) => {
                let h = pick(&issued, k);
                prop_assert_eq!(ring.complete(h, o), model.complete(h, o));
            }
            Op::Cancel(k) => {
                let h = pick(&issued, k);
                prop_assert_eq!(ring.cancel(h), model.s.cancel(h));
            }
            Op::Release(k) => {
                let h = pick(&issued, k);
                prop_assert_eq!(ring.release(h), model.release(h));
            }
            Op::Status(k) => {
                let h = pick(&issued, k);
                prop_assert_eq!(ring.status(h), model.s.status(h));
            }
            Op::Forged(i, g) => {
                let h = Handle::new(i, g.max(1)).unwrap();
                prop_assert_eq!(ring.status(h), model.s.status(h));
                prop_assert_eq!(ring.complete(h, Outcome::Done), model.complete(h, Outcome::Done));
            }
        }
        prop_assert_eq!(ring.stats(), model.s.stats);
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
