//! The two sides of the transfers, per backend: the engines, their memory, the data
//! file, the target process, and the baseline each backend is measured against.

use std::io::Write;
use std::process::ExitCode;

use ringxfer::fabric::{FabricConfig, RawRma};
use ringxfer::{Config, Engine, PeerId, RegionId};
#[cfg(feature = "cuda")]
use ringxfer::{CudaConfig, CudaRawLoop};

use crate::args::Args;

/// The other side of the transfers: an engine in this process, or a child process.
pub(crate) enum Target {
    /// Held only to keep the engine (and the memory being written) alive.
    InProcess(#[allow(dead_code)] Box<Engine>),
    Child(std::process::Child),
    /// A fabric target engine, and the raw libfabric baseline.
    Fabric(#[allow(dead_code)] Box<Engine>, Box<RawRma>),
    /// The raw cudarc baseline (the target memory is the initiator engine's own).
    #[cfg(feature = "cuda")]
    Cuda(Box<CudaRawLoop>),
    /// `--two-process --backend cuda`: the target process, and the raw baseline
    /// copying into GPU memory of that process's that it opened with
    /// `cuIpcOpenMemHandle` (the child made it for the baseline alone).
    #[cfg(feature = "cuda")]
    CudaChild(std::process::Child, Box<CudaRawLoop>),
    /// A data file, removed at the end, and the memory its transfers move: registered
    /// with the engine (`register_dram`) and used by the `pread`/`pwrite` baseline too,
    /// so both sides move the same bytes between the same pages. (With a buffer of
    /// each side's own, the kernel's copy alone took from 1,010 to 1,309 `perf`
    /// samples for the same work in different processes.) Dropped after the engine,
    /// which holds it registered.
    /// With `--file-per-thread`, one file per thread.
    File(Vec<std::path::PathBuf>, memmap2::MmapRaw),
}

pub(crate) struct Setup {
    pub(crate) initiator: Engine,
    // Kept alive for the run: the target's memory is what the initiator writes.
    pub(crate) target: Target,
    pub(crate) peer: PeerId,
    pub(crate) src: RegionId,
    pub(crate) dst: RegionId,
    /// `--file-per-thread`: each thread's own file (`dst` is the first).
    pub(crate) dst_per_thread: Vec<RegionId>,
}

impl Setup {
    /// Where thread `t` moves its blocks: its region and the offset its blocks start at.
    pub(crate) fn remote(&self, t: usize, per_thread: u64) -> (RegionId, u64) {
        match self.dst_per_thread.get(t) {
            Some(&region) => (region, 0),
            None => (self.dst, t as u64 * per_thread),
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        match &mut self.target {
            Target::Child(child) => {
                // Closing its stdin tells the target to print its ledger and exit.
                drop(child.stdin.take());
                let _ = child.wait();
            }
            #[cfg(feature = "cuda")]
            Target::CudaChild(child, _) => {
                drop(child.stdin.take());
                let _ = child.wait();
            }
            Target::File(paths, _) => {
                for path in paths {
                    let _ = std::fs::remove_file(path);
                }
            }
            _ => {}
        }
    }
}

fn config(name: &str, args: &Args) -> Config {
    Config {
        name: name.into(),
        capacity: 1024,
        max_descs_per_xfer: args.kv.map_or(args.max_batch as usize, |kv| (kv.layers * 2).max(64)),
        max_blocks_per_xfer: args.kv.map_or(1024, |kv| kv.layers * 2 * kv.blocks),
        file_workers: args.file_workers.unwrap_or_else(|| default_file_workers(args.threads)),
        fabric: args.fabric.then(|| FabricConfig {
            provider: args.provider.clone(),
            // The target only serves: a thread drives its progress. The initiator's
            // only with --progress-thread.
            progress_thread: name == "target" || args.progress_thread,
            blocking: args.blocking,
            ..FabricConfig::default()
        }),
        #[cfg(feature = "cuda")]
        cuda: args.cuda.then(|| CudaConfig {
            vmm: args.cuda_vmm,
            batch: !args.cuda_no_batch,
            ..CudaConfig::default()
        }),
        ..Config::default()
    }
}

/// One I/O worker per posting thread, as far as the cores left to them allow (at
/// least one): a worker competing with the posting threads for a core costs more than
/// it brings. On 2 cores with 2 posting threads, 64 KiB file WRITEs moved 1.71× one
/// thread's bytes with one worker and 1.51× with two (docs/benchmarks.md).
fn default_file_workers(threads: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    threads.min(cores.saturating_sub(threads)).max(1)
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

pub(crate) fn setup(args: &Args) -> Result<Setup, String> {
    let per_thread = args.max_block * args.max_batch;
    let len = per_thread
        .checked_mul(args.threads as u64)
        .filter(|&l| l <= 16 << 30)
        .ok_or("max block × max batch × threads exceeds 16 GiB")?;
    let initiator = Engine::new(config("initiator", args)).map_err(|e| e.to_string())?;
    #[cfg(feature = "cuda")]
    if args.cuda && args.two_process {
        let src = if args.initiator_vram {
            initiator.alloc_vram(len as usize).map_err(|e| e.to_string())?
        } else {
            alloc_touched(&initiator, len)?
        };
        let (child, addr, dst, handle) = spawn_target(len, args)?;
        let peer = initiator.fetch_peer(addr.as_str()).map_err(|e| e.to_string())?;
        let raw = match handle {
            Some(h) => CudaRawLoop::with_peer_target(0, len as usize, args.initiator_vram, h, args.window),
            None => CudaRawLoop::new(0, len as usize, args.initiator_vram, false, args.window),
        }
        .map_err(|e| format!("raw cudarc baseline: {e}"))?;
        return Ok(Setup {
            initiator,
            target: Target::CudaChild(child, Box::new(raw)),
            peer,
            src,
            dst,
            dst_per_thread: Vec::new(),
        });
    }
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
            dst_per_thread: Vec::new(),
        });
    }
    if args.file {
        let mut host = memmap2::MmapMut::map_anon(len as usize).map_err(|e| format!("mapping {len} bytes: {e}"))?;
        host.fill(1);
        let paths: Vec<_> = if args.file_per_thread {
            (0..args.threads).map(|t| data_file(args, t)).collect()
        } else {
            vec![data_file(args, 0)]
        };
        let file_len = len as usize / paths.len();
        for path in &paths {
            // Written through first, so reads find real blocks (not holes) in the page cache.
            std::fs::write(path, &host[..file_len]).map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        let host = memmap2::MmapRaw::from(host);
        // SAFETY: the mapping lives in the returned Setup's `target`, which is dropped
        // after its `initiator` (field order), so it outlives the registration; the
        // baseline touches it only between engine rounds, when no transfer is in flight.
        let src = unsafe { initiator.register_dram(host.as_mut_ptr(), len as usize) }.map_err(|e| e.to_string())?;
        let options = ringxfer::FileOptions {
            writable: true,
            ..Default::default()
        };
        let mut dsts = Vec::with_capacity(paths.len());
        for path in &paths {
            let dst = if args.mapped {
                // SAFETY: nothing truncates the data file while the engine holds it: this
                // tool made it and removes it only after the engine is dropped.
                unsafe { initiator.register_file_mapped(path, options) }
            } else {
                initiator.register_file(path, options)
            }
            .map_err(|e| e.to_string())?;
            dsts.push(dst);
        }
        let peer = initiator.local_peer();
        return Ok(Setup {
            initiator,
            target: Target::File(paths, host),
            peer,
            src,
            dst: dsts[0],
            dst_per_thread: if args.file_per_thread { dsts } else { Vec::new() },
        });
    }
    let src = alloc_touched(&initiator, len)?;
    if args.two_process {
        let (child, addr, dst, _) = spawn_target(len, args)?;
        let peer = initiator.fetch_peer(addr.as_str()).map_err(|e| e.to_string())?;
        return Ok(Setup {
            initiator,
            target: Target::Child(child),
            peer,
            src,
            dst,
            dst_per_thread: Vec::new(),
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
        dst_per_thread: Vec::new(),
    })
}

/// The IPC handle of the target's baseline memory, as the target prints it.
type IpcHandle = [u8; 64];

/// Starts the target process of `--two-process`; returns it, its metadata server's
/// address, its region, and (`--backend cuda`, target in GPU memory) the IPC handle
/// of the memory it made for the raw baseline.
fn spawn_target(len: u64, args: &Args) -> Result<(std::process::Child, String, RegionId, Option<IpcHandle>), String> {
    use std::io::BufRead;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut command = std::process::Command::new(exe);
    command.args([
        "--serve-target",
        &len.to_string(),
        "--max-batch-size",
        &args.max_batch.to_string(),
    ]);
    if args.cuda {
        command.args([
            "--backend",
            "cuda",
            "--target-seg",
            if args.target_vram { "vram" } else { "dram" },
        ]);
    }
    let mut child = command
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
    let handle = match parts.next() {
        Some(hex) if hex.len() == 128 => {
            let mut h = [0u8; 64];
            for (i, b) in h.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| "bad IPC handle from the target")?;
            }
            Some(h)
        }
        _ => None,
    };
    Ok((child, addr.to_owned(), dst, handle))
}

/// The data file of `--backend file`.
/// The data file of thread `t` (`--file-per-thread`; otherwise every thread's is 0's).
pub(crate) fn data_file(args: &Args, t: usize) -> std::path::PathBuf {
    let name = if args.file_per_thread {
        format!("ringxfer-bench-{}-{t}.dat", std::process::id())
    } else {
        format!("ringxfer-bench-{}.dat", std::process::id())
    };
    std::path::Path::new(args.path.as_deref().unwrap_or(".")).join(name)
}

/// `--serve-target LEN`: the target process of `--two-process`. Serves its metadata,
/// prints `TARGET <addr> <region>`, and runs until its stdin closes; then prints its
/// ledger on stderr.
pub(crate) fn serve_target(len: u64, args: &Args) -> ExitCode {
    let run = || -> Result<(), String> {
        let engine = Engine::new(config("target", args)).map_err(|e| e.to_string())?;
        let (dst, baseline) = target_memory(&engine, len, args)?;
        let server = engine.serve_metadata("127.0.0.1:0").map_err(|e| e.to_string())?;
        println!("TARGET {} {} {baseline}", server.local_addr(), dst.to_raw());
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

/// The target's region, and what the initiator's baseline needs printed: for GPU
/// memory (`--backend cuda`), the IPC handle, in hex, of an allocation as large made
/// for the baseline alone (leaked until the process exits); otherwise "-".
fn target_memory(engine: &Engine, len: u64, args: &Args) -> Result<(RegionId, String), String> {
    #[cfg(feature = "cuda")]
    if args.cuda && args.target_vram {
        let dst = engine.alloc_vram(len as usize).map_err(|e| e.to_string())?;
        let raw = CudaRawLoop::new(0, len as usize, false, true, 1).map_err(|e| format!("baseline memory: {e}"))?;
        let handle = raw.ipc_handle().map_err(|e| format!("baseline memory: {e}"))?;
        // The initiator's baseline copies into it until this process exits.
        std::mem::forget(raw);
        return Ok((dst, handle.iter().map(|b| format!("{b:02x}")).collect()));
    }
    let _ = args;
    Ok((alloc_touched(engine, len)?, "-".into()))
}
