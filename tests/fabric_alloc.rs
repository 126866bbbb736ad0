//! Fabric transfers allocate nothing after connect — on any thread: this binary's
//! allocator counts every thread's allocations (the target's progress thread
//! included), so it holds this one test only. (libfabric's own allocations go to the
//! C allocator and are not counted here: they are the provider's, bounded by its
//! pools.)

use std::time::Duration;

use ringxfer::fabric::FabricConfig;
use ringxfer::ring::{CancelResult, FailCode};
use ringxfer::{Config, Desc, Engine, Op, Status};

#[path = "support/counting.rs"]
mod counting;
#[path = "support/skip.rs"]
mod skip;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

fn engine(name: &str, provider: &str, progress_thread: bool) -> Option<Engine> {
    skip::fabric_engine(Config {
        name: name.into(),
        capacity: 64,
        fabric: Some(FabricConfig {
            provider: Some(provider.into()),
            progress_thread,
            ..FabricConfig::default()
        }),
        ..Config::default()
    })
}

#[test]
fn fabric_transfers_allocate_nothing_on_any_thread() {
    for provider in ["tcp", "shm"] {
        let Some(a) = engine("a", provider, false) else { return };
        let Some(b) = engine("b", provider, true) else { return };
        let src = a.alloc_region(1 << 20).unwrap();
        let dst = b.alloc_region(1 << 20).unwrap();
        let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
        let mut note = [0u8; 256];
        let (mut delivered, mut abandoned_notes, mut abandoned) = (0u64, 0u64, 0u64);
        let mut cycle = |i: u64| {
            let off = (i % 256) * 4096;
            let op = if i.is_multiple_of(2) { Op::Write } else { Op::Read };
            let with_note = i.is_multiple_of(3);
            let h = a
                .prepare(
                    op,
                    &[Desc::new(src, off, 4096), Desc::new(src, off + 1024, 1024)],
                    peer,
                    &[Desc::new(dst, off, 4096), Desc::new(dst, off + 1024, 1024)],
                    with_note.then_some(b"kv block ready".as_slice()),
                )
                .unwrap();
            a.post(h).unwrap();
            // Cancel in flight: the fabric abandons the transfer (its operations run
            // on, its slot is freed when they end), unless it already ended.
            let cancelled = i.is_multiple_of(7)
                && match a.cancel(h).unwrap() {
                    CancelResult::Abandoned => {
                        assert_eq!(a.status(h).unwrap(), Status::Failed(FailCode::CANCELLED));
                        true
                    }
                    CancelResult::AlreadyComplete => false,
                    other => panic!("{provider}: cancel of a posted fabric transfer: {other:?}"),
                };
            let expected = if cancelled {
                Status::Failed(FailCode::CANCELLED)
            } else {
                Status::Done
            };
            assert_eq!(a.wait(h, Duration::from_secs(10)).unwrap(), expected);
            a.release(h).unwrap();
            abandoned += u64::from(cancelled);
            if cancelled && with_note {
                // Its NOTIFY became an ABORT, unless it was already on its way.
                abandoned_notes += 1;
            } else if with_note {
                // `a` drives its own progress: tcp moves an abandoned transfer's
                // last bytes, queued before this one, only then.
                while b.pop_notification(&mut note).unwrap().is_none() {
                    a.progress();
                }
                delivered += 1;
            }
            if i.is_multiple_of(50) {
                // A notification on its own.
                a.notify(peer, b"standalone").unwrap();
                while b.pop_notification(&mut note).unwrap().is_none() {
                    a.progress();
                }
            }
            a.progress();
        };
        // Warm-up: the first transfers may grow nothing of ours, but let the
        // provider's connection settle before counting.
        for i in 0..300 {
            cycle(i);
        }
        let before = counting::allocations();
        for i in 300..3300 {
            cycle(i);
        }
        let allocations = counting::allocations() - before;
        assert_eq!(
            allocations, 0,
            "{provider}: allocations over 3000 fabric transfers (cancels, notifications)"
        );
        // Abandoned slots come back once the provider lets go of their operations.
        let start = std::time::Instant::now();
        while a.stats().ring.live != 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{provider}: abandoned slots never freed"
            );
            a.progress();
        }
        let mut late = 0;
        std::thread::sleep(Duration::from_millis(20));
        while b.pop_notification(&mut note).unwrap().is_some() {
            late += 1;
        }
        assert!(
            late <= abandoned_notes,
            "{provider}: {late} notifications nobody waited for"
        );
        assert_eq!(delivered + abandoned_notes, 1100);
        let ring = a.stats().ring;
        assert_eq!(
            ring.failed, abandoned,
            "{provider}: abandoned transfers counted failed, once"
        );
        a.check_quiescent().unwrap();
    }
}
