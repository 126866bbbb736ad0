//! The slot ring against the free lists and request patterns it replaces.
//!
//! Two shapes, each measured for four implementations in the same run:
//!
//! - `acquire_release` (1 thread): take a request slot and give it back.
//! - `cycle_2threads`: a producer takes a slot, posts it and hands its id to a
//!   completer thread, which completes it (the slot returns to service); the
//!   hand-off queue is the same for every implementation.
//!
//! Implementations: `SlotRing` (ours); `crossbeam_queue::ArrayQueue<u32>` pop + push
//! of an index (the lock-free floor: no state machine, no generations);
//! `Mutex<Vec<u32>>` (a locked free list); and `Box` of a 256-byte request inserted
//! into and removed from a `Mutex<HashMap>` (the per-request heap pattern). At the end
//! the run prints each implementation's mean time and its ratio to the ArrayQueue and
//! Box+HashMap baselines, all from this run.
//!
//! `cargo bench --bench ring` (add `-- --quick` for a fast pass).

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use crossbeam_queue::ArrayQueue;
use ringxfer::ring::{Handle, Outcome, SlotRing};

const CAPACITY: usize = 1024;

/// Every measured (time, iterations) per benchmark id, so the ratios come from the
/// same samples criterion saw.
static TOTALS: Mutex<BTreeMap<String, (Duration, u64)>> = Mutex::new(BTreeMap::new());

fn record(id: &str, elapsed: Duration, iters: u64) -> Duration {
    let mut totals = TOTALS.lock().unwrap();
    let entry = totals.entry(id.to_string()).or_default();
    entry.0 += elapsed;
    entry.1 += iters;
    elapsed
}

/// The per-request heap pattern: a boxed request in a locked map, keyed by id.
type Request = Box<[u8; 256]>;

struct HeapPattern {
    next_id: std::sync::atomic::AtomicU64,
    map: Mutex<HashMap<u64, Request>>,
}

impl HeapPattern {
    fn new() -> HeapPattern {
        HeapPattern {
            next_id: 0.into(),
            map: Mutex::new(HashMap::with_capacity(CAPACITY)),
        }
    }
    fn acquire(&self) -> u64 {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.map.lock().unwrap().insert(id, Box::new([0u8; 256]));
        id
    }
    fn release(&self, id: u64) {
        drop(self.map.lock().unwrap().remove(&id));
    }
}

fn full_queue() -> ArrayQueue<u32> {
    let q = ArrayQueue::new(CAPACITY);
    for i in 0..CAPACITY as u32 {
        q.push(i).unwrap();
    }
    q
}

fn locked_vec() -> Mutex<Vec<u32>> {
    Mutex::new((0..CAPACITY as u32).collect())
}

fn acquire_release(c: &mut Criterion) {
    let mut group = c.benchmark_group("acquire_release");
    let ring: SlotRing<[u64; 8]> = SlotRing::new(CAPACITY).unwrap();
    group.bench_function("SlotRing", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let h = ring.acquire().unwrap();
                ring.release(black_box(h)).unwrap();
            }
            record("acquire_release/SlotRing", start.elapsed(), iters)
        })
    });
    let queue = full_queue();
    group.bench_function("ArrayQueue", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let i = queue.pop().unwrap();
                queue.push(black_box(i)).unwrap();
            }
            record("acquire_release/ArrayQueue", start.elapsed(), iters)
        })
    });
    let vec = locked_vec();
    group.bench_function("MutexVec", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let i = vec.lock().unwrap().pop().unwrap();
                vec.lock().unwrap().push(black_box(i));
            }
            record("acquire_release/MutexVec", start.elapsed(), iters)
        })
    });
    let heap = HeapPattern::new();
    group.bench_function("BoxHashMap", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let id = heap.acquire();
                heap.release(black_box(id));
            }
            record("acquire_release/BoxHashMap", start.elapsed(), iters)
        })
    });
    group.finish();
}

/// Runs `produce` for `iters` items on this thread and `consume` for as many on a
/// second one, started together; returns the time until both are done.
fn two_threads(
    iters: u64,
    produce: impl Fn(&ArrayQueue<u64>) + Sync,
    consume: impl Fn(&ArrayQueue<u64>) + Sync,
) -> Duration {
    let handoff = ArrayQueue::new(CAPACITY);
    let barrier = Barrier::new(2);
    thread::scope(|s| {
        s.spawn(|| {
            barrier.wait();
            for _ in 0..iters {
                consume(&handoff);
            }
        });
        barrier.wait();
        let start = Instant::now();
        for _ in 0..iters {
            produce(&handoff);
        }
        // The scope joins the completer before returning.
        start
    })
    .elapsed()
}

