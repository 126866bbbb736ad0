//! One configuration through the engine and through its in-run baseline.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use ringxfer::fabric::RawRma;
use ringxfer::{Desc, Op, Status};

use crate::args::Args;
use crate::setup::{Setup, Target, data_file};

/// Latency samples of one kind, in nanoseconds.
struct Samples(Vec<u64>);

/// In the sampled round, one transfer in this many has its prepare, post and transfer
/// times taken. The rounds that give the throughput and the ratio read no clock at
/// all: the baselines read none, and a clock read (tens of nanoseconds on a VM) charged
/// to the engine alone skews a ratio of sub-microsecond transfers.
const SAMPLE_EVERY: u64 = 8;

impl Samples {
    fn avg_us(&self) -> f64 {
        self.0.iter().sum::<u64>() as f64 / self.0.len().max(1) as f64 / 1e3
    }
    fn p99_us(&mut self) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        self.0[(self.0.len() * 99 / 100).min(self.0.len() - 1)] as f64 / 1e3
    }
}

pub(crate) struct Row {
    pub(crate) block: u64,
    pub(crate) batch: u64,
    pub(crate) iters: u64,
    pub(crate) gbps: f64,
    pub(crate) avg_lat_us: f64,
    pub(crate) prepare: (f64, f64),
    pub(crate) post: (f64, f64),
    pub(crate) transfer: (f64, f64),
    pub(crate) memcpy_gbps: f64,
    /// The median of the rounds' engine/baseline ratios.
    pub(crate) ratio: f64,
}

