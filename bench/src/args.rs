//! The command line: options, defaults and their checks.

use ringxfer::Op;

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
  --cuda-vmm                 with --backend cuda: GPU memory from the VMM API
                             (cuMemCreate; shared with the target process as a file
                             descriptor) instead of cuMemAlloc
  --cuda-no-batch            with --backend cuda: one cuMemcpy*Async per run, never
                             cuMemcpyBatchAsync (CudaConfig::batch off)
  --provider NAME            with --backend fabric: tcp, shm, verbs, efa, ... (default:
                             libfabric's choice, or RINGXFER_FI_PROVIDER)
  --window N                 transfers in flight per thread (default 1; 16 with
                             --backend fabric or cuda)
  --path DIR                 with --backend file: the directory for the data file
  --progress-thread          with --backend fabric: the initiator runs the fabric's
                             progress thread too, and its waiters only look
  --blocking                 with --backend fabric: the initiator's waiters sleep in
                             the provider's wait descriptor once their spin is spent
  --completions              wait through the completion queue (wait_any +
                             poll_completions) instead of on the oldest handle
  --file-per-thread          with --backend file: each thread moves its blocks to and
                             from a file of its own (as a store keeping each page in
                             a file does), so writers do not queue on one inode's
                             lock; the baseline's threads do the same
  --file-workers N           with --backend file: the engine's I/O worker threads
                             (default: one per --threads, as far as the cores left
                             to them allow, at least one)
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
                             starts (shared-memory transport) instead of in-process;
                             with --backend cuda the initiator writes the child's
                             GPU memory through CUDA IPC (or its shared-memory host
                             region with --target-seg dram), against a raw loop
                             copying to memory of the child's opened with
                             cuIpcOpenMemHandle (a host buffer here for dram)
  --kv LAYERS,BLOCKS,SIZE    instead of the sweep: KV-shaped transfers of LAYERS × 2
                             (K and V) × BLOCKS pages of SIZE bytes each, at block ids
                             picked from a pool of 2 × BLOCKS pages per layer and side
                             (one prepare_blocks per transfer), against the same pages
                             copied one by one: memcpy (local), pread/pwrite (file),
                             or with --backend cuda the raw per-copy cudarc loop and
                             the batch API (cuMemcpyBatchAsync) without the engine
  --scatter random|contiguous  with --kv: ids shuffled independently on each side
                             (default), or 0..BLOCKS on both (every set one run)
  --json FILE                also write the results as JSON
  --soak SECONDS             instead of the sweep: random transfers (sizes up to the
                             max block, cancels, releases in flight, deadlines that
                             pass) on every thread for SECONDS, beside a thread that
                             shuts engines down with file transfers in flight,
                             printing the ledger every 2 s; fails if anything is
                             left held
  -h, --help                 this text
";

#[derive(Clone, Debug)]
pub(crate) struct Args {
    pub(crate) op: Op,
    pub(crate) start_block: u64,
    pub(crate) max_block: u64,
    pub(crate) start_batch: u64,
    pub(crate) max_batch: u64,
    pub(crate) num_iter: u64,
    pub(crate) warmup_iter: u64,
    /// `--rounds`: engine/baseline round pairs per configuration (odd).
    pub(crate) rounds: usize,
    pub(crate) max_bytes_per_config: u64,
    pub(crate) threads: usize,
    pub(crate) two_process: bool,
    /// `--backend file`: transfers between memory and a file in `path`.
    pub(crate) file: bool,
    pub(crate) path: Option<String>,
    /// `--mapped`: register the data file mapped.
    pub(crate) mapped: bool,
    /// `--file-workers N`: `Config::file_workers` (default: see `setup.rs`).
    pub(crate) file_workers: Option<usize>,
    /// `--file-per-thread`: one data file per bench thread.
    pub(crate) file_per_thread: bool,
    /// `--progress-thread`: the initiator's fabric progress thread.
    pub(crate) progress_thread: bool,
    /// `--blocking`: the initiator's waiters sleep in the provider's wait descriptor.
    pub(crate) blocking: bool,
    /// `--completions`: wait through the completion queue.
    pub(crate) completions: bool,
    /// `--backend fabric`: two engines over libfabric, against a raw RMA loop.
    pub(crate) fabric: bool,
    pub(crate) provider: Option<String>,
    /// Transfers in flight per thread.
    pub(crate) window: usize,
    /// `--backend cuda`: host/GPU copies in one engine, against a raw cudarc loop.
    pub(crate) cuda: bool,
    pub(crate) initiator_vram: bool,
    pub(crate) target_vram: bool,
    /// `--cuda-vmm`: `alloc_vram` with the VMM API (`CudaConfig::vmm`).
    pub(crate) cuda_vmm: bool,
    /// `--cuda-no-batch`: `CudaConfig::batch` off.
    pub(crate) cuda_no_batch: bool,
    pub(crate) serve_target: Option<u64>,
    pub(crate) json: Option<String>,
    /// `--soak SECONDS`: random transfers for that long, the ledger every 2 s.
    pub(crate) soak: Option<u64>,
    /// `--kv LAYERS,BLOCKS,SIZE`: KV-shaped block transfers instead of the sweep.
    pub(crate) kv: Option<Kv>,
}

/// The shape of `--kv`: `layers` × 2 sets of `blocks` pages of `page` bytes, each set
/// in a pool of `2 × blocks` pages per side; `random` ids or `0..blocks`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Kv {
    pub(crate) layers: usize,
    pub(crate) blocks: usize,
    pub(crate) page: u64,
    pub(crate) random: bool,
}

