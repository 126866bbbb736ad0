//! Loom model checks of the ring's protocols and the registration table's pins: every interleaving of a few threads,
//! with the free list's and the state word's atomics under loom's control.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test --release --test loom`; each test sets
//! its own preemption bound, which `LOOM_MAX_PREEMPTIONS` overrides for deeper runs.

#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use ringxfer::Error;
use ringxfer::ring::{FailCode, Handle, Outcome, Released, SlotRing, Status};

/// Explores every interleaving with at most `preemptions` forced thread switches
/// (`LOOM_MAX_PREEMPTIONS` overrides it), so the suite stays within CI's budget.
fn model(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(preemptions);
    }
    builder.check(f);
}

/// Every index comes back exactly once: acquiring the whole ring yields each index
/// once, and one more acquire is refused.
fn assert_all_slots_free(ring: &SlotRing<u32>) {
    let capacity = ring.capacity();
    let mut seen: Vec<u32> = (0..capacity).map(|_| ring.acquire().unwrap().index()).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..capacity as u32).collect::<Vec<_>>());
    assert!(matches!(ring.acquire(), Err(Error::RingFull { .. })));
}

/// A ring of `capacity`, handing out the slot freed last first if `reuse_recent`.
fn ring(capacity: usize, reuse_recent: bool) -> SlotRing<u32> {
    let ring = SlotRing::<u32>::new(capacity).unwrap();
    if reuse_recent { ring.reuse_recent() } else { ring }
}

/// Without and with the per-thread recent-slot cells in front of the free list: an
/// index is never in a cell and the list at once, nor handed to two acquirers.
#[test]
fn two_threads_acquire_and_release_on_a_capacity_two_ring() {
    for reuse_recent in [false, true] {
        two_threads_acquire_and_release(reuse_recent);
    }
}

fn two_threads_acquire_and_release(reuse_recent: bool) {
    // Two rounds in each of two threads: 3 preemptions take ~90 s, 2 take ~5 s.
    model(2, move || {
        let ring = Arc::new(ring(2, reuse_recent));
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let ring = ring.clone();
                thread::spawn(move || {
                    let mut got = Vec::new();
                    for _ in 0..2 {
                        // The other thread holds at most one slot, so one is free.
                        let h = ring.acquire_with(|ctx| *ctx = t).unwrap();
                        ring.release(h).unwrap();
                        got.push(h);
                    }
                    got
                })
            })
            .collect();
        let mut all: Vec<Handle> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 4, "no handle issued twice");
        let s = ring.stats();
        assert_eq!((s.live, s.acquired, s.freed), (0, 4, 4));
        assert_all_slots_free(&ring);
    });
}

/// Per-thread recent-slot cells: a slot a thread left in its cell when it exited is
/// not lost. Another thread's acquire, finding the free list empty, takes it from
/// that cell before answering `RingFull`; and `RingFull` comes only while the other
/// thread actually holds a slot.
#[test]
fn a_slot_cached_by_a_thread_that_exited_is_served_before_ring_full() {
    model(2, || {
        let ring = Arc::new(ring(2, true));
        let other = {
            let ring = ring.clone();
            thread::spawn(move || {
                // Acquired and released: the slot ends in this thread's cell (unless
                // the main thread holds both slots already).
                if let Ok(h) = ring.acquire() {
                    ring.release(h).unwrap();
                }
            })
        };
        let first = ring.acquire().unwrap();
        let second = ring.acquire();
        other.join().unwrap();
        // Full only if the other thread held the second slot at the time.
        let second = match second {
            Ok(h) => h,
            Err(Error::RingFull { .. }) => ring.acquire().unwrap(),
            Err(e) => panic!("{e}"),
        };
        assert_ne!(first.index(), second.index());
        assert!(matches!(ring.acquire(), Err(Error::RingFull { .. })));
        ring.release(first).unwrap();
        ring.release(second).unwrap();
        let s = ring.stats();
        assert_eq!((s.live, s.acquired, s.freed), (0, s.freed, s.acquired));
        assert_all_slots_free(&ring);
    });
}

