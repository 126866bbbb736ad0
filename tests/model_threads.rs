//! Model-based property test of the ring's per-thread recent-slot cells: random
//! operation sequences, each operation run on one of several real threads (which may
//! exit, holding a cached slot, and be replaced), against a reference model.
//!
//! Which free slot an acquire gets depends on the thread's cell, so the model does not
//! predict the index; it checks what a caller relies on: the handle names a slot the
//! model has free at that generation, `RingFull` comes only when no slot is free (slots
//! cached by other threads, or by threads that exited, are served first: capacity is
//! never lost), every other result is exactly the model's, and so is every counter but
//! the sampled high-water mark. The operations run one at a time, so the model stays
//! sequential; `tests/loom.rs` checks the same cells under real interleavings.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use proptest::prelude::*;
use ringxfer::Error;
use ringxfer::ring::{CancelResult, Handle, Outcome, Released, RingStats, SlotRing, Status};

#[path = "support/ring_model.rs"]
mod ring_model;
use ring_model::{Slots, St, outcome};

/// The shared reference model, and the most transfers it ever held at once.
struct Model {
    s: Slots,
    most_live: usize,
}

impl Model {
    /// Checks the ring's answer to an acquire and takes the slot it gave.
    fn acquired(&mut self, got: &Result<Handle, Error>) -> Result<(), TestCaseError> {
        match got {
            Ok(h) => {
                let i = h.index() as usize;
                prop_assert!(i < self.s.slots.len(), "{} out of range", h);
                prop_assert_eq!(
                    self.s.slots[i],
                    (h.generation(), St::Free),
                    "{} is not a free slot at its generation",
                    h
                );
                prop_assert_eq!(self.s.take(i), *h);
                self.most_live = self.most_live.max(self.s.stats.live);
            }
            Err(Error::RingFull { capacity }) => {
                prop_assert_eq!(*capacity, self.s.slots.len());
                let free = self.s.slots.iter().filter(|s| s.1 == St::Free).count();
                prop_assert_eq!(free, 0, "RingFull with {} slots free (cached by some thread?)", free);
            }
            Err(e) => prop_assert!(false, "acquire failed with {e:?}"),
        }
        Ok(())
    }
}

type Ring = Arc<SlotRing<u8>>;
type Job = Box<dyn FnOnce(&SlotRing<u8>) -> Reply + Send>;

#[derive(Debug, PartialEq)]
enum Reply {
    Acquire(Result<Handle, Error>),
    Post(Result<(), Error>),
    Complete(bool),
    Cancel(Result<CancelResult, Error>),
    Release(Result<Released, Error>),
    Status(Result<Status, Error>),
}

/// A thread that runs the jobs it is sent on the ring, one at a time; dropping it
/// ends the thread (whatever its cell holds stays there).
struct Worker {
    jobs: Option<Sender<Job>>,
    replies: Receiver<Reply>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn new(ring: &Ring) -> Worker {
        let (jobs, inbox) = channel::<Job>();
        let (outbox, replies) = channel();
        let ring = Arc::clone(ring);
        let thread = std::thread::spawn(move || {
            for job in inbox {
                if outbox.send(job(&ring)).is_err() {
                    return;
                }
            }
        });
        Worker {
            jobs: Some(jobs),
            replies,
            thread: Some(thread),
        }
    }

