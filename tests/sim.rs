//! Soak through the fault-injecting sim transport: threads of random transfers whose
//! completions come late, out of order, twice, failed, stalled past their deadline,
//! or replayed after their slot was reused; notifications dropped or doubled; the
//! peer lost mid-run. Afterwards nothing is held, every posted transfer ended exactly
//! once, every extra completion was rejected, and no notification arrived twice.
//! CI runs the short variant; `-- --ignored` runs the long one.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ringxfer::ring::FailCode;
use ringxfer::{CancelResult, Config, Desc, Engine, Error, Op, SimConfig, Status};

fn soak(seed: u64, threads: u64, per_thread: u64) {
    let e = Engine::new(Config {
        name: "sim-soak".into(),
        capacity: 256,
        max_notif_bytes: 32,
        inbox_capacity: 1024,
        sim: Some(SimConfig {
            seed,
            ..SimConfig::default()
        }),
        ..Config::default()
    })
    .unwrap();
    let peer = e.sim_peer().unwrap();
    let src = e.alloc_region(threads as usize * 4096).unwrap();
    let bytes_at_start = e.stats().bytes;
    assert!(
        bytes_at_start >= threads * 4096,
        "the ledger counts the engine's memory"
    );
    let posted = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let seen = Mutex::new(HashSet::new());
    let duplicates = AtomicU64::new(0);
    let timed_out = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = [0u8; 32];
            while !stop.load(Ordering::Acquire) {
                match e.pop_notification(&mut buf).unwrap() {
                    Some(n) => {
                        let text = String::from_utf8_lossy(&buf[..n.len]).into_owned();
                        if !seen.lock().unwrap().insert(text) {
                            duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None => std::thread::yield_now(),
                }
            }
        });
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (e, posted, timed_out) = (&e, &posted, &timed_out);
                s.spawn(move || {
                    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(t) | 1;
                    let mut next = || {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        rng
                    };
                    for i in 0..per_thread {
                        let r = next();
                        let note = format!("{t}-{i}");
                        let notify = r % 3 == 0;
                        let local = [Desc::new(src, t * 4096, 64)];
                        let remote = [Desc::new(src, 0, 64)];
                        let h = match e.prepare(Op::Write, &local, peer, &remote, notify.then_some(note.as_bytes())) {
                            Ok(h) => h,
                            Err(Error::RingFull { .. }) => {
                                e.progress();
                                continue;
                            }
                            Err(err) => panic!("prepare: {err}"),
                        };
                        if (r >> 8) % 6 == 2 {
                            // A deadline most of these pass in flight: TIMEOUT for the
                            // waiter, the slot freed when the sim lets go.
                            e.set_deadline(h, Some(Duration::from_micros(1))).unwrap();
                        }
                        e.post(h).unwrap();
                        posted.fetch_add(1, Ordering::Relaxed);
                        match (r >> 8) % 6 {
                            0 => {
                                e.release(h).unwrap();
                            }
                            1 => {
                                let c = e.cancel(h).unwrap();
                                assert!(matches!(c, CancelResult::InFlight | CancelResult::AlreadyComplete));
                                e.release(h).unwrap();
                            }
                            _ => {
                                let status = e.wait(h, Duration::from_secs(10)).unwrap();
                                assert!(matches!(status, Status::Done | Status::Failed(_)), "{status:?}");
                                if status == Status::Failed(FailCode::TIMEOUT) {
                                    timed_out.fetch_add(1, Ordering::Relaxed);
                                }
                                e.release(h).unwrap();
                                assert!(matches!(e.release(h), Err(Error::StaleHandle { .. })));
                                assert!(matches!(e.status(h), Err(Error::StaleHandle { .. })));
                            }
                        }
                        if i % 5000 == 4999 && t == 0 {
                            e.sim_lose_peer();
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        e.sim_drain();
        let start = std::time::Instant::now();
        while e.stats().ring.live > 0 && start.elapsed() < Duration::from_secs(10) {
            e.progress();
            e.sim_drain();
        }
        // Let the popper take what is queued.
        let start = std::time::Instant::now();
        while e.stats().notifications_queued > 0 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::Release);
    });
    e.check_quiescent().unwrap();
    let s = e.stats();
    assert_eq!(s.bytes, bytes_at_start, "the engine's memory did not grow: {s:?}");
    let posted = posted.load(Ordering::Relaxed);
    assert_eq!(
        s.ring.done + s.ring.failed + s.ring.cancelled,
        posted,
        "every transfer ended once: {s:?}"
    );
    assert_eq!(s.sim.posted, posted);
    assert_eq!(
        s.sim.misattributed, 0,
        "no completion matched the wrong transfer: {s:?}"
    );
    assert_eq!(
        s.ring.stale_completions, s.sim.extra_completions,
        "every duplicate and replayed completion was rejected, none matched: {s:?}"
    );
    assert!(
        s.sim.extra_completions > 0 && s.sim.expired > 0 && s.ring.failed > 0,
        "the faults happened: {s:?}"
    );
    assert!(
        timed_out.load(Ordering::Relaxed) > 0,
        "engine deadlines passed mid-soak"
    );
    assert_eq!(duplicates.load(Ordering::Relaxed), 0, "no notification arrived twice");
    assert_eq!(
        s.notifications_delivered, s.sim.notifications_sent,
        "every notification sent was popped once (duplicates dropped, none lost): {s:?}"
    );
    assert!(
        s.notifications_stale >= s.sim.notifications_duplicated.min(1),
        "doubled notifications were dropped: {s:?}"
    );
    eprintln!(
        "sim soak: {posted} posted, {} done, {} failed ({} past their deadline), {} extra completions rejected, \
         {} notifications delivered, {} doubled and dropped",
        s.ring.done,
        s.ring.failed,
        s.sim.expired,
        s.ring.stale_completions,
        s.notifications_delivered,
        s.notifications_stale
    );
}

#[test]
fn sim_soak_short() {
    soak(7, 2, 20_000);
}

#[test]
#[ignore = "long: 4 threads x 1,000,000 transfers"]
fn sim_soak_long() {
    soak(11, 4, 1_000_000);
}