impl Kv {
    /// Pages in a set's pool.
    pub(crate) fn slots(&self) -> u64 {
        2 * self.blocks as u64
    }
    /// Bytes of one side's pool (all sets).
    pub(crate) fn pool_bytes(&self) -> u64 {
        (self.layers * 2) as u64 * self.slots() * self.page
    }
    /// Bytes one transfer moves.
    pub(crate) fn transfer_bytes(&self) -> u64 {
        (self.layers * 2 * self.blocks) as u64 * self.page
    }
}

/// `LAYERS,BLOCKS,SIZE`.
fn parse_kv(s: &str) -> Result<Kv, String> {
    let parts: Vec<&str> = s.split(',').collect();
    let [layers, blocks, page] = parts.as_slice() else {
        return Err(format!("--kv is LAYERS,BLOCKS,SIZE (e.g. 32,256,16K), not {s:?}"));
    };
    let n = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("not a number in --kv: {v:?}"))
    };
    let kv = Kv {
        layers: n(layers)?,
        blocks: n(blocks)?,
        page: parse_size(page)?,
        random: true,
    };
    if kv.layers == 0 || kv.blocks == 0 || kv.page == 0 || kv.layers * 2 > 65536 || kv.layers * 2 * kv.blocks > 1 << 24
    {
        return Err(
            "--kv needs LAYERS, BLOCKS and SIZE above 0, LAYERS × 2 ≤ 65536 and LAYERS × 2 × BLOCKS ≤ 2^24".into(),
        );
    }
    Ok(kv)
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

pub(crate) fn parse_args() -> Result<Args, String> {
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
        file_per_thread: false,
        file_workers: None,
        progress_thread: false,
        blocking: false,
        completions: false,
        fabric: false,
        provider: None,
        window: 0,
        cuda: false,
        initiator_vram: false,
        target_vram: true,
        cuda_vmm: false,
        cuda_no_batch: false,
        serve_target: None,
        json: None,
        soak: None,
        kv: None,
    };
    let mut scatter_random = None;
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
            Long("cuda-vmm") => a.cuda_vmm = true,
            Long("cuda-no-batch") => a.cuda_no_batch = true,
            Long("provider") => a.provider = Some(value(&mut parser)?),
            Long("window") => a.window = number(value(&mut parser)?)? as usize,
            Long("path") => a.path = Some(value(&mut parser)?),
            Long("mapped") => a.mapped = true,
            Long("file-per-thread") => a.file_per_thread = true,
            Long("file-workers") => a.file_workers = Some(number(value(&mut parser)?)? as usize),
            Long("progress-thread") => a.progress_thread = true,
            Long("blocking") => a.blocking = true,
            Long("completions") => a.completions = true,
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
            Long("kv") => a.kv = Some(parse_kv(&value(&mut parser)?)?),
            Long("scatter") => {
                scatter_random = Some(match value(&mut parser)?.as_str() {
                    "random" => true,
                    "contiguous" => false,
                    other => return Err(format!("--scatter is random or contiguous, not {other:?}")),
                })
            }
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
    if (a.file || a.fabric) && a.two_process {
        return Err("--two-process goes with --backend local or cuda".into());
    }
    if (a.cuda_vmm || a.cuda_no_batch) && !a.cuda {
        return Err("--cuda-vmm and --cuda-no-batch go with --backend cuda".into());
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
    if a.progress_thread && !a.fabric {
        return Err("--progress-thread goes with --backend fabric".into());
    }
    if a.blocking && !a.fabric {
        return Err("--blocking goes with --backend fabric".into());
    }
    if a.mapped && !a.file {
        return Err("--mapped goes with --backend file".into());
    }
    if a.file_per_thread && (!a.file || a.kv.is_some() || a.soak.is_some()) {
        return Err("--file-per-thread goes with --backend file, without --kv or --soak".into());
    }
    if a.file_workers.is_some_and(|w| !a.file || w == 0 || w > 64) {
        return Err("--file-workers goes with --backend file, 1 ..= 64".into());
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
    match (&mut a.kv, scatter_random) {
        (None, Some(_)) => return Err("--scatter goes with --kv".into()),
        (Some(_), _) if a.fabric || a.soak.is_some() => {
            return Err("--kv goes with --backend local, file or cuda, without --soak".into());
        }
        (Some(kv), random) => {
            kv.random = random.unwrap_or(true);
            // The regions hold one pool per side and thread.
            (a.start_block, a.max_block, a.start_batch, a.max_batch) = (kv.pool_bytes(), kv.pool_bytes(), 1, 1);
        }
        (None, None) => {}
    }
    Ok(a)
}