    fn run(&self, job: Job) -> Reply {
        self.jobs.as_ref().unwrap().send(job).expect("worker alive");
        self.replies.recv().expect("worker replied")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
    /// The thread exits (its cached slot stays in its cell) and a new one replaces it.
    Respawn,
}

fn op() -> impl Strategy<Value = Op> {
    // `usize` picks among handles issued so far (modulo), old ones included.
    prop_oneof![
        5 => Just(Op::Acquire),
        3 => any::<usize>().prop_map(Op::Post),
        3 => (any::<usize>(), outcome()).prop_map(|(h, o)| Op::Complete(h, o)),
        1 => any::<usize>().prop_map(Op::Cancel),
        4 => any::<usize>().prop_map(Op::Release),
        1 => any::<usize>().prop_map(Op::Status),
        1 => Just(Op::Respawn),
    ]
}

fn run(capacity: usize, max_generation: u64, threads: usize, ops: &[(usize, Op)]) -> Result<(), TestCaseError> {
    let ring: Ring = Arc::new(
        SlotRing::with_generation_limit(capacity, max_generation)
            .unwrap()
            .reuse_recent(),
    );
    let mut workers: Vec<Worker> = (0..threads).map(|_| Worker::new(&ring)).collect();
    let mut model = Model {
        s: Slots::new(capacity, max_generation),
        most_live: 0,
    };
    let mut issued: Vec<Handle> = Vec::new();
    let pick = |issued: &Vec<Handle>, k: usize| {
        if issued.is_empty() {
            Handle::NULL
        } else {
            issued[k % issued.len()]
        }
    };
    for (t, op) in ops {
        let t = t % threads;
        let on = |job: Job| workers[t].run(job);
        match *op {
            Op::Acquire => {
                let Reply::Acquire(got) = on(Box::new(|r| Reply::Acquire(r.acquire()))) else {
                    unreachable!()
                };
                model.acquired(&got)?;
                if let Ok(h) = got {
                    prop_assert!(!issued.contains(&h), "handle {} issued twice", h);
                    issued.push(h);
                }
            }
            Op::Post(k) => {
                let h = pick(&issued, k);
                prop_assert_eq!(
                    on(Box::new(move |r| Reply::Post(r.post(h)))),
                    Reply::Post(model.s.post(h))
                );
            }
            Op::Complete(k, o) => {
                let h = pick(&issued, k);
                prop_assert_eq!(
                    on(Box::new(move |r| Reply::Complete(r.complete(h, o)))),
                    Reply::Complete(model.s.complete(h, o).0)
                );
            }
            Op::Cancel(k) => {
                let h = pick(&issued, k);
                prop_assert_eq!(
                    on(Box::new(move |r| Reply::Cancel(r.cancel(h)))),
                    Reply::Cancel(model.s.cancel(h))
                );
            }
            Op::Release(k) => {
                let h = pick(&issued, k);
                prop_assert_eq!(
                    on(Box::new(move |r| Reply::Release(r.release(h)))),
                    Reply::Release(model.s.release(h).0)
                );
            }
            Op::Status(k) => {
                let h = pick(&issued, k);
                prop_assert_eq!(
                    on(Box::new(move |r| Reply::Status(r.status(h)))),
                    Reply::Status(model.s.status(h))
                );
            }
            Op::Respawn => workers[t] = Worker::new(&ring),
        }
        let stats = ring.stats();
        prop_assert!(
            stats.high_water <= model.most_live,
            "high water {} above the most ever live, {}",
            stats.high_water,
            model.most_live
        );
        prop_assert_eq!(RingStats { high_water: 0, ..stats }, model.s.stats);
    }
    // Capacity is never lost: once everything is given back, a new thread gets every
    // slot that has not retired, wherever they were cached, and then `RingFull`.
    for (i, &(g, st)) in model.s.slots.clone().iter().enumerate() {
        let h = Handle::new(i as u32, g).unwrap();
        match st {
            St::Posted => {
                prop_assert!(ring.complete(h, Outcome::Done));
                prop_assert_eq!(ring.release(h), Ok(Released::Freed));
            }
            St::Reserved | St::Ended(_) => prop_assert_eq!(ring.release(h), Ok(Released::Freed)),
            St::Detached => prop_assert!(ring.complete(h, Outcome::Done)),
            St::Free | St::Retired => {}
        }
    }
    drop(workers);
    let stats = ring.stats();
    prop_assert_eq!(stats.live, 0);
    let serving = capacity - stats.retired as usize;
    let last = Worker::new(&ring);
    for _ in 0..serving {
        let reply = last.run(Box::new(|r| Reply::Acquire(r.acquire())));
        prop_assert!(matches!(reply, Reply::Acquire(Ok(_))), "a slot lost: {:?}", reply);
    }
    prop_assert_eq!(
        last.run(Box::new(|r| Reply::Acquire(r.acquire()))),
        Reply::Acquire(Err(Error::RingFull { capacity }))
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn threads_with_recent_cells_agree_with_the_model(
        capacity in prop_oneof![Just(1usize), Just(2), Just(4), Just(8)],
        max_generation in prop_oneof![1u64..8, Just(1000)],
        threads in 2usize..5,
        ops in prop::collection::vec((0usize..4, op()), 1..150),
    ) {
        run(capacity, max_generation, threads, &ops)?;
    }
}