#[test]
fn complete_races_cancel_and_release_while_posted() {
    model(3, || {
        let ring = Arc::new(SlotRing::<u32>::new(2).unwrap());
        let h = ring.acquire().unwrap();
        ring.post(h).unwrap();
        // The transport's real completion and its proof of cancellation race each
        // other and the owner's release.
        let done = {
            let ring = ring.clone();
            thread::spawn(move || ring.complete(h, Outcome::Done))
        };
        let cancelled = {
            let ring = ring.clone();
            thread::spawn(move || ring.complete(h, Outcome::Cancelled))
        };
        let released = ring.release(h).unwrap();
        let (a, b) = (done.join().unwrap(), cancelled.join().unwrap());
        assert!(a ^ b, "exactly one completion wins");
        if released == Released::Freed {
            // The release came after the winner: it freed the slot itself.
            assert!(ring.status(h).is_err());
        }
        let s = ring.stats();
        assert_eq!(
            (s.live, s.freed, s.done + s.cancelled, s.stale_completions),
            (0, 1, 1, 1)
        );
        assert_all_slots_free(&ring);
    });
}

#[test]
fn a_stale_completion_after_reuse_is_rejected() {
    model(3, || {
        let ring = Arc::new(SlotRing::<u32>::new(1).unwrap());
        let old = ring.acquire().unwrap();
        ring.post(old).unwrap();
        assert!(ring.complete(old, Outcome::Done));
        // A late duplicate completion of `old` races the owner's release and the
        // slot's reuse at the next generation.
        let late = {
            let ring = ring.clone();
            thread::spawn(move || ring.complete(old, Outcome::Failed(FailCode::TIMEOUT)))
        };
        ring.release(old).unwrap();
        let new = ring.acquire().unwrap();
        assert_eq!((new.index(), new.generation()), (old.index(), old.generation() + 1));
        ring.post(new).unwrap();
        assert!(!late.join().unwrap(), "the late completion never wins");
        assert_eq!(
            ring.status(new).unwrap(),
            Status::Posted,
            "and never touches the new transfer"
        );
        assert_eq!(ring.stats().stale_completions, 1);
    });
}

#[test]
fn a_detached_transfer_is_freed_once_by_its_completion() {
    for reuse_recent in [false, true] {
        a_detached_transfer_is_freed_once(reuse_recent);
    }
}

fn a_detached_transfer_is_freed_once(reuse_recent: bool) {
    model(3, move || {
        let ring = Arc::new(ring(2, reuse_recent));
        let h = ring.acquire().unwrap();
        ring.post(h).unwrap();
        let completer = {
            let ring = ring.clone();
            thread::spawn(move || ring.complete(h, Outcome::Done))
        };
        let release = ring.release(h).unwrap();
        assert!(completer.join().unwrap());
        // Whatever the order, the slot was freed exactly once and the handle is dead.
        assert!(matches!(release, Released::Freed | Released::Detached));
        assert_eq!(ring.release(h), Err(Error::StaleHandle { handle: h }));
        assert_eq!(ring.stats().live, 0);
        assert_all_slots_free(&ring);
    });
}

/// A deadline (`expire`) racing the transport's completion and the owner's release:
/// the slot is freed exactly once, only after the transport's completion, and an
/// expired transfer never reads as DONE.
#[test]
fn an_expiry_races_completion_and_release() {
    model(3, || {
        let ring = Arc::new(SlotRing::<u32>::new(2).unwrap());
        let h = ring.acquire().unwrap();
        ring.post(h).unwrap();
        let expirer = {
            let ring = ring.clone();
            thread::spawn(move || ring.expire(h, FailCode::TIMEOUT))
        };
        let completer = {
            let ring = ring.clone();
            thread::spawn(move || ring.complete(h, Outcome::Done))
        };
        let status = ring.status(h).unwrap();
        let expired = expirer.join().unwrap();
        assert!(completer.join().unwrap(), "the transport's completion is never refused");
        let end = ring.status(h).unwrap();
        if expired {
            assert_eq!(end, Status::Failed(FailCode::TIMEOUT), "the expiry's failure stands");
        } else {
            assert_eq!(end, Status::Done);
        }
        assert!(matches!(status, Status::Posted | Status::Done | Status::Failed(_)));
        assert_eq!(ring.release(h), Ok(Released::Freed));
        assert_eq!(ring.stats().live, 0);
        assert_all_slots_free(&ring);
    });
}

