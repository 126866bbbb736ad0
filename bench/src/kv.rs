//! `--kv LAYERS,BLOCKS,SIZE`: KV-shaped transfers. One transfer moves, for every
//! layer, its K and V pages at block ids picked from a pool of `2 × BLOCKS` pages per
//! set and side (random, shuffled independently per side, or `0..BLOCKS`), named by
//! one indexed block set per layer and kind (`Engine::prepare_blocks`). The baselines
//! copy the same pages one by one, in the same run: `memcpy` between two buffers
//! (local), `pwrite`/`pread` between the same memory and the same file (file), and
//! for cuda the raw per-copy cudarc loop and `cuMemcpyBatchAsync` without the engine,
//! between the same kinds of memory with the same window.

use std::process::ExitCode;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use ringxfer::{Blocks, Op, Status};

use crate::args::{Args, Kv};
use crate::report::size;
use crate::setup::{Setup, Target, data_file};

/// The block ids of every set, on each side.
struct Pattern {
    /// Per set (layer × 2 + kind): the initiator's ids and the target's.
    sets: Vec<(Vec<u32>, Vec<u32>)>,
}

impl Pattern {
    fn new(kv: &Kv) -> Pattern {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut pick = |random: bool| -> Vec<u32> {
            let mut all: Vec<u32> = (0..kv.slots() as u32).collect();
            if random {
                for i in (1..all.len()).rev() {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    all.swap(i, (rng % (i as u64 + 1)) as usize);
                }
            }
            all.truncate(kv.blocks);
            all
        };
        Pattern {
            sets: (0..kv.layers * 2).map(|_| (pick(kv.random), pick(kv.random))).collect(),
        }
    }

    /// Byte offset of set `j`'s pool on either side, from `base`.
    fn pool(kv: &Kv, base: u64, j: usize) -> u64 {
        base + j as u64 * kv.slots() * kv.page
    }

    /// Every page as `(initiator offset, target offset, bytes)`, from `base` on both sides.
    fn pieces(&self, kv: &Kv, base: u64) -> Vec<(u64, u64, usize)> {
        let mut out = Vec::with_capacity(kv.layers * 2 * kv.blocks);
        for (j, (l, r)) in self.sets.iter().enumerate() {
            let at = Pattern::pool(kv, base, j);
            for (&a, &b) in l.iter().zip(r) {
                out.push((
                    at + u64::from(a) * kv.page,
                    at + u64::from(b) * kv.page,
                    kv.page as usize,
                ));
            }
        }
        out
    }

    /// Pages contiguous on both sides with the one before, merged: what the engine moves.
    fn runs(&self, kv: &Kv) -> usize {
        let pieces = self.pieces(kv, 0);
        1 + pieces
            .windows(2)
            .filter(|w| !(w[1].0 == w[0].0 + kv.page && w[1].1 == w[0].1 + kv.page))
            .count()
    }
}

/// One engine round: GB/s, and prepare and post times (µs, average).
struct EngineRound {
    gbps: f64,
    prepare_us: f64,
    post_us: f64,
}

