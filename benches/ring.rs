//! The slot ring against the free lists and request patterns it replaces.
//!
//! Two shapes, each measured for every implementation in the same run:
//!
//! - `acquire_release` (1 thread): take a request slot and give it back.
//! - `cycle_2threads`: a producer takes a slot, posts it and hands its id to a
//!   completer thread, which completes it so the slot returns to service; the hand-off
//!   queue between the two is the same for every implementation.
//!
//! Implementations: `SlotRing` (ours; in the two-thread shape both with the completer
//! releasing and, as `SlotRingDetached`, with the producer releasing while in flight);
//! `crossbeam_queue::ArrayQueue<u32>` pop + push of an index (the lock-free floor: no
//! state machine, no generations); `Mutex<Vec<u32>>` (a locked free list); and `Box` of
//! a 256-byte request inserted into and removed from a `Mutex<HashMap>` (the
//! per-request heap pattern).
//!
//! Criterion measures each one on its own. Then a ratio pass runs all of a shape's
//! implementations in interleaved rounds (A B C D, A B C D, …) and prints each one's
//! median round and its ratio to the ArrayQueue and Box+HashMap baselines: on a shared
//! machine conditions drift within seconds, and interleaving makes every
//! implementation see the same drift.
//!
//! A third pass, `threads`, has 1, 2 and 4 threads each run the whole cycle on its
//! own (acquire, post, complete, release for the ring, as the engine's `local`
//! transport does, with its per-thread recent-slot cells; pop + push for
//! `ArrayQueue`; insert + remove for the heap pattern), all on one shared pool, and
//! prints each implementation's operations per second and its scaling (N threads
//! over 1), interleaved as above.
//!
//! `cargo bench --bench ring` (add `-- --quick` for a fast criterion pass).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use crossbeam_queue::ArrayQueue;
use ringxfer::ring::{Handle, Outcome, SlotRing};

const CAPACITY: usize = 1024;

/// One implementation of a shape: runs `iters` operations, returns the time taken.
type Run<'a> = Box<dyn Fn(u64) -> Duration + 'a>;

/// The per-request heap pattern: a boxed request in a locked map, keyed by id.
struct HeapPattern {
    next_id: AtomicU64,
    map: Mutex<HashMap<u64, Box<[u8; 256]>>>,
}

impl HeapPattern {
    fn new() -> HeapPattern {
        HeapPattern {
            next_id: AtomicU64::new(0),
            map: Mutex::new(HashMap::with_capacity(CAPACITY)),
        }
    }
    fn acquire(&self) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.map.lock().unwrap().insert(id, Box::new([0u8; 256]));
        id
    }
    fn release(&self, id: u64) {
        drop(self.map.lock().unwrap().remove(&id));
    }
}

/// The shared state of every implementation, built once.
struct Pools {
    ring: SlotRing<[u64; 8]>,
    /// With per-thread recent-slot cells, as an engine without the fabric has.
    cached: SlotRing<[u64; 8]>,
    queue: ArrayQueue<u32>,
    vec: Mutex<Vec<u32>>,
    heap: HeapPattern,
}

impl Pools {
    fn new() -> Pools {
        let queue = ArrayQueue::new(CAPACITY);
        for i in 0..CAPACITY as u32 {
            queue.push(i).unwrap();
        }
        Pools {
            ring: SlotRing::new(CAPACITY).unwrap(),
            cached: SlotRing::new(CAPACITY).unwrap().reuse_recent(),
            queue,
            vec: Mutex::new((0..CAPACITY as u32).collect()),
            heap: HeapPattern::new(),
        }
    }