/// An expired transfer released before the transport completes it stays held
/// (detached) until that completion, which frees it once.
#[test]
fn an_expired_transfer_is_held_until_its_completion() {
    model(3, || {
        let ring = Arc::new(SlotRing::<u32>::new(2).unwrap());
        let h = ring.acquire().unwrap();
        ring.post(h).unwrap();
        assert!(ring.expire(h, FailCode::TIMEOUT));
        assert!(!ring.expire(h, FailCode::TIMEOUT), "once");
        let completer = {
            let ring = ring.clone();
            thread::spawn(move || ring.complete(h, Outcome::Done))
        };
        let release = ring.release(h).unwrap();
        assert!(completer.join().unwrap());
        match release {
            // Released first: detached, freed by the completion.
            Released::Detached => assert!(ring.status(h).is_err()),
            // Completed first: FAILED(timeout), freed by the release.
            Released::Freed => {}
        }
        assert_eq!(ring.stats().live, 0);
        assert_all_slots_free(&ring);
    });
}

mod job_queue {
    use super::*;
    use ringxfer::ring::{JobQueue, Popped};

    fn h(generation: u64) -> Handle {
        Handle::new(0, generation).unwrap()
    }

    /// Pops until the queue is empty; the jobs found.
    fn drain(q: &JobQueue) -> Vec<Handle> {
        let mut jobs = Vec::new();
        loop {
            match q.pop() {
                Popped::Job(h) => jobs.push(h),
                Popped::Taken => {}
                Popped::Empty => return jobs,
            }
        }
    }

    #[test]
    fn a_waiter_and_a_worker_race_for_a_job_and_exactly_one_runs_it() {
        model(3, || {
            let q = Arc::new(JobQueue::new(1));
            q.push(h(1));
            let worker = {
                let q = q.clone();
                thread::spawn(move || q.pop())
            };
            let taken = q.take(h(1));
            let popped = worker.join().unwrap();
            let by_worker = popped == Popped::Job(h(1));
            assert!(taken != by_worker, "run exactly once: taken {taken}, popped {popped:?}");
            // The entry a take leaves behind serves the slot's next job.
            q.push(h(2));
            assert!(q.len() <= 1, "one entry per slot");
            assert_eq!(drain(&q), vec![h(2)]);
        });
    }

    #[test]
    fn a_push_while_the_old_entry_is_being_popped_is_neither_lost_nor_doubled() {
        model(3, || {
            let q = Arc::new(JobQueue::new(1));
            // Posted, then taken by its waiter: the slot's entry is queued but empty.
            q.push(h(1));
            assert!(q.take(h(1)));
            let worker = {
                let q = q.clone();
                thread::spawn(move || q.pop())
            };
            // The slot is reused and posted again, and its waiter tries to take it.
            q.push(h(2));
            let taken = q.take(h(2));
            let popped = worker.join().unwrap();
            let mut runs = drain(&q);
            if let Popped::Job(j) = popped {
                runs.push(j);
            }
            if taken {
                runs.push(h(2));
            }
            assert_eq!(runs, vec![h(2)], "popped {popped:?}, taken {taken}");
            assert!(q.is_empty());
        });
    }

    #[test]
    fn two_workers_and_a_waiter_over_two_posts_run_each_job_once() {
        model(2, || {
            let q = Arc::new(JobQueue::new(1));
            q.push(h(1));
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    let q = q.clone();
                    thread::spawn(move || q.pop())
                })
                .collect();
            let mut runs = Vec::new();
            if q.take(h(1)) {
                runs.push(h(1));
            }
            let popped: Vec<Popped> = workers.into_iter().map(|w| w.join().unwrap()).collect();
            runs.extend(popped.iter().filter_map(|p| match p {
                Popped::Job(j) => Some(*j),
                _ => None,
            }));
            runs.extend(drain(&q));
            assert_eq!(runs, vec![h(1)], "popped {popped:?}");
            assert!(q.is_empty());
        });
    }
}

