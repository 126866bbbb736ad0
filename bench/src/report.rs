//! Printing and writing the results.

use std::io::Write;

use ringxfer::Op;

use crate::args::Args;
use crate::run::Row;

pub(crate) fn size(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{}G", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}M", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}K", n >> 10),
        n => n.to_string(),
    }
}

pub(crate) fn write_json(path: &str, args: &Args, rows: &[Row]) -> std::io::Result<()> {
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

/// Where `fio` is installed, how to run the equivalent job for a comparison.
pub(crate) fn print_fio_hint(args: &Args) {
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