    fn acquire_release(&self) -> Vec<(&'static str, Run<'_>)> {
        vec![
            (
                "SlotRing",
                Box::new(|iters| {
                    timed(iters, || {
                        let h = self.ring.acquire().unwrap();
                        self.ring.release(black_box(h)).unwrap();
                    })
                }),
            ),
            (
                "ArrayQueue",
                Box::new(|iters| {
                    timed(iters, || {
                        let i = self.queue.pop().unwrap();
                        self.queue.push(black_box(i)).unwrap();
                    })
                }),
            ),
            (
                "MutexVec",
                Box::new(|iters| {
                    timed(iters, || {
                        let i = self.vec.lock().unwrap().pop().unwrap();
                        self.vec.lock().unwrap().push(black_box(i));
                    })
                }),
            ),
            (
                "BoxHashMap",
                Box::new(|iters| {
                    timed(iters, || {
                        let id = self.heap.acquire();
                        self.heap.release(black_box(id));
                    })
                }),
            ),
        ]
    }

    fn cycle_2threads(&self) -> Vec<(&'static str, Run<'_>)> {
        let ring = &self.ring;
        vec![
            (
                "SlotRing",
                Box::new(move |iters| {
                    two_threads(
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
                    )
                }),
            ),
            (
                "SlotRingDetached",
                Box::new(move |iters| {
                    two_threads(
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
                    )
                }),
            ),
            (
                "ArrayQueue",
                Box::new(|iters| {
                    two_threads(
                        iters,
                        |q| hand_off(q, retry(|| self.queue.pop()) as u64),
                        |q| self.queue.push(take(q) as u32).unwrap(),
                    )
                }),
            ),
            (
                "MutexVec",
                Box::new(|iters| {
                    two_threads(
                        iters,
                        |q| hand_off(q, retry(|| self.vec.lock().unwrap().pop()) as u64),
                        |q| {
                            // Take first: the lock must not be held while waiting for the producer.
                            let i = take(q) as u32;
                            self.vec.lock().unwrap().push(i)
                        },
                    )
                }),
            ),
            (
                "BoxHashMap",
                Box::new(|iters| {
                    two_threads(
                        iters,
                        |q| hand_off(q, self.heap.acquire()),
                        |q| self.heap.release(take(q)),
                    )
                }),
            ),
        ]
    }
}

fn timed(iters: u64, mut op: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        op();
    }
    start.elapsed()
}

/// Runs `produce` `iters` times on this thread and `consume` as many times on a
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
    retry(|| q.pop())
}

/// Retries `f` until it yields (the other thread is behind).
fn retry<T>(mut f: impl FnMut() -> Option<T>) -> T {
    loop {
        if let Some(v) = f() {
            return v;
        }
        std::hint::spin_loop();
    }
}

/// `threads` threads each run `iters` operations of `op` at once; the wall time.
fn on_threads(threads: usize, iters: u64, op: &(dyn Fn() + Sync)) -> Duration {
    let barrier = Barrier::new(threads + 1);
    thread::scope(|scope| {
        for _ in 0..threads {
            let barrier = &barrier;
            scope.spawn(move || {
                barrier.wait();
                for _ in 0..iters {
                    op();
                }
            });
        }
        barrier.wait();
        let start = Instant::now();
        // The scope joins the threads before returning.
        start
    })
    .elapsed()
}

impl Pools {
    /// The whole cycle of one request per implementation, run on `threads` threads.
    fn cycles(&self, threads: usize) -> Vec<(&'static str, Run<'_>)> {
        let cached = &self.cached;
        let queue = &self.queue;
        let heap = &self.heap;
        vec![
            (
                "SlotRing",
                Box::new(move |iters| {
                    on_threads(threads, iters, &|| {
                        let h = cached.acquire().unwrap();
                        cached.post(h).unwrap();
                        cached.complete(h, Outcome::Done);
                        cached.release(black_box(h)).unwrap();
                    })
                }),
            ),
            (
                "ArrayQueue",
                Box::new(move |iters| {
                    on_threads(threads, iters, &|| {
                        let i = queue.pop().unwrap();
                        queue.push(black_box(i)).unwrap();
                    })
                }),
            ),
            (
                "BoxHashMap",
                Box::new(move |iters| {
                    on_threads(threads, iters, &|| {
                        let id = heap.acquire();
                        heap.release(black_box(id));
                    })
                }),
            ),
        ]
    }
}

