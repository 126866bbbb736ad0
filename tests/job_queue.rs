//! Model-based property test of `JobQueue`: random posts, takes (current and stale
//! generations) and pops against a plain reference model — a FIFO of slot indices and
//! per slot the job posted and whether an entry for it is queued. Every result and the
//! queue's length must agree, and the queue never holds more entries than slots.
//!
//! The concurrent protocol (a pop racing a take or a push) is checked by loom in
//! `tests/loom.rs`; this checks the sequential behaviour over long runs.

use std::collections::VecDeque;

use proptest::prelude::*;
use ringxfer::ring::{Handle, JobQueue, Popped};

const SLOTS: usize = 4;

#[derive(Debug, Clone, Copy)]
enum Op {
    /// Post the slot's next transfer (skipped if its job is still waiting).
    Post(usize),
    /// Its waiter takes the slot's current job.
    Take(usize),
    /// A take with the generation before the current one.
    TakeStale(usize),
    /// A worker pops.
    Pop,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..SLOTS).prop_map(Op::Post),
        2 => (0..SLOTS).prop_map(Op::Take),
        1 => (0..SLOTS).prop_map(Op::TakeStale),
        3 => Just(Op::Pop),
    ]
}

#[derive(Default)]
struct Model {
    fifo: VecDeque<usize>,
    queued: [bool; SLOTS],
    /// The job waiting in each slot (its generation), if any.
    job: [Option<u64>; SLOTS],
    /// Each slot's last posted generation.
    generation: [u64; SLOTS],
}

fn h(slot: usize, generation: u64) -> Handle {
    Handle::new(slot as u32, generation).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_queue_matches_the_model(ops in proptest::collection::vec(op(), 1..400)) {
        let q = JobQueue::new(SLOTS);
        let mut m = Model::default();
        for op in ops {
            match op {
                Op::Post(s) => {
                    if m.job[s].is_some() {
                        continue; // a slot holds one transfer at a time
                    }
                    m.generation[s] += 1;
                    q.push(h(s, m.generation[s]));
                    m.job[s] = Some(m.generation[s]);
                    if !m.queued[s] {
                        m.fifo.push_back(s);
                        m.queued[s] = true;
                    }
                }
                Op::Take(s) => {
                    if m.generation[s] == 0 {
                        continue;
                    }
                    let expected = m.job[s] == Some(m.generation[s]);
                    prop_assert_eq!(q.take(h(s, m.generation[s])), expected, "take {}", s);
                    if expected {
                        m.job[s] = None;
                    }
                }
                Op::TakeStale(s) => {
                    if m.generation[s] < 2 {
                        continue;
                    }
                    prop_assert!(!q.take(h(s, m.generation[s] - 1)), "a stale take of {} succeeded", s);
                }
                Op::Pop => {
                    let expected = match m.fifo.pop_front() {
                        None => Popped::Empty,
                        Some(s) => {
                            m.queued[s] = false;
                            match m.job[s].take() {
                                Some(g) => Popped::Job(h(s, g)),
                                None => Popped::Taken,
                            }
                        }
                    };
                    prop_assert_eq!(q.pop(), expected);
                }
            }
            prop_assert_eq!(q.len(), m.fifo.len());
            prop_assert!(q.len() <= SLOTS);
        }
    }
}
