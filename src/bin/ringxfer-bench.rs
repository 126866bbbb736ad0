//! ringxfer-bench: sweeps block and batch sizes through the engine and reports
//! bandwidth and latency next to a `memcpy` baseline with the same access pattern,
//! measured in the same run. Its options follow nixlbench's.
//!
//! ```text
//! ringxfer-bench                                  # a short default sweep (< 1 min)
//! ringxfer-bench --op read --start-block-size 4K --max-block-size 1M --max-batch-size 32
//! ringxfer-bench --threads 2 --json out.json
//! ringxfer-bench --backend fabric --provider tcp --window 16   # against raw libfabric
//! ringxfer-bench --backend cuda --initiator-seg dram --target-seg vram   # against raw cudarc
//! ```
//!
//! It ends by printing the initiator's ledger and exits non-zero if anything is left
//! live (a slot, a pin) — the run itself is a leak check.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use ringxfer::fabric::{FabricConfig, RawRma};
use ringxfer::{Config, Desc, Engine, Op, PeerId, RegionId, Status};
#[cfg(feature = "cuda")]
use ringxfer::{CudaConfig, CudaRawLoop};

/// Rounds per configuration by default (`--rounds`): engine and baseline alternate,
/// medians reported.
const ROUNDS: usize = 5;

const USAGE: &str = "\
ringxfer-bench: bandwidth and latency of ringxfer transfers against an in-run memcpy baseline

USAGE: ringxfer-bench [OPTIONS]

OPTIONS:
  --backend local|file|fabric|cuda  transport (default local); `file` moves blocks between
                             memory and a file, against a pread/pwrite baseline;
                             `fabric` moves them between two engines over libfabric,
                             against a raw fi_writedata/fi_read loop on the same
                             provider with the same window
                             `cuda` moves them between host and GPU memory (or GPU
                             and GPU) against a raw cudarc copy loop with the same
                             window
  --initiator-seg dram|vram  with --backend cuda: the initiator's memory (default dram)
  --target-seg dram|vram     with --backend cuda: the target's memory (default vram)
  --provider NAME            with --backend fabric: tcp, shm, verbs, efa, ... (default:
                             libfabric's choice, or RINGXFER_FI_PROVIDER)
  --window N                 transfers in flight per thread (default 1; 16 with
                             --backend fabric or cuda)
  --path DIR                 with --backend file: the directory for the data file
  --mapped                   with --backend file: register the file mapped (memcpy to
                             and from the mapping instead of pread/pwrite)
  --op write|read            direction, initiator's view (default write)
  --start-block-size SIZE    first block size (default 4K; K, M, G suffixes)
  --max-block-size SIZE      last block size, doubling (default 64M)
  --start-batch-size N       first descriptors per transfer (default 1)
  --max-batch-size N         last, doubling (default 1)
  --num-iter N               transfers per configuration (default 1000)
  --warmup-iter N            untimed transfers first (default 100)
  --rounds N                 rounds per configuration, engine and baseline alternating,
                             each of --num-iter transfers (odd, 1..=99; default 5): the
                             ratio is the median of the rounds' own ratios, so more
                             and shorter rounds track a noisy machine more closely.
                             These rounds read the clock only at their start and
                             end; one more engine round, in which one transfer in 8
                             is timed, gives the prepare, post and transfer latency
                             columns
  --max-bytes-per-config SIZE  fewer iterations for big blocks so each configuration
                             moves at most this much (default 2G; 0 = no cap)
  --threads N                initiator threads sharing the engine (default 1)
  --two-process              the target engine runs in a child process this tool
                             starts (shared-memory transport) instead of in-process
  --json FILE                also write the results as JSON
  --soak SECONDS             instead of the sweep: random transfers (sizes up to the
                             max block, cancels, releases in flight) on every thread
                             for SECONDS, printing the ledger every 2 s; fails if
                             anything is left held
  -h, --help                 this text
";

#[derive(Clone, Debug)]
struct Args {
    op: Op,
    start_block: u64,
    max_block: u64,
    start_batch: u64,
    max_batch: u64,
    num_iter: u64,
    warmup_iter: u64,
    /// `--rounds`: engine/baseline round pairs per configuration (odd).
    rounds: usize,
    max_bytes_per_config: u64,
    threads: usize,
    two_process: bool,
    /// `--backend file`: transfers between memory and a file in `path`.
    file: bool,
    path: Option<String>,
    /// `--mapped`: register the data file mapped.
    mapped: bool,
    /// `--backend fabric`: two engines over libfabric, against a raw RMA loop.
    fabric: bool,
    provider: Option<String>,
    /// Transfers in flight per thread.
    window: usize,
    /// `--backend cuda`: host/GPU copies in one engine, against a raw cudarc loop.
    cuda: bool,
    initiator_vram: bool,
    target_vram: bool,
    serve_target: Option<u64>,
    json: Option<String>,
    /// `--soak SECONDS`: random transfers for that long, the ledger every 2 s.
    soak: Option<u64>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, mult) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 1 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("not a size: {s:?} (use e.g. 4096, 4K, 64M)"))
}