/// One configuration through the engine, on `threads` threads at once; with `sample`,
/// it also times the steps of one transfer in [`SAMPLE_EVERY`].
pub(crate) fn run_engine(
    s: &Setup,
    args: &Args,
    block: u64,
    batch: u64,
    iters: u64,
    sample: bool,
) -> Result<Row, String> {
    let barrier = Barrier::new(args.threads);
    let results: Vec<Result<(Duration, Samples, Samples, Samples), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.threads)
            .map(|t| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let base = t as u64 * args.max_block * args.max_batch;
                    let (dst, dst_base) = s.remote(t, args.max_block * args.max_batch);
                    let local: Vec<Desc> = (0..batch).map(|i| Desc::new(s.src, base + i * block, block)).collect();
                    let remote: Vec<Desc> = (0..batch)
                        .map(|i| Desc::new(dst, dst_base + i * block, block))
                        .collect();
                    let (mut p, mut q, mut x) = (
                        Samples(Vec::with_capacity(iters.div_ceil(SAMPLE_EVERY) as usize)),
                        Samples(Vec::with_capacity(iters.div_ceil(SAMPLE_EVERY) as usize)),
                        Samples(Vec::with_capacity(iters.div_ceil(SAMPLE_EVERY) as usize)),
                    );
                    // Up to `window` transfers in flight; the oldest is waited for and
                    // released when the window is full, and all of them at the end.
                    let mut in_flight = std::collections::VecDeque::with_capacity(args.window);
                    let finish = |(h, posted): (ringxfer::Handle, Option<Instant>),
                                  x: Option<&mut Samples>|
                     -> Result<(), String> {
                        let status = s
                            .initiator
                            .wait(h, Duration::from_secs(60))
                            .map_err(|e| e.to_string())?;
                        if let (Some(x), Some(posted)) = (x, posted) {
                            x.0.push(posted.elapsed().as_nanos() as u64);
                        }
                        s.initiator.release(h).map_err(|e| e.to_string())?;
                        if status != Status::Done {
                            return Err(format!("transfer ended {status:?}"));
                        }
                        Ok(())
                    };
                    // With --completions: transfers report to the completion queue
                    // (tag: the iteration), and the window is kept by draining it.
                    let mut pending = 0usize;
                    let mut timed_posts: std::collections::VecDeque<(u64, Instant, bool)> =
                        std::collections::VecDeque::with_capacity(64);
                    let mut out = [ringxfer::Completion::EMPTY; 64];
                    let mut drain = |pending: &mut usize,
                                     left: usize,
                                     timed_posts: &mut std::collections::VecDeque<(u64, Instant, bool)>,
                                     x: &mut Samples|
                     -> Result<(), String> {
                        while *pending > left {
                            if !s
                                .initiator
                                .wait_any(Duration::from_secs(60))
                                .map_err(|e| e.to_string())?
                            {
                                return Err("no completion within 60 s".into());
                            }
                            let n = s.initiator.poll_completions(&mut out);
                            for c in &out[..n] {
                                s.initiator.release(c.handle).map_err(|e| e.to_string())?;
                                if c.status != Status::Done {
                                    return Err(format!("transfer ended {:?}", c.status));
                                }
                                if let Some(i) = timed_posts.iter().position(|p| p.0 == c.tag) {
                                    let (_, posted, timed) = timed_posts.remove(i).expect("found");
                                    if timed {
                                        x.0.push(posted.elapsed().as_nanos() as u64);
                                    }
                                }
                            }
                            *pending -= n;
                        }
                        Ok(())
                    };
                    let warmup = args.warmup_iter.min(iters);
                    let mut start = Instant::now();
                    for k in 0..warmup + iters {
                        let timed = k >= warmup;
                        // See SAMPLE_EVERY: only the sampled round reads the clock.
                        let sampled = sample && timed && (k - warmup).is_multiple_of(SAMPLE_EVERY);
                        if k == warmup {
                            while let Some(f) = in_flight.pop_front() {
                                finish(f, None)?;
                            }
                            drain(&mut pending, 0, &mut timed_posts, &mut Samples(Vec::new()))?;
                            barrier.wait();
                            start = Instant::now();
                        }
                        let t0 = sampled.then(Instant::now);
                        let h = s
                            .initiator
                            .prepare(args.op, &local, s.peer, &remote, None)
                            .map_err(|e| e.to_string())?;
                        if args.completions {
                            s.initiator.report_completion(h, k).map_err(|e| e.to_string())?;
                        }
                        let t1 = sampled.then(Instant::now);
                        s.initiator.post(h).map_err(|e| e.to_string())?;
                        if let (Some(t0), Some(t1)) = (t0, t1) {
                            p.0.push((t1 - t0).as_nanos() as u64);
                            q.0.push(t1.elapsed().as_nanos() as u64);
                        }
                        if args.completions {
                            if let Some(t1) = t1 {
                                timed_posts.push_back((k, t1, timed));
                            }
                            pending += 1;
                            drain(&mut pending, args.window - 1, &mut timed_posts, &mut x)?;
                            continue;
                        }
                        in_flight.push_back((h, t1));
                        if in_flight.len() >= args.window {
                            let f = in_flight.pop_front().expect("a full window");
                            finish(f, timed.then_some(&mut x))?;
                        }
                    }
                    drain(&mut pending, 0, &mut timed_posts, &mut x)?;
                    while let Some(f) = in_flight.pop_front() {
                        finish(f, Some(&mut x))?;
                    }
                    Ok((start.elapsed(), p, q, x))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("bench thread panicked".into())))
            .collect()
    });
    let mut wall = Duration::ZERO;
    let (mut p, mut q, mut x) = (Samples(Vec::new()), Samples(Vec::new()), Samples(Vec::new()));
    for r in results {
        let (elapsed, tp, tq, tx) = r?;
        wall = wall.max(elapsed);
        p.0.extend(tp.0);
        q.0.extend(tq.0);
        x.0.extend(tx.0);
    }
    let bytes = block * batch * iters * args.threads as u64;
    Ok(Row {
        block,
        batch,
        iters,
        gbps: bytes as f64 / wall.as_secs_f64() / 1e9,
        avg_lat_us: wall.as_secs_f64() * 1e6 / iters as f64,
        prepare: (p.avg_us(), p.p99_us()),
        post: (q.avg_us(), q.p99_us()),
        transfer: (x.avg_us(), x.p99_us()),
        memcpy_gbps: 0.0,
        ratio: 0.0,
    })
}

/// The in-run baseline of the setup's transport, in GB/s: the raw libfabric loop, the
/// raw cudarc loop, `pread`/`pwrite` loops, or `memcpy`.
pub(crate) fn run_baseline(s: &Setup, args: &Args, block: u64, batch: u64, iters: u64) -> Result<f64, String> {
    match &s.target {
        Target::Fabric(_, raw) => {
            run_raw(raw, args, block, batch, iters).map_err(|e| format!("raw libfabric loop: {e}"))
        }
        #[cfg(feature = "cuda")]
        Target::Cuda(raw) | Target::CudaChild(_, raw) => {
            let total = iters * args.threads as u64;
            raw.run(
                args.op,
                block as usize,
                batch as usize,
                total,
                args.warmup_iter.min(iters),
            )
            .map(|elapsed| (block * batch * total) as f64 / elapsed.as_secs_f64() / 1e9)
            .map_err(|e| format!("raw cudarc loop: {e}"))
        }
        Target::File(_, host) => Ok(run_pio(host, args, block, batch, iters)),
        _ => Ok(run_memcpy(args, block, batch, iters)),
    }
}

