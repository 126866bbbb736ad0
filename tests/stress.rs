//! Multi-thread stress: producers acquire and post, one completer completes with
//! mixed outcomes (and duplicates), producers release (some while still in flight).
//! At the end nothing is live and every count adds up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;
use ringxfer::Error;
use ringxfer::ring::{FailCode, Handle, Outcome, SlotRing};

const PRODUCERS: usize = 3;
const PER_PRODUCER: u64 = 100_000;
const CAPACITY: usize = 64;

#[test]
fn producers_and_a_completer_leak_nothing() {
    let ring: SlotRing<u64> = SlotRing::new(CAPACITY).unwrap();
    let in_flight = ArrayQueue::<u64>::new(CAPACITY);
    let producers_done = AtomicBool::new(false);
    let ring_full = AtomicU64::new(0);
    let duplicates = AtomicU64::new(0);

    std::thread::scope(|s| {
        let completer = s.spawn(|| {
            let mut n = 0u64;
            loop {
                let Some(raw) = in_flight.pop() else {
                    if producers_done.load(Ordering::Acquire) && in_flight.is_empty() {
                        return n;
                    }
                    std::hint::spin_loop();
                    continue;
                };
                let h = Handle::from_raw(raw);
                let outcome = match n % 3 {
                    0 => Outcome::Done,
                    1 => Outcome::Failed(FailCode::TRANSPORT),
                    _ => Outcome::Cancelled,
                };
                assert!(ring.complete(h, outcome), "first completion of {h} must win");
                if n.is_multiple_of(7) {
                    // A duplicate: it must lose even if the slot was already reused.
                    assert!(!ring.complete(h, Outcome::Done));
                    duplicates.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        });
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let (ring, in_flight, ring_full) = (&ring, &in_flight, &ring_full);
                s.spawn(move || {
                    let mut waiting: Vec<Handle> = Vec::with_capacity(CAPACITY);
                    for i in 0..PER_PRODUCER {
                        let h = loop {
                            match ring.acquire_with(|ctx| *ctx = i) {
                                Ok(h) => break h,
                                Err(Error::RingFull { .. }) => {
                                    ring_full.fetch_add(1, Ordering::Relaxed);
                                    // Reap what has completed to make room.
                                    waiting.retain(|&w| {
                                        !ring.status(w).unwrap().is_terminal() || ring.release(w).is_err()
                                    });
                                    std::thread::yield_now();
                                }
                                Err(e) => panic!("{e}"),
                            }
                        };
                        ring.post(h).unwrap();
                        let mut raw = h.to_raw();
                        while let Err(back) = in_flight.push(raw) {
                            raw = back;
                            std::hint::spin_loop();
                        }
                        if (i + p as u64).is_multiple_of(2) {
                            ring.release(h).unwrap(); // fire and forget (detached or freed)
                        } else {
                            waiting.push(h);
                        }
                    }
                    while let Some(h) = waiting.pop() {
                        while !ring.status(h).unwrap().is_terminal() {
                            std::thread::yield_now();
                        }
                        ring.release(h).unwrap();
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        producers_done.store(true, Ordering::Release);
        let completed = completer.join().unwrap();
        assert_eq!(completed, PRODUCERS as u64 * PER_PRODUCER);
    });

    let s = ring.stats();
    let total = PRODUCERS as u64 * PER_PRODUCER;
    assert_eq!(s.live, 0, "{s:?}");
    assert_eq!(s.acquired, total);
    assert_eq!(s.freed, s.acquired, "every acquire was freed exactly once");
    assert_eq!(s.done + s.failed + s.cancelled, total);
    assert_eq!(s.stale_completions, duplicates.load(Ordering::Relaxed));
    assert!(s.high_water <= CAPACITY);
    // Every slot is back in the free list, each exactly once.
    let mut seen: Vec<u32> = (0..CAPACITY).map(|_| ring.acquire().unwrap().index()).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..CAPACITY as u32).collect::<Vec<_>>());
    eprintln!(
        "stress: {s:?}, RingFull backpressure seen {} times",
        ring_full.load(Ordering::Relaxed)
    );
}