/// `dram` or `vram`: whether a side is GPU memory.
fn segment(s: &str) -> Result<bool, String> {
    match s {
        "dram" => Ok(false),
        "vram" => Ok(true),
        other => Err(format!("a segment is dram or vram, not {other:?}")),
    }
}

fn parse_args() -> Result<Args, String> {
    use lexopt::prelude::*;
    let mut a = Args {
        op: Op::Write,
        start_block: 4 << 10,
        max_block: 64 << 20,
        start_batch: 1,
        max_batch: 1,
        num_iter: 1000,
        warmup_iter: 100,
        rounds: ROUNDS,
        max_bytes_per_config: 2 << 30,
        threads: 1,
        two_process: false,
        file: false,
        path: None,
        mapped: false,
        fabric: false,
        provider: None,
        window: 0,
        cuda: false,
        initiator_vram: false,
        target_vram: true,
        serve_target: None,
        json: None,
        soak: None,
    };
    let mut parser = lexopt::Parser::from_env();
    let value = |p: &mut lexopt::Parser| -> Result<String, String> {
        p.value()
            .map_err(|e| e.to_string())?
            .into_string()
            .map_err(|_| "option value is not UTF-8".to_string())
    };
    let number = |s: String| s.parse::<u64>().map_err(|_| format!("not a number: {s:?}"));
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("backend") => {
                (a.file, a.fabric, a.cuda) = match value(&mut parser)?.as_str() {
                    "local" => (false, false, false),
                    "file" => (true, false, false),
                    "fabric" => (false, true, false),
                    "cuda" if cfg!(feature = "cuda") => (false, false, true),
                    other => {
                        return Err(format!(
                            "backend {other:?} is not available (local, file, fabric or cuda)"
                        ));
                    }
                }
            }
            Long("initiator-seg") => a.initiator_vram = segment(&value(&mut parser)?)?,
            Long("target-seg") => a.target_vram = segment(&value(&mut parser)?)?,
            Long("provider") => a.provider = Some(value(&mut parser)?),
            Long("window") => a.window = number(value(&mut parser)?)? as usize,
            Long("path") => a.path = Some(value(&mut parser)?),
            Long("mapped") => a.mapped = true,
            Long("op") => {
                a.op = match value(&mut parser)?.to_ascii_lowercase().as_str() {
                    "write" => Op::Write,
                    "read" => Op::Read,
                    other => return Err(format!("--op is write or read, not {other:?}")),
                }
            }
            Long("start-block-size") => a.start_block = parse_size(&value(&mut parser)?)?,
            Long("max-block-size") => a.max_block = parse_size(&value(&mut parser)?)?,
            Long("start-batch-size") => a.start_batch = number(value(&mut parser)?)?,
            Long("max-batch-size") => a.max_batch = number(value(&mut parser)?)?,
            Long("num-iter") => a.num_iter = number(value(&mut parser)?)?,
            Long("warmup-iter") => a.warmup_iter = number(value(&mut parser)?)?,
            Long("rounds") => a.rounds = number(value(&mut parser)?)? as usize,
            Long("max-bytes-per-config") => a.max_bytes_per_config = parse_size(&value(&mut parser)?)?,
            Long("threads") => a.threads = number(value(&mut parser)?)? as usize,
            Long("json") => a.json = Some(value(&mut parser)?),
            Long("soak") => a.soak = Some(number(value(&mut parser)?)?),
            Long("two-process") => a.two_process = true,
            Long("serve-target") => a.serve_target = Some(number(value(&mut parser)?)?),
            Short('h') | Long("help") => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("{}\n\n{USAGE}", other.unexpected())),
        }
    }
    if a.start_block == 0 || a.start_block > a.max_block {
        return Err("need 0 < --start-block-size <= --max-block-size".into());
    }
    if a.start_batch == 0 || a.start_batch > a.max_batch || a.max_batch > 65536 {
        return Err("need 0 < --start-batch-size <= --max-batch-size <= 65536".into());
    }
    if (a.file || a.fabric || a.cuda) && a.two_process {
        return Err("--two-process goes with --backend local".into());
    }
    if a.provider.is_some() && !a.fabric {
        return Err("--provider goes with --backend fabric".into());
    }
    if a.window == 0 {
        a.window = if a.fabric || a.cuda { 16 } else { 1 };
    }
    if a.window > 512 {
        return Err("need --window <= 512".into());
    }
    if a.mapped && !a.file {
        return Err("--mapped goes with --backend file".into());
    }
    if a.file && a.path.is_none() {
        return Err("--backend file needs --path DIR".into());
    }
    if a.threads == 0 || a.threads > 64 || a.num_iter == 0 {
        return Err("need 1 <= --threads <= 64 and --num-iter >= 1".into());
    }
    if a.rounds.is_multiple_of(2) || a.rounds > 99 {
        return Err("--rounds must be odd, 1 ..= 99 (the median is one round)".into());
    }
    Ok(a)
}

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

