//! `--soak SECONDS`: random transfers instead of the sweep.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use ringxfer::{Desc, Op};

use crate::args::Args;
use crate::report::size;
use crate::setup::Setup;

/// `--soak`: random transfers on every thread, the ledger every 2 s, a quiescence
/// check at the end.
pub(crate) fn soak(s: &Setup, args: &Args, seconds: u64) -> ExitCode {
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
