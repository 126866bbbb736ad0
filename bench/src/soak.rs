//! `--soak SECONDS`: random transfers instead of the sweep, and engines shut down
//! with transfers in flight beside them.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ringxfer::ring::FailCode;
use ringxfer::{Config, Desc, Engine, FileOptions, Op, Status};

use crate::args::Args;
use crate::report::size;
use crate::setup::Setup;

/// One engine's life cut short: 64 file transfers (some with deadlines that pass,
/// some cancelled) released while queued, then `Engine::shutdown`; its ledger must
/// read zero. Returns how many its transports held at the shutdown.
fn shutdown_cycle(dir: &Path, n: u64) -> Result<usize, String> {
    let e = Engine::new(Config {
        name: "soak-shutdown".into(),
        capacity: 64,
        file_workers: 1,
        ..Config::default()
    })
    .map_err(|e| e.to_string())?;
    let path = dir.join(format!("ringxfer-soak-{}-{n}.dat", std::process::id()));
    let options = FileOptions {
        writable: true,
        create: true,
        len: Some(1 << 20),
        sync: false,
    };
    let run = || -> Result<usize, ringxfer::Error> {
        let src = e.alloc_region(1 << 20)?;
        let file = e.register_file(&path, options)?;
        for i in 0..64u64 {
            let desc = |r| Desc::new(r, i * 16384, 16384);
            let h = e.prepare(Op::Write, &[desc(src)], e.local_peer(), &[desc(file)], None)?;
            if i % 4 == 1 {
                e.set_deadline(h, Some(Duration::from_micros(1)))?;
            }
            e.post(h)?;
            if i % 5 == 2 {
                e.cancel(h)?;
            }
            e.release(h)?;
        }
        // Released, so every slot still live is a transfer in flight.
        Ok(e.stats().ring.live)
    };
    let held = run().map_err(|err| err.to_string());
    let st = e.shutdown();
    let _ = std::fs::remove_file(&path);
    let held = held?;
    let ended = st.ring.done + st.ring.failed + st.ring.cancelled;
    if st.ring.live != 0 || st.pins != 0 || st.transport_held != 0 || st.open_files != 0 || ended != 64 {
        return Err(format!("an engine shut down with a ledger not at zero: {st:?}"));
    }
    Ok(held)
}

/// `--soak`: random transfers on every thread (some with deadlines), engines shut
/// down with transfers in flight beside them, the ledger every 2 s, a quiescence
/// check at the end.
pub(crate) fn soak(s: &Setup, args: &Args, seconds: u64) -> ExitCode {
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    let stop = AtomicBool::new(false);
    let posted = AtomicU64::new(0);
    let timed_out = AtomicU64::new(0);
    let (shutdowns, held_at_shutdown) = (AtomicU64::new(0), AtomicUsize::new(0));
    let dir = std::path::PathBuf::from(args.path.as_deref().unwrap_or("."));
    let start = Instant::now();
    println!(
        "ringxfer-bench --soak {seconds}: {} threads, blocks up to {}",
        args.threads,
        size(args.max_block)
    );
    let failed = std::thread::scope(|scope| {
        let shutdown_thread = scope.spawn(|| -> Result<(), String> {
            while !stop.load(Ordering::Relaxed) {
                let n = shutdowns.load(Ordering::Relaxed);
                held_at_shutdown.fetch_add(shutdown_cycle(&dir, n)?, Ordering::Relaxed);
                shutdowns.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        let workers: Vec<_> = (0..args.threads as u64)
            .map(|t| {
                let (stop, posted, timed_out) = (&stop, &posted, &timed_out);
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
                        if (x >> 8) % 8 == 3 {
                            // A deadline that passes where the transfer is still in
                            // flight (fabric, file, GPU): TIMEOUT for the waiter.
                            s.initiator
                                .set_deadline(h, Some(Duration::from_micros(1)))
                                .map_err(|e| e.to_string())?;
                        }
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
                                let status = s
                                    .initiator
                                    .wait(h, Duration::from_secs(60))
                                    .map_err(|e| e.to_string())?;
                                if status == Status::Failed(FailCode::TIMEOUT) {
                                    timed_out.fetch_add(1, Ordering::Relaxed);
                                }
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
                "  {:>5.1} s: posted {}, live {}, high-water {}, done {}, failed {} ({} past deadline), cancelled {}, \
                 stale {}, pins {}, open files {}, held by transports {}; engines shut down {} ({} transfers in flight)",
                start.elapsed().as_secs_f64(),
                posted.load(Ordering::Relaxed),
                st.ring.live,
                st.ring.high_water,
                st.ring.done,
                st.ring.failed,
                timed_out.load(Ordering::Relaxed),
                st.ring.cancelled,
                st.ring.stale_completions,
                st.pins,
                st.open_files,
                st.transport_held,
                shutdowns.load(Ordering::Relaxed),
                held_at_shutdown.load(Ordering::Relaxed),
            );
        }
        stop.store(true, Ordering::Relaxed);
        workers
            .into_iter()
            .chain(std::iter::once(shutdown_thread))
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
        "ledger: posted {posted}, ended {}, live {}, pins {}, held by transports {}; {} engines shut down with \
         {} transfers in flight, each ledger at zero",
        st.ring.done + st.ring.failed + st.ring.cancelled,
        st.ring.live,
        st.pins,
        st.transport_held,
        shutdowns.load(Ordering::Relaxed),
        held_at_shutdown.load(Ordering::Relaxed),
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