/// Pushes `id` into the hand-off, waiting while the completer catches up.
fn hand_off(q: &ArrayQueue<u64>, mut id: u64) {
    while let Err(back) = q.push(id) {
        id = back;
        std::hint::spin_loop();
    }
}

fn take(q: &ArrayQueue<u64>) -> u64 {
    loop {
        if let Some(id) = q.pop() {
            return id;
        }
        std::hint::spin_loop();
    }
}

/// Retries `f` while the resource pool is empty (the completer is behind).
fn retry<T>(mut f: impl FnMut() -> Option<T>) -> T {
    loop {
        if let Some(v) = f() {
            return v;
        }
        std::hint::spin_loop();
    }
}

fn cycle_2threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("cycle_2threads");
    let ring: SlotRing<[u64; 8]> = SlotRing::new(CAPACITY).unwrap();
    group.bench_function("SlotRing", |b| {
        b.iter_custom(|iters| {
            let elapsed = two_threads(
                iters,
                |q| {
                    let h = retry(|| ring.acquire().ok());
                    ring.post(h).unwrap();
                    hand_off(q, h.to_raw());
                },
                |q| {
                    // The completion path ends the transfer and releases it.
                    let h = Handle::from_raw(take(q));
                    ring.complete(h, Outcome::Done);
                    ring.release(h).unwrap();
                },
            );
            record("cycle_2threads/SlotRing", elapsed, iters)
        })
    });
    group.bench_function("SlotRingDetached", |b| {
        b.iter_custom(|iters| {
            let elapsed = two_threads(
                iters,
                |q| {
                    let h = retry(|| ring.acquire().ok());
                    ring.post(h).unwrap();
                    hand_off(q, h.to_raw());
                    // Fire and forget: whichever of release and complete comes second
                    // frees the slot, so both threads push to the free list.
                    ring.release(h).unwrap();
                },
                |q| {
                    ring.complete(Handle::from_raw(take(q)), Outcome::Done);
                },
            );
            record("cycle_2threads/SlotRingDetached", elapsed, iters)
        })
    });
    let queue = full_queue();
    group.bench_function("ArrayQueue", |b| {
        b.iter_custom(|iters| {
            let elapsed = two_threads(
                iters,
                |q| hand_off(q, retry(|| queue.pop()) as u64),
                |q| queue.push(take(q) as u32).unwrap(),
            );
            record("cycle_2threads/ArrayQueue", elapsed, iters)
        })
    });
    let vec = locked_vec();
    group.bench_function("MutexVec", |b| {
        b.iter_custom(|iters| {
            let elapsed = two_threads(
                iters,
                |q| hand_off(q, retry(|| vec.lock().unwrap().pop()) as u64),
                |q| {
                    // Take first: the lock must not be held while waiting for the producer.
                    let i = take(q) as u32;
                    vec.lock().unwrap().push(i)
                },
            );
            record("cycle_2threads/MutexVec", elapsed, iters)
        })
    });
    let heap = HeapPattern::new();
    group.bench_function("BoxHashMap", |b| {
        b.iter_custom(|iters| {
            let elapsed = two_threads(iters, |q| hand_off(q, heap.acquire()), |q| heap.release(take(q)));
            record("cycle_2threads/BoxHashMap", elapsed, iters)
        })
    });
    group.finish();
}

fn print_ratios() {
    let totals = TOTALS.lock().unwrap();
    if totals.is_empty() {
        return;
    }
    println!("\nring bench: mean ns per operation and ratios, all from this run");
    println!(
        "{:<28} {:>10} {:>14} {:>14}",
        "benchmark", "ns/op", "vs ArrayQueue", "vs BoxHashMap"
    );
    for shape in ["acquire_release", "cycle_2threads"] {
        let mean = |name: &str| {
            totals
                .get(&format!("{shape}/{name}"))
                .map(|(t, n)| t.as_nanos() as f64 / (*n).max(1) as f64)
        };
        let (Some(floor), Some(heap)) = (mean("ArrayQueue"), mean("BoxHashMap")) else {
            continue;
        };
        for name in ["SlotRing", "SlotRingDetached", "ArrayQueue", "MutexVec", "BoxHashMap"] {
            if let Some(ns) = mean(name) {
                println!(
                    "{:<28} {:>10.1} {:>13.2}x {:>13.2}x",
                    format!("{shape}/{name}"),
                    ns,
                    ns / floor,
                    ns / heap
                );
            }
        }
    }
    println!("(x < 1 is faster than the baseline: SlotRing vs BoxHashMap 0.25x = 4x faster)");
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(30);
    targets = acquire_release, cycle_2threads
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    print_ratios();
}