pub(crate) fn kv(s: &Setup, args: &Args, kv: Kv) -> ExitCode {
    let pattern = Pattern::new(&kv);
    let bytes = kv.transfer_bytes();
    let iters = match args.max_bytes_per_config {
        0 => args.num_iter,
        cap => args.num_iter.min((cap / bytes).max(10)),
    };
    let op = if args.op == Op::Write { "WRITE" } else { "READ" };
    let (backend, baseline) = match &s.target {
        #[cfg(feature = "cuda")]
        Target::Cuda(raw) | Target::CudaChild(_, raw) => (
            format!(
                "cuda{}, {} -> {}{}",
                if args.two_process { " two processes" } else { "" },
                if args.initiator_vram { "VRAM" } else { "DRAM" },
                if args.target_vram { "VRAM" } else { "DRAM" },
                if raw.fake {
                    " (FAKE DRIVER: host memcpy, a smoke test, not GPU figures)"
                } else {
                    ""
                },
            ),
            "raw per-copy loop, batch API",
        ),
        Target::File(..) => ("file".into(), "pread/pwrite per page"),
        Target::Child(_) => ("local, two processes".into(), "memcpy per page"),
        _ => ("local, in-process".into(), "memcpy per page"),
    };
    println!(
        "ringxfer-bench --kv {},{},{} --scatter {}: backend {backend}, op {op}, threads {}, window {}",
        kv.layers,
        kv.blocks,
        size(kv.page),
        if kv.random { "random" } else { "contiguous" },
        args.threads,
        args.window
    );
    println!(
        "  a transfer: {} pages in {} sets, {} runs after merging, {}; baseline: {baseline}",
        kv.layers * 2 * kv.blocks,
        kv.layers * 2,
        pattern.runs(&kv),
        size(bytes)
    );
    let mut engine_rounds = Vec::with_capacity(args.rounds);
    let mut baselines: Vec<Vec<f64>> = Vec::new();
    for round in 0..args.rounds {
        let baseline_first = round % 2 == 1;
        let mut base = None;
        if baseline_first {
            base = Some(run_baselines(s, args, &kv, &pattern, iters));
        }
        match run_engine(s, args, &kv, &pattern, iters) {
            Ok(r) => engine_rounds.push(r),
            Err(e) => {
                eprintln!("ringxfer-bench --kv: {e}");
                return ExitCode::FAILURE;
            }
        }
        match base.unwrap_or_else(|| run_baselines(s, args, &kv, &pattern, iters)) {
            Ok(b) => baselines.push(b),
            Err(e) => {
                eprintln!("ringxfer-bench --kv: baseline: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let gbps = median(engine_rounds.iter().map(|r| r.gbps).collect());
    let prepare = median(engine_rounds.iter().map(|r| r.prepare_us).collect());
    let post = median(engine_rounds.iter().map(|r| r.post_us).collect());
    println!(
        "{:>7} {:>9} {:>11} {:>9} {:>22} {:>10}",
        "iters", "GB/s", "prepare us", "post us", "baseline", "ratio"
    );
    let names = ["per page", "batch API"];
    for (k, name) in names.iter().enumerate().take(baselines[0].len()) {
        let base = median(baselines.iter().map(|b| b[k]).collect());
        let ratio = median(
            engine_rounds
                .iter()
                .zip(&baselines)
                .map(|(e, b)| e.gbps / b[k])
                .collect(),
        );
        let shown = format!("{name} {base:.3} GB/s");
        if k == 0 {
            println!("{iters:>7} {gbps:>9.3} {prepare:>11.2} {post:>9.2} {shown:>22} {ratio:>9.2}x");
        } else {
            println!("{:>7} {:>9} {:>11} {:>9} {shown:>22} {ratio:>9.2}x", "", "", "", "");
        }
    }
    let st = s.initiator.stats();
    println!(
        "ledger: live slots {}, done {}, failed {}, pins {}",
        st.ring.live, st.ring.done, st.ring.failed, st.pins
    );
    if st.ring.live != 0 || st.pins != 0 || st.ring.acquired != st.ring.freed {
        eprintln!("ringxfer-bench: resources left live after the run: {st:?}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `iters` KV transfers per thread through the engine, `window` in flight per thread.
fn run_engine(s: &Setup, args: &Args, kv: &Kv, pattern: &Pattern, iters: u64) -> Result<EngineRound, String> {
    let barrier = Barrier::new(args.threads);
    let results: Vec<Result<(Duration, Duration, Duration), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.threads)
            .map(|t| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let base = t as u64 * kv.pool_bytes();
                    let sets = |region, ours: bool| -> Vec<Blocks<'_>> {
                        pattern
                            .sets
                            .iter()
                            .enumerate()
                            .map(|(j, (l, r))| {
                                let ids = if ours { l } else { r };
                                Blocks::indexed(region, Pattern::pool(kv, base, j), kv.page, kv.page, ids)
                            })
                            .collect()
                    };
                    let (local, remote) = (sets(s.src, true), sets(s.dst, false));
                    let mut in_flight = std::collections::VecDeque::with_capacity(args.window);
                    let finish = |h: ringxfer::Handle| -> Result<(), String> {
                        let status = s
                            .initiator
                            .wait(h, Duration::from_secs(60))
                            .map_err(|e| e.to_string())?;
                        s.initiator.release(h).map_err(|e| e.to_string())?;
                        match status {
                            Status::Done => Ok(()),
                            other => Err(format!("transfer ended {other:?}")),
                        }
                    };
                    let warmup = args.warmup_iter.min(iters);
                    let (mut start, mut prepare, mut post) = (Instant::now(), Duration::ZERO, Duration::ZERO);
                    for k in 0..warmup + iters {
                        if k == warmup {
                            while let Some(h) = in_flight.pop_front() {
                                finish(h)?;
                            }
                            barrier.wait();
                            (start, prepare, post) = (Instant::now(), Duration::ZERO, Duration::ZERO);
                        }
                        let t0 = Instant::now();
                        let h = s
                            .initiator
                            .prepare_blocks(args.op, &local, s.peer, &remote, None)
                            .map_err(|e| e.to_string())?;
                        let t1 = Instant::now();
                        s.initiator.post(h).map_err(|e| e.to_string())?;
                        (prepare, post) = (prepare + (t1 - t0), post + t1.elapsed());
                        in_flight.push_back(h);
                        if in_flight.len() >= args.window {
                            finish(in_flight.pop_front().expect("a full window"))?;
                        }
                    }
                    while let Some(h) = in_flight.pop_front() {
                        finish(h)?;
                    }
                    Ok((start.elapsed(), prepare, post))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("bench thread panicked".into())))
            .collect()
    });
    let (mut wall, mut prepare, mut post) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for r in results {
        let (w, p, q) = r?;
        wall = wall.max(w);
        prepare += p;
        post += q;
    }
    let n = (iters * args.threads as u64) as f64;
    Ok(EngineRound {
        gbps: (kv.transfer_bytes() as f64 * n) / wall.as_secs_f64() / 1e9,
        prepare_us: prepare.as_secs_f64() * 1e6 / n,
        post_us: post.as_secs_f64() * 1e6 / n,
    })
}

/// The baselines' GB/s: one (memcpy, pread/pwrite), or two for cuda (the per-copy
/// loop, then the batch API where the driver has it).
fn run_baselines(s: &Setup, args: &Args, kv: &Kv, pattern: &Pattern, iters: u64) -> Result<Vec<f64>, String> {
    let total = iters * args.threads as u64;
    let warmup = args.warmup_iter.min(iters);
    match &s.target {
        #[cfg(feature = "cuda")]
        Target::Cuda(raw) | Target::CudaChild(_, raw) => {
            // One thread: with --threads N it runs N× the transfers.
            let pieces = pattern.pieces(kv, 0);
            let gbps = |d: Duration| (kv.transfer_bytes() * total) as f64 / d.as_secs_f64() / 1e9;
            let mut out = vec![gbps(
                raw.run_pieces(args.op, &pieces, total, warmup, false)
                    .map_err(|e| format!("raw cudarc loop: {e}"))?,
            )];
            if raw.has_batch() {
                out.push(gbps(
                    raw.run_pieces(args.op, &pieces, total, warmup, true)
                        .map_err(|e| format!("raw batch loop: {e}"))?,
                ));
            }
            Ok(out)
        }
        Target::File(_, host) => Ok(vec![run_pio(host, args, kv, pattern, iters)]),
        _ => Ok(vec![run_memcpy(args, kv, pattern, iters)]),
    }
}

/// The pages with `copy_nonoverlapping`, between two buffers of a pool each per thread.
fn run_memcpy(args: &Args, kv: &Kv, pattern: &Pattern, iters: u64) -> f64 {
    let pool = kv.pool_bytes() as usize;
    let pieces = pattern.pieces(kv, 0);
    let barrier = Barrier::new(args.threads);
    let walls: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.threads)
            .map(|_| {
                let (barrier, pieces) = (&barrier, &pieces);
                scope.spawn(move || {
                    let (mut a, mut b) = (vec![1u8; pool], vec![1u8; pool]);
                    let mut pass = |_| {
                        for &(i, t, n) in pieces {
                            let (i, t) = (i as usize, t as usize);
                            match args.op {
                                Op::Write => b[t..t + n].copy_from_slice(&a[i..i + n]),
                                Op::Read => a[i..i + n].copy_from_slice(&b[t..t + n]),
                            }
                        }
                        std::hint::black_box((&a, &b));
                    };
                    (0..args.warmup_iter.min(iters)).for_each(&mut pass);
                    barrier.wait();
                    let start = Instant::now();
                    (0..iters).for_each(&mut pass);
                    start.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("memcpy thread")).collect()
    });
    let wall = walls.into_iter().max().unwrap_or_default();
    (kv.transfer_bytes() * iters * args.threads as u64) as f64 / wall.as_secs_f64() / 1e9
}

/// The pages with `pwrite`/`pread`, between the engine's registered memory and the
/// same file, one thread per bench thread.
fn run_pio(host: &memmap2::MmapRaw, args: &Args, kv: &Kv, pattern: &Pattern, iters: u64) -> f64 {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(data_file(args, 0))
        .expect("the data file");
    let barrier = Barrier::new(args.threads);
    let walls: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.threads as u64)
            .map(|t| {
                let (file, barrier) = (&file, &barrier);
                let memory = host.as_mut_ptr() as usize;
                let pieces = pattern.pieces(kv, t * kv.pool_bytes());
                scope.spawn(move || {
                    let pass = || {
                        for &(i, at, n) in &pieces {
                            // SAFETY: `host` holds a pool per thread and this thread's
                            // pieces lie in its own; the engine moves these bytes only
                            // in engine rounds, all released before a round returns.
                            let page =
                                unsafe { std::slice::from_raw_parts_mut((memory as *mut u8).add(i as usize), n) };
                            match args.op {
                                Op::Write => file.write_all_at(page, at).expect("pwrite"),
                                Op::Read => file.read_exact_at(page, at).expect("pread"),
                            }
                        }
                    };
                    (0..args.warmup_iter.min(iters)).for_each(|_| pass());
                    barrier.wait();
                    let start = Instant::now();
                    (0..iters).for_each(|_| pass());
                    start.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("pio thread")).collect()
    });
    let wall = walls.into_iter().max().unwrap_or_default();
    (kv.transfer_bytes() * iters * args.threads as u64) as f64 / wall.as_secs_f64() / 1e9
}