/// The registration table's pin protocol (`ring::pins`): an owner never closes an
/// entry under a pin of a live peer, and a refused close leaves the entry open.
mod pins {
    use super::*;
    use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use ringxfer::ring::{PinLane, PinTable};

    /// The words of a table of one entry and `lanes` lanes, lane `i` held by pid
    /// `i + 1` under epoch 1.
    struct Words {
        entries: Vec<AtomicU64>,
        lanes: Vec<AtomicU64>,
        counts: Vec<AtomicU64>,
        /// Set by the owner once a close succeeded (it may now free the memory).
        freed: AtomicBool,
    }

    impl Words {
        fn new(lanes: usize) -> Words {
            Words {
                entries: vec![AtomicU64::new(0)],
                lanes: (0..lanes as u64).map(|i| AtomicU64::new((i + 1) << 32 | 1)).collect(),
                counts: (0..lanes).map(|_| AtomicU64::new(0)).collect(),
                freed: AtomicBool::new(false),
            }
        }

        fn table(&self) -> PinTable<'_> {
            PinTable::new(&self.entries, &self.lanes, &self.counts)
        }
    }

    /// A peer's copy: pin, check the memory is not freed under it, unpin.
    fn copy(words: &Words, lane: usize) -> bool {
        let lane = PinLane { lane, epoch: 1 };
        let pinned = words.table().pin(lane, 0, 1);
        if pinned {
            assert!(
                !words.freed.load(Ordering::SeqCst),
                "the owner freed memory under a pin"
            );
            words.table().unpin(lane, 0);
        }
        pinned
    }

    /// The owner deregisters: if the close succeeds it frees the memory.
    fn deregister(words: &Words) -> bool {
        let closed = words.table().close(0, 1, |_| true).is_ok();
        if closed {
            words.freed.store(true, Ordering::SeqCst);
        } else {
            assert!(words.table().is_open(0, 1), "a refused close must leave the entry open");
        }
        closed
    }

    #[test]
    fn a_close_never_frees_memory_under_a_live_pin() {
        model(3, || {
            let words = Arc::new(Words::new(1));
            words.table().open(0, 1);
            let peer = {
                let words = words.clone();
                thread::spawn(move || copy(&words, 0))
            };
            let closed = deregister(&words);
            let copied = peer.join().unwrap();
            // Either may win; after both, a retried close always succeeds.
            let _ = (closed, copied);
            if !closed {
                assert!(deregister(&words));
            }
            assert!(!words.table().is_open(0, 1));
        });
    }

    #[test]
    fn two_peers_and_the_owner() {
        model(2, || {
            let words = Arc::new(Words::new(2));
            words.table().open(0, 1);
            let peers: Vec<_> = (0..2)
                .map(|lane| {
                    let words = words.clone();
                    thread::spawn(move || copy(&words, lane))
                })
                .collect();
            let closed = deregister(&words);
            for p in peers {
                p.join().unwrap();
            }
            if !closed {
                assert!(deregister(&words));
            }
        });
    }

    #[test]
    fn a_dead_peers_pin_holds_nothing() {
        model(3, || {
            let words = Arc::new(Words::new(2));
            words.table().open(0, 1);
            // Lane 0's holder (pid 1) pinned and died without unpinning.
            assert!(words.table().pin(PinLane { lane: 0, epoch: 1 }, 0, 1));
            let peer = {
                let words = words.clone();
                thread::spawn(move || copy(&words, 1))
            };
            let dead = |pid: u32| pid != 1;
            let closed = words.table().close(0, 1, dead).is_ok();
            if closed {
                words.freed.store(true, Ordering::SeqCst);
            }
            peer.join().unwrap();
            if !closed {
                assert!(words.table().close(0, 1, dead).is_ok(), "only the live peer held it");
            }
        });
    }
}

mod completions {
    use super::*;
    use loom::sync::atomic::{AtomicU32, Ordering};
    use ringxfer::ring::{Completion, Signal};

    /// An eventfd's readability, as loom sees it.
    #[derive(Clone, Default)]
    struct Readable(Arc<AtomicU32>);