/// For 1, 2 and 4 threads: each implementation's operations per second (all threads
/// together, median of `rounds` interleaved rounds) and its scaling over 1 thread.
fn print_scaling(pools: &Pools, rounds: usize, iters: u64) {
    let mut one: Vec<f64> = Vec::new();
    for threads in [1, 2, 4] {
        let runs = pools.cycles(threads);
        let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); runs.len()];
        for (_, run) in &runs {
            run(iters / 4); // warm up
        }
        for _ in 0..rounds {
            for (i, (_, run)) in runs.iter().enumerate() {
                let rate = (threads as u64 * iters) as f64 / run(iters).as_secs_f64();
                samples[i].push(rate);
            }
        }
        for (i, ((name, _), s)) in runs.iter().zip(&mut samples).enumerate() {
            s.sort_by(f64::total_cmp);
            let rate = s[s.len() / 2];
            if threads == 1 {
                one.push(rate);
            }
            let id = format!("threads/{name}/{threads}");
            println!("{id:<34} {:>9.1} {:>13.2}x", rate / 1e6, rate / one[i]);
        }
    }
}

fn criterion_shape(c: &mut Criterion, shape: &str, runs: Vec<(&'static str, Run<'_>)>) {
    let mut group = c.benchmark_group(shape);
    for (name, run) in &runs {
        group.bench_function(*name, |b| b.iter_custom(run));
    }
    group.finish();
}

fn acquire_release(c: &mut Criterion) {
    let pools = Pools::new();
    criterion_shape(c, "acquire_release", pools.acquire_release());
}

fn cycle_2threads(c: &mut Criterion) {
    let pools = Pools::new();
    criterion_shape(c, "cycle_2threads", pools.cycle_2threads());
}

/// Runs a shape's implementations in `rounds` interleaved rounds of `iters` each and
/// prints the median ns per operation and the ratios to the two baselines.
fn print_ratios(shape: &str, runs: &[(&'static str, Run<'_>)], rounds: usize, iters: u64) {
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); runs.len()];
    for (_, run) in runs {
        run(iters / 4); // warm up
    }
    for _ in 0..rounds {
        for (i, (_, run)) in runs.iter().enumerate() {
            samples[i].push(run(iters).as_nanos() as f64 / iters as f64);
        }
    }
    let medians: Vec<f64> = samples
        .iter_mut()
        .map(|s| {
            s.sort_by(f64::total_cmp);
            s[s.len() / 2]
        })
        .collect();
    let of = |name: &str| medians[runs.iter().position(|(n, _)| *n == name).unwrap()];
    let (floor, heap) = (of("ArrayQueue"), of("BoxHashMap"));
    for ((name, _), ns) in runs.iter().zip(&medians) {
        let id = format!("{shape}/{name}");
        println!("{id:<34} {ns:>9.1} {:>13.2}x {:>13.2}x", ns / floor, ns / heap);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = acquire_release, cycle_2threads
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Under `cargo test --benches` criterion runs each benchmark once; skip the
    // ratio pass there too.
    if std::env::args().any(|a| a == "--bench") {
        let pools = Pools::new();
        println!("\nring bench: interleaved rounds, median ns per operation, ratios (all from this run)");
        println!(
            "{:<34} {:>9} {:>14} {:>14}",
            "benchmark", "ns/op", "vs ArrayQueue", "vs BoxHashMap"
        );
        print_ratios("acquire_release", &pools.acquire_release(), 31, 200_000);
        print_ratios("cycle_2threads", &pools.cycle_2threads(), 31, 50_000);
        println!("(ratio < 1 is faster than that baseline: 0.25x = 4x faster)");
        println!("\nthreads: each thread the whole cycle, median of interleaved rounds");
        println!("{:<34} {:>9} {:>14}", "benchmark", "Mops/s", "vs 1 thread");
        print_scaling(&pools, 11, 200_000);
    }
}