/// The file baseline: the same access pattern with plain `pwrite`/`pread` loops on
/// the same file, from and to the same memory (`host`, the engine's registered
/// source), one thread per bench thread.
fn run_pio(host: &memmap2::MmapRaw, args: &Args, block: u64, batch: u64, iters: u64) -> f64 {
    use std::os::unix::fs::FileExt;
    let open = |t: usize| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(data_file(args, t))
            .expect("the data file")
    };
    let files: Vec<_> = if args.file_per_thread {
        (0..args.threads).map(open).collect()
    } else {
        vec![open(0)]
    };
    let per_thread = args.max_block * args.max_batch;
    let barrier = Barrier::new(args.threads);
    let walls: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.threads as u64)
            .map(|t| {
                let (file, barrier) = (&files[t as usize % files.len()], &barrier);
                let file_base = if args.file_per_thread { 0 } else { t * per_thread };
                let memory = host.as_mut_ptr() as usize;
                scope.spawn(move || {
                    let base = t * per_thread;
                    // SAFETY: `host` holds per_thread × threads bytes, so this thread's
                    // range lies inside it and overlaps no other thread's; the engine
                    // moves these bytes only in engine rounds, and every transfer of a
                    // round is released before the round returns.
                    let buf = unsafe {
                        std::slice::from_raw_parts_mut((memory as *mut u8).add(base as usize), (block * batch) as usize)
                    };
                    let pass = |buf: &mut [u8]| {
                        for (i, chunk) in buf.chunks_mut(block as usize).enumerate() {
                            let offset = file_base + i as u64 * block;
                            match args.op {
                                Op::Write => file.write_all_at(chunk, offset).expect("pwrite"),
                                Op::Read => file.read_exact_at(chunk, offset).expect("pread"),
                            }
                        }
                    };
                    for _ in 0..args.warmup_iter.min(iters) {
                        pass(buf);
                    }
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        pass(buf);
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("pio thread")).collect()
    });
    let wall = walls.into_iter().max().unwrap_or_default();
    (block * batch * iters * args.threads as u64) as f64 / wall.as_secs_f64() / 1e9
}

/// The same access pattern with plain `copy_nonoverlapping`, on the same threads count.
fn run_memcpy(args: &Args, block: u64, batch: u64, iters: u64) -> f64 {
    let per_thread = (args.max_block * args.max_batch) as usize;
    let mut src = vec![1u8; per_thread * args.threads];
    let mut dst = vec![1u8; per_thread * args.threads];
    let barrier = Barrier::new(args.threads);
    let walls: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = src
            .chunks_mut(per_thread)
            .zip(dst.chunks_mut(per_thread))
            .map(|(s, d)| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let (from, to): (&[u8], &mut [u8]) = match args.op {
                        Op::Write => (s, d),
                        Op::Read => (&*d, s),
                    };
                    let mut pass = |_| {
                        for i in 0..batch as usize {
                            let r = i * block as usize..(i + 1) * block as usize;
                            to[r.clone()].copy_from_slice(&from[r]);
                        }
                        std::hint::black_box(&to);
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
    (block * batch * iters * args.threads as u64) as f64 / wall.as_secs_f64() / 1e9
}

/// The raw libfabric loop with the same shape (block, batch, window, iterations);
/// GB/s. One thread: with `--threads N` it runs N× the iterations.
fn run_raw(raw: &RawRma, args: &Args, block: u64, batch: u64, iters: u64) -> Result<f64, String> {
    let total = iters * args.threads as u64;
    let run = raw
        .run(
            args.op,
            block as usize,
            batch as usize,
            total,
            args.warmup_iter.min(iters),
            args.window,
        )
        .map_err(|e| e.to_string())?;
    Ok((block * batch * total) as f64 / run.elapsed.as_secs_f64() / 1e9)
}