struct Row {
    block: u64,
    batch: u64,
    iters: u64,
    gbps: f64,
    avg_lat_us: f64,
    prepare: (f64, f64),
    post: (f64, f64),
    transfer: (f64, f64),
    memcpy_gbps: f64,
    /// The median of the rounds' engine/baseline ratios.
    ratio: f64,
}

/// The other side of the transfers: an engine in this process, or a child process.
enum Target {
    /// Held only to keep the engine (and the memory being written) alive.
    InProcess(#[allow(dead_code)] Box<Engine>),
    Child(std::process::Child),
    /// A fabric target engine, and the raw libfabric baseline.
    Fabric(#[allow(dead_code)] Box<Engine>, Box<RawRma>),
    /// The raw cudarc baseline (the target memory is the initiator engine's own).
    #[cfg(feature = "cuda")]
    Cuda(Box<CudaRawLoop>),
    /// A data file, removed at the end, and the memory its transfers move: registered
    /// with the engine (`register_dram`) and used by the `pread`/`pwrite` baseline too,
    /// so both sides move the same bytes between the same pages. (With a buffer of
    /// each side's own, the kernel's copy alone took from 1,010 to 1,309 `perf`
    /// samples for the same work in different processes.) Dropped after the engine,
    /// which holds it registered.
    File(std::path::PathBuf, memmap2::MmapRaw),
}

struct Setup {
    initiator: Engine,
    // Kept alive for the run: the target's memory is what the initiator writes.
    target: Target,
    peer: PeerId,
    src: RegionId,
    dst: RegionId,
}

impl Drop for Setup {
    fn drop(&mut self) {
        match &mut self.target {
            Target::Child(child) => {
                // Closing its stdin tells the target to print its ledger and exit.
                drop(child.stdin.take());
                let _ = child.wait();
            }
            Target::File(path, _) => {
                let _ = std::fs::remove_file(path);
            }
            _ => {}
        }
    }
}

fn config(name: &str, args: &Args) -> Config {
    Config {
        name: name.into(),
        capacity: 1024,
        max_descs_per_xfer: args.max_batch as usize,
        // One I/O worker per posting thread: more would only compete for the cores
        // the posting threads and the baseline run on.
        file_workers: args.threads,
        fabric: args.fabric.then(|| FabricConfig {
            provider: args.provider.clone(),
            // The target only serves: a thread drives its progress.
            progress_thread: name == "target",
            ..FabricConfig::default()
        }),
        #[cfg(feature = "cuda")]
        cuda: args.cuda.then(CudaConfig::default),
        ..Config::default()
    }
}

/// Allocates a region and touches every page, so page faults are not measured.
fn alloc_touched(engine: &Engine, len: u64) -> Result<RegionId, String> {
    let region = engine.alloc_region(len as usize).map_err(|e| e.to_string())?;
    let ones = vec![1u8; (len as usize).min(64 << 20)];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(ones.len() as u64) as usize;
        engine
            .write_region(region, off, &ones[..n])
            .map_err(|e| e.to_string())?;
        off += n as u64;
    }
    Ok(region)
}

fn setup(args: &Args) -> Result<Setup, String> {
    let per_thread = args.max_block * args.max_batch;
    let len = per_thread
        .checked_mul(args.threads as u64)
        .filter(|&l| l <= 16 << 30)
        .ok_or("max block × max batch × threads exceeds 16 GiB")?;
    let initiator = Engine::new(config("initiator", args)).map_err(|e| e.to_string())?;
    #[cfg(feature = "cuda")]
    if args.cuda {
        let side = |vram: bool| -> Result<RegionId, String> {
            if vram {
                initiator.alloc_vram(len as usize).map_err(|e| e.to_string())
            } else {
                alloc_touched(&initiator, len)
            }
        };
        let (src, dst) = (side(args.initiator_vram)?, side(args.target_vram)?);
        let raw = CudaRawLoop::new(0, len as usize, args.initiator_vram, args.target_vram, args.window)
            .map_err(|e| format!("raw cudarc baseline: {e}"))?;
        let peer = initiator.local_peer();
        return Ok(Setup {
            initiator,
            target: Target::Cuda(Box::new(raw)),
            peer,
            src,
            dst,
        });
    }
    if args.file {
        let path = data_file(args);
        let mut host = memmap2::MmapMut::map_anon(len as usize).map_err(|e| format!("mapping {len} bytes: {e}"))?;
        host.fill(1);
        // Written through first, so reads find real blocks (not holes) in the page cache.
        std::fs::write(&path, &host[..]).map_err(|e| format!("writing {}: {e}", path.display()))?;
        let host = memmap2::MmapRaw::from(host);
        // SAFETY: the mapping lives in the returned Setup's `target`, which is dropped
        // after its `initiator` (field order), so it outlives the registration; the
        // baseline touches it only between engine rounds, when no transfer is in flight.
        let src = unsafe { initiator.register_dram(host.as_mut_ptr(), len as usize) }.map_err(|e| e.to_string())?;
        let options = ringxfer::FileOptions {
            writable: true,
            ..Default::default()
        };
        let dst = if args.mapped {
            // SAFETY: nothing truncates the data file while the engine holds it: this
            // tool made it and removes it only after the engine is dropped.
            unsafe { initiator.register_file_mapped(&path, options) }
        } else {
            initiator.register_file(&path, options)
        }
        .map_err(|e| e.to_string())?;
        let peer = initiator.local_peer();
        return Ok(Setup {
            initiator,
            target: Target::File(path, host),
            peer,
            src,
            dst,
        });
    }
    let src = alloc_touched(&initiator, len)?;
    if args.two_process {
        use std::io::BufRead;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = std::process::Command::new(exe)
            .args([
                "--serve-target",
                &len.to_string(),
                "--max-batch-size",
                &args.max_batch.to_string(),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the target process: {e}"))?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().ok_or("no target stdout")?)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let mut parts = line.split_whitespace();
        let (Some("TARGET"), Some(addr), Some(dst)) = (parts.next(), parts.next(), parts.next()) else {
            let _ = child.kill();
            return Err(format!("the target process said {line:?}"));
        };
        let dst = RegionId::from_raw(dst.parse().map_err(|_| "bad region id from the target")?);
        let peer = initiator.fetch_peer(addr).map_err(|e| e.to_string())?;
        return Ok(Setup {
            initiator,
            target: Target::Child(child),
            peer,
            src,
            dst,
        });
    }
    let target = Engine::new(config("target", args)).map_err(|e| e.to_string())?;
    let dst = alloc_touched(&target, len)?;
    let blob = target.local_metadata().map_err(|e| e.to_string())?;
    let peer = initiator.load_peer(&blob).map_err(|e| e.to_string())?;
    let target = if args.fabric {
        let raw = RawRma::new(args.provider.as_deref(), (per_thread * args.threads as u64) as usize)
            .map_err(|e| format!("raw libfabric baseline: {e}"))?;
        Target::Fabric(Box::new(target), Box::new(raw))
    } else {
        Target::InProcess(Box::new(target))
    };
    Ok(Setup {
        initiator,
        target,
        peer,
        src,
        dst,
    })
}

/// `--serve-target LEN`: the target process of `--two-process`. Serves its metadata,
/// prints `TARGET <addr> <region>`, and runs until its stdin closes; then prints its
/// ledger on stderr.
fn serve_target(len: u64, args: &Args) -> ExitCode {
    let run = || -> Result<(), String> {
        let engine = Engine::new(config("target", args)).map_err(|e| e.to_string())?;
        let dst = alloc_touched(&engine, len)?;
        let server = engine.serve_metadata("127.0.0.1:0").map_err(|e| e.to_string())?;
        println!("TARGET {} {}", server.local_addr(), dst.to_raw());
        std::io::stdout().flush().map_err(|e| e.to_string())?;
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        let st = engine.stats();
        eprintln!(
            "target ledger: live slots {}, registrations {}, notifications queued {}",
            st.ring.live, st.registrations, st.notifications_queued
        );
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringxfer-bench target: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One configuration through the engine, on `threads` threads at once; with `sample`,
/// it also times the steps of one transfer in [`SAMPLE_EVERY`].
fn run_engine(s: &Setup, args: &Args, block: u64, batch: u64, iters: u64, sample: bool) -> Result<Row, String> {
    let barrier = Barrier::new(args.threads);
    let results: Vec<Result<(Duration, Samples, Samples, Samples), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.threads)
            .map(|t| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let base = t as u64 * args.max_block * args.max_batch;
                    let local: Vec<Desc> = (0..batch).map(|i| Desc::new(s.src, base + i * block, block)).collect();
                    let remote: Vec<Desc> = (0..batch).map(|i| Desc::new(s.dst, base + i * block, block)).collect();
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
                            barrier.wait();
                            start = Instant::now();
                        }
                        let t0 = sampled.then(Instant::now);
                        let h = s
                            .initiator
                            .prepare(args.op, &local, s.peer, &remote, None)
                            .map_err(|e| e.to_string())?;
                        let t1 = sampled.then(Instant::now);
                        s.initiator.post(h).map_err(|e| e.to_string())?;
                        if let (Some(t0), Some(t1)) = (t0, t1) {
                            p.0.push((t1 - t0).as_nanos() as u64);
                            q.0.push(t1.elapsed().as_nanos() as u64);
                        }
                        in_flight.push_back((h, t1));
                        if in_flight.len() >= args.window {
                            let f = in_flight.pop_front().expect("a full window");
                            finish(f, timed.then_some(&mut x))?;
                        }
                    }
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

/// Where `fio` is installed, how to run the equivalent job for a comparison.
fn print_fio_hint(args: &Args) {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("fio").is_file()));
    if !on_path {
        return;
    }
    let rw = if args.op == Op::Write { "write" } else { "read" };
    println!(
        "fio is installed; the same access pattern with it: fio --name=ringxfer --directory={} --rw={rw} \\\n    --bs={} --size={} --numjobs={} --ioengine=psync --invalidate=0 --group_reporting",
        args.path.as_deref().unwrap_or("."),
        args.start_block,
        args.max_block * args.max_batch,
        args.threads
    );
}

/// `--soak`: random transfers on every thread, the ledger every 2 s, a quiescence
/// check at the end.
fn soak(s: &Setup, args: &Args, seconds: u64) -> ExitCode {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let stop = AtomicBool::new(false);
    let posted = AtomicU64::new(0);
    let start = Instant::now();
    println!(
        "ringxfer-bench --soak {seconds}: {} threads, blocks up to {}",
        args.threads,
        size(args.max_block)
    );
    let failed = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..args.threads as u64)
            .map(|t| {
                let (stop, posted) = (&stop, &posted);
                scope.spawn(move || -> Result<(), String> {
                    let mut x = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(t + 1) | 1;
                    let per_thread = args.max_block * args.max_batch;
                    while !stop.load(Ordering::Relaxed) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let len = 1 + x % args.max_block;
                        let off = t * per_thread + (x >> 24) % (per_thread - len + 1);
                        let op = if x & 1 == 0 { Op::Write } else { Op::Read };
                        let h = match s.initiator.prepare(
                            op,
                            &[Desc::new(s.src, off, len)],
                            s.peer,
                            &[Desc::new(s.dst, off, len)],
                            None,
                        ) {
                            Ok(h) => h,
                            Err(ringxfer::Error::RingFull { .. }) => continue,
                            Err(e) => return Err(e.to_string()),
                        };
                        s.initiator.post(h).map_err(|e| e.to_string())?;
                        posted.fetch_add(1, Ordering::Relaxed);
                        match (x >> 8) % 8 {
                            0 => drop(s.initiator.release(h)),
                            1 => {
                                let _ = s.initiator.cancel(h);
                                s.initiator
                                    .wait(h, Duration::from_secs(60))
                                    .map_err(|e| e.to_string())?;
                                s.initiator.release(h).map_err(|e| e.to_string())?;
                            }
                            _ => {
                                s.initiator
                                    .wait(h, Duration::from_secs(60))
                                    .map_err(|e| e.to_string())?;
                                s.initiator.release(h).map_err(|e| e.to_string())?;
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        while start.elapsed() < Duration::from_secs(seconds) {
            std::thread::sleep(Duration::from_secs(2).min(Duration::from_secs(seconds)));
            let st = s.initiator.stats();
            println!(
                "  {:>5.1} s: posted {}, live {}, high-water {}, done {}, failed {}, cancelled {}, stale {}, pins {}, open files {}",
                start.elapsed().as_secs_f64(),
                posted.load(Ordering::Relaxed),
                st.ring.live,
                st.ring.high_water,
                st.ring.done,
                st.ring.failed,
                st.ring.cancelled,
                st.ring.stale_completions,
                st.pins,
                st.open_files
            );
        }
        stop.store(true, Ordering::Relaxed);
        workers
            .into_iter()
            .filter_map(|w| w.join().unwrap_or_else(|_| Err("thread panicked".into())).err())
            .next()
    });
    if let Some(e) = failed {
        eprintln!("ringxfer-bench --soak: {e}");
        return ExitCode::FAILURE;
    }
    // Released-while-in-flight transfers end on their own; give them a moment.
    let settle = Instant::now();
    while s.initiator.stats().ring.live > 0 && settle.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let st = s.initiator.stats();
    let posted = posted.load(Ordering::Relaxed);
    println!(
        "ledger: posted {posted}, ended {}, live {}, pins {}",
        st.ring.done + st.ring.failed + st.ring.cancelled,
        st.ring.live,
        st.pins
    );
    match s.initiator.check_quiescent() {
        Ok(()) if st.ring.done + st.ring.failed + st.ring.cancelled == posted => ExitCode::SUCCESS,
        Ok(()) => {
            eprintln!("ringxfer-bench --soak: {posted} posted but the ledger counts otherwise: {st:?}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ringxfer-bench --soak: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The data file of `--backend file`.
fn data_file(args: &Args) -> std::path::PathBuf {
    std::path::Path::new(args.path.as_deref().unwrap_or(".")).join(format!("ringxfer-bench-{}.dat", std::process::id()))
}

/// The in-run baseline of the setup's transport, in GB/s: the raw libfabric loop, the
/// raw cudarc loop, `pread`/`pwrite` loops, or `memcpy`.
fn run_baseline(s: &Setup, args: &Args, block: u64, batch: u64, iters: u64) -> Result<f64, String> {
    match &s.target {
        Target::Fabric(_, raw) => {
            run_raw(raw, args, block, batch, iters).map_err(|e| format!("raw libfabric loop: {e}"))
        }
        #[cfg(feature = "cuda")]
        Target::Cuda(raw) => {
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
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(data_file(args))
        .expect("the data file");
    let per_thread = args.max_block * args.max_batch;
    let barrier = Barrier::new(args.threads);
    let walls: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.threads as u64)
            .map(|t| {
                let (file, barrier) = (&file, &barrier);
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
                            let offset = base + i as u64 * block;
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

fn size(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{}G", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}M", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}K", n >> 10),
        n => n.to_string(),
    }
}

fn write_json(path: &str, args: &Args, rows: &[Row]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let op = if args.op == Op::Write { "write" } else { "read" };
    writeln!(
        f,
        "{{\"backend\": \"{}\", \"two_process\": {}, \"op\": \"{op}\", \"threads\": {}, \"window\": {}, \"results\": [",
        if args.fabric {
            "fabric"
        } else if args.cuda {
            "cuda"
        } else if args.file {
            "file"
        } else {
            "local"
        },
        args.two_process,
        args.threads,
        args.window
    )?;
    for (i, r) in rows.iter().enumerate() {
        writeln!(
            f,
            "  {{\"block_size\": {}, \"batch_size\": {}, \"iterations\": {}, \"gbps\": {:.4}, \"avg_latency_us\": {:.3}, \
             \"prepare_avg_us\": {:.3}, \"prepare_p99_us\": {:.3}, \"post_avg_us\": {:.3}, \"post_p99_us\": {:.3}, \
             \"transfer_avg_us\": {:.3}, \"transfer_p99_us\": {:.3}, \"memcpy_gbps\": {:.4}, \"ratio_to_memcpy\": {:.4}}}{}",
            r.block,
            r.batch,
            r.iters,
            r.gbps,
            r.avg_lat_us,
            r.prepare.0,
            r.prepare.1,
            r.post.0,
            r.post.1,
            r.transfer.0,
            r.transfer.1,
            r.memcpy_gbps,
            r.ratio,
            if i + 1 < rows.len() { "," } else { "" }
        )?;
    }
    writeln!(f, "]}}")?;
    f.flush()
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ringxfer-bench: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(len) = args.serve_target {
        return serve_target(len, &args);
    }
    let s = match setup(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringxfer-bench: setup failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(seconds) = args.soak {
        return soak(&s, &args, seconds);
    }
    let op = if args.op == Op::Write { "WRITE" } else { "READ" };
    let mode = match (args.file, args.two_process) {
        (true, _) if args.mapped => "file (mapped), baseline pread/pwrite on the same file",
        (true, _) => "file, baseline pread/pwrite on the same file",
        (false, true) => "local, two processes",
        (false, false) if args.fabric => "fabric (two engines in this process), baseline a raw libfabric RMA loop",
        (false, false) if args.cuda => "cuda, baseline a raw cudarc copy loop",
        (false, false) => "local, in-process",
    };
    let provider = match &s.target {
        Target::Fabric(..) => format!(", provider {}", s.initiator.fabric_provider().unwrap_or_default()),
        #[cfg(feature = "cuda")]
        Target::Cuda(raw) => format!(
            ", {} -> {}{}",
            if args.initiator_vram { "VRAM" } else { "DRAM" },
            if args.target_vram { "VRAM" } else { "DRAM" },
            if raw.fake {
                " (FAKE DRIVER: host memcpy, a smoke test, not GPU figures)"
            } else {
                ""
            }
        ),
        _ => String::new(),
    };
    println!(
        "ringxfer-bench: backend {mode}{provider}, op {op}, threads {}, window {}",
        args.threads, args.window
    );
    println!(
        "{:>8} {:>6} {:>7} {:>9} {:>9} {:>19} {:>19} {:>19} {:>10} {:>8}",
        "block",
        "batch",
        "iters",
        "GB/s",
        "lat us",
        "prepare avg/p99 us",
        "post avg/p99 us",
        "transfer avg/p99 us",
        if args.file {
            "pio GB/s"
        } else if args.fabric || args.cuda {
            "raw GB/s"
        } else {
            "memcpy GB/s"
        },
        "ratio"
    );
    let mut rows = Vec::new();
    let mut block = args.start_block;
    while block <= args.max_block {
        let mut batch = args.start_batch;
        while batch <= args.max_batch {
            let per_iter = block * batch * args.threads as u64;
            let iters = match args.max_bytes_per_config {
                0 => args.num_iter,
                cap => args.num_iter.min((cap / per_iter).max(10)),
            };
            eprint!("\r  block {} batch {batch} ...      ", size(block));
            // Engine and baseline alternate for `--rounds` rounds; the median round of each
            // is reported, and the ratio is the median of the rounds' own ratios (each
            // engine round against the baseline round right after it), so drift on a
            // shared machine hits both sides of every ratio alike.
            let mut engine_rows = Vec::with_capacity(args.rounds);
            let mut memcpy = Vec::with_capacity(args.rounds);
            for round in 0..args.rounds {
                // Odd rounds run the baseline first: neither side always follows the
                // other (a page cache or a CPU warmed by the one before).
                let baseline_first = round % 2 == 1;
                let mut base = None;
                if baseline_first {
                    base = Some(run_baseline(&s, &args, block, batch, iters));
                }
                match run_engine(&s, &args, block, batch, iters, false) {
                    Ok(r) => engine_rows.push(r),
                    Err(e) => {
                        eprintln!("\nringxfer-bench: block {block} batch {batch}: {e}");
                        return ExitCode::FAILURE;
                    }
                }
                match base.unwrap_or_else(|| run_baseline(&s, &args, block, batch, iters)) {
                    Ok(gbps) => memcpy.push(gbps),
                    Err(e) => {
                        eprintln!("\nringxfer-bench: baseline, block {block} batch {batch}: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            let mut ratios: Vec<f64> = engine_rows.iter().zip(&memcpy).map(|(e, m)| e.gbps / m).collect();
            ratios.sort_by(f64::total_cmp);
            engine_rows.sort_by(|a, b| a.gbps.total_cmp(&b.gbps));
            memcpy.sort_by(f64::total_cmp);
            let mut row = engine_rows.swap_remove(args.rounds / 2);
            // The step latencies come from a round of their own, which reads the clock.
            match run_engine(&s, &args, block, batch, iters, true) {
                Ok(r) => (row.prepare, row.post, row.transfer) = (r.prepare, r.post, r.transfer),
                Err(e) => {
                    eprintln!("\nringxfer-bench: block {block} batch {batch}: {e}");
                    return ExitCode::FAILURE;
                }
            }
            row.memcpy_gbps = memcpy[args.rounds / 2];
            row.ratio = ratios[args.rounds / 2];
            eprint!("\r");
            println!(
                "{:>8} {:>6} {:>7} {:>9.3} {:>9.2} {:>9.3}/{:<9.3} {:>9.3}/{:<9.3} {:>9.3}/{:<9.3} {:>10.3} {:>7.2}x",
                size(row.block),
                row.batch,
                row.iters,
                row.gbps,
                row.avg_lat_us,
                row.prepare.0,
                row.prepare.1,
                row.post.0,
                row.post.1,
                row.transfer.0,
                row.transfer.1,
                row.memcpy_gbps,
                row.ratio
            );
            rows.push(row);
            batch *= 2;
        }
        block *= 2;
    }
    if let Some(path) = &args.json
        && let Err(e) = write_json(path, &args, &rows)
    {
        eprintln!("ringxfer-bench: writing {path}: {e}");
        return ExitCode::FAILURE;
    }
    if args.file {
        print_fio_hint(&args);
    }
    let st = s.initiator.stats();
    println!(
        "ledger: live slots {}, high-water {}, done {}, failed {}, cancelled {}, stale completions {}, pins {}",
        st.ring.live,
        st.ring.high_water,
        st.ring.done,
        st.ring.failed,
        st.ring.cancelled,
        st.ring.stale_completions,
        st.pins
    );
    if st.ring.live != 0 || st.pins != 0 || st.ring.acquired != st.ring.freed {
        eprintln!("ringxfer-bench: resources left live after the run: {st:?}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
