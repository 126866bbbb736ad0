//! ringxfer-bench: sweeps block and batch sizes through the engine and reports
//! bandwidth and latency next to a `memcpy` baseline with the same access pattern,
//! measured in the same run. Its options follow nixlbench's.
//!
//! Run it from the workspace root with `cargo run --release -p ringxfer-bench -- OPTIONS`:
//!
//! ```text
//! ringxfer-bench                                  # a short default sweep (< 1 min)
//! ringxfer-bench --op read --start-block-size 4K --max-block-size 1M --max-batch-size 32
//! ringxfer-bench --threads 2 --json out.json
//! ringxfer-bench --backend fabric --provider tcp --window 16   # against raw libfabric
//! ringxfer-bench --backend cuda --initiator-seg dram --target-seg vram   # against raw cudarc
//! ringxfer-bench --two-process --backend cuda --initiator-seg vram --target-seg vram
//! ringxfer-bench --two-process --kv 32,256,4K --scatter random   # KV-shaped transfers
//! ```
//!
//! It ends by printing the initiator's ledger and exits non-zero if anything is left
//! live (a slot, a pin) — the run itself is a leak check.

mod args;
mod kv;
mod report;
mod run;
mod setup;
mod soak;

use std::process::ExitCode;

use ringxfer::Op;

use crate::args::parse_args;
use crate::report::{print_fio_hint, size, write_json};
use crate::run::{run_baseline, run_engine};
use crate::setup::{Target, serve_target, setup};
use crate::soak::soak;

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
    if let Some(shape) = args.kv {
        return kv::kv(&s, &args, shape);
    }
    let op = if args.op == Op::Write { "WRITE" } else { "READ" };
    let mode = match (args.file, args.two_process) {
        (true, _) if args.mapped => "file (mapped), baseline pread/pwrite on the same file",
        (true, _) => "file, baseline pread/pwrite on the same file",
        (false, true) if args.cuda => {
            "cuda, two processes (CUDA IPC), baseline a raw cudarc loop into IPC-opened memory"
        }
        (false, true) => "local, two processes",
        (false, false) if args.fabric => "fabric (two engines in this process), baseline a raw libfabric RMA loop",
        (false, false) if args.cuda => "cuda, baseline a raw cudarc copy loop",
        (false, false) => "local, in-process",
    };
    let provider = match &s.target {
        Target::Fabric(..) => format!(", provider {}", s.initiator.fabric_provider().unwrap_or_default()),
        #[cfg(feature = "cuda")]
        Target::Cuda(raw) | Target::CudaChild(_, raw) => format!(
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