    /// Like an eventfd, whose write and read the kernel serializes: a raise writes
    /// the counter and a clear reads it back to 0, both read-modify-writes.
    impl Signal for Readable {
        fn raise(&self) {
            self.0.swap(1, Ordering::SeqCst);
        }
        fn clear(&self) {
            self.0.swap(0, Ordering::SeqCst);
        }
    }

    /// A ring of 2 with a completion queue of 2, and a transfer in each slot posted
    /// with a report asked for (tag = its index).
    fn setup(readable: &Readable) -> (SlotRing<u32>, [Handle; 2]) {
        let ring = SlotRing::<u32>::new(2)
            .unwrap()
            .with_completions(2, Some(Box::new(readable.clone())));
        let hs = [ring.acquire().unwrap(), ring.acquire().unwrap()];
        for h in hs {
            ring.report_completion(h, u64::from(h.index())).unwrap();
            ring.post(h).unwrap();
        }
        (ring, hs)
    }

    /// Two completers and a poller that takes one entry at a time: every completion
    /// is polled once, and whenever one waits unpolled the eventfd is readable (no
    /// lost wake-up for a caller sleeping in `epoll`).
    #[test]
    fn no_completion_waits_with_the_signal_down() {
        model(3, || {
            let readable = Readable::default();
            let (ring, hs) = setup(&readable);
            let ring = Arc::new(ring);
            let completers: Vec<_> = hs
                .iter()
                .map(|&h| {
                    let ring = ring.clone();
                    thread::spawn(move || assert!(ring.complete(h, Outcome::Done)))
                })
                .collect();
            let mut out = [Completion::EMPTY; 1];
            let mut polled = Vec::new();
            if ring.poll_completions(&mut out) == 1 {
                polled.push(out[0]);
            }
            for c in completers {
                c.join().unwrap();
            }
            // The moment that matters: the completers are done and the caller would
            // go to sleep in epoll now. If anything waits, it must wake.
            if ring.completions_ready() > 0 {
                assert_eq!(
                    readable.0.load(Ordering::SeqCst),
                    1,
                    "a completion waits with the signal down"
                );
            }
            while ring.poll_completions(&mut out) == 1 {
                polled.push(out[0]);
            }
            polled.sort_by_key(|c| c.tag);
            assert_eq!(polled.len(), 2, "{polled:?}");
            for (c, h) in polled.iter().zip(hs) {
                assert_eq!((c.handle, c.status, c.tag), (h, Status::Done, u64::from(h.index())));
            }
        });
    }

    /// A release racing the completion of a transfer that asked for a report: the
    /// entry is reported once (completion first) or given back (release detaches, so
    /// the completion frees the slot unreported); either way no entry is lost, and
    /// both entries can be taken again afterwards.
    #[test]
    fn a_release_racing_a_completion_neither_loses_nor_doubles_an_entry() {
        model(3, || {
            let readable = Readable::default();
            let (ring, hs) = setup(&readable);
            let ring = Arc::new(ring);
            let completer = {
                let ring = ring.clone();
                thread::spawn(move || ring.complete(hs[0], Outcome::Failed(FailCode::TIMEOUT)))
            };
            let released = ring.release(hs[0]).unwrap();
            assert!(completer.join().unwrap());
            let mut out = [Completion::EMPTY; 2];
            let n = ring.poll_completions(&mut out);
            match released {
                Released::Freed => {
                    assert_eq!(n, 1);
                    assert_eq!(out[0].status, Status::Failed(FailCode::TIMEOUT));
                }
                Released::Detached => assert_eq!(n, 0),
            }
            // The other transfer ends and is polled: both tickets are free again, so
            // two new asks fit.
            assert!(ring.complete(hs[1], Outcome::Done));
            assert_eq!(ring.poll_completions(&mut out), 1);
            assert_eq!((out[0].handle, out[0].status), (hs[1], Status::Done));
            ring.release(hs[1]).unwrap();
            let a = ring.acquire().unwrap();
            let b = ring.acquire().unwrap();
            ring.report_completion(a, 7).unwrap();
            ring.report_completion(b, 8).unwrap();
            assert!(ring.release(a).and(ring.release(b)).is_ok());
            assert_eq!(
                ring.poll_completions(&mut out),
                0,
                "released before they ended: unreported"
            );
        });
    }
}
