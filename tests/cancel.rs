//! Cancel and deadlines on every transport (the cuda transport's, against the fake
//! driver, are in `tests/cuda.rs driver_calls_child`; the fabric's abandon in
//! `tests/fabric.rs`): each transfer reaches a terminal state, its slot is freed
//! exactly once, and the ledger ends at zero.

use std::time::{Duration, Instant};

use ringxfer::ring::{CancelResult, FailCode, Released, Status};
use ringxfer::{Config, Desc, Engine, Error, FileOptions, Op, SimConfig};

/// A sim engine whose transfers stall for ever unless cancelled (the sim's own
/// tick deadline off), with the engine's deadline `deadline`.
fn stalling_sim(deadline: Option<Duration>) -> Engine {
    Engine::new(Config {
        name: "cancel-sim".into(),
        capacity: 64,
        deadline,
        sim: Some(SimConfig {
            stall: 255,
            fail: 0,
            duplicate: 0,
            replay: 0,
            deadline_ticks: u64::MAX,
            ..SimConfig::default()
        }),
        ..Config::default()
    })
    .unwrap()
}

/// Drives progress until `f` holds (10 s at most).
fn until(e: &Engine, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        e.progress();
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_sim_transfer_in_flight_is_cancelled_and_its_slot_freed_once() {
    let e = stalling_sim(None);
    let peer = e.sim_peer().unwrap();
    let region = e.alloc_region(1 << 16).unwrap();
    let d = Desc::new(region, 0, 4096);
    let h = e.prepare(Op::Write, &[d], peer, &[d], Some(b"never")).unwrap();
    e.post(h).unwrap();
    e.progress();
    assert_eq!(e.status(h).unwrap(), Status::Posted, "the sim stalls it");
    assert_eq!(e.cancel(h).unwrap(), CancelResult::InFlight);
    assert_eq!(e.wait(h, Duration::from_secs(5)).unwrap(), Status::Cancelled);
    // Asked again: it has ended.
    assert_eq!(e.cancel(h).unwrap(), CancelResult::AlreadyComplete);
    let before = e.stats().ring;
    assert_eq!(e.release(h).unwrap(), Released::Freed);
    let after = e.stats().ring;
    assert_eq!(
        (after.freed - before.freed, after.cancelled),
        (1, 1),
        "freed once, counted once"
    );
    assert!(matches!(e.release(h), Err(Error::StaleHandle { .. })));
    // A cancelled transfer's notification is not delivered.
    let mut buf = [0u8; 256];
    e.sim_drain();
    assert!(e.pop_notification(&mut buf).unwrap().is_none());
    e.check_quiescent().unwrap();
}

#[test]
fn a_stalled_sim_transfer_fails_at_its_deadline_and_lets_go_later() {
    let e = stalling_sim(Some(Duration::from_millis(20)));
    let peer = e.sim_peer().unwrap();
    let region = e.alloc_region(1 << 16).unwrap();
    let d = Desc::new(region, 0, 4096);
    // One with the engine's deadline, one with its own (none at all).
    let timed = e.prepare(Op::Write, &[d], peer, &[d], None).unwrap();
    let untimed = e.prepare(Op::Write, &[d], peer, &[d], None).unwrap();
    e.set_deadline(untimed, None).unwrap();
    let start = Instant::now();
    e.post(timed).unwrap();
    e.post(untimed).unwrap();
    assert_eq!(
        e.wait(timed, Duration::from_secs(5)).unwrap(),
        Status::Failed(FailCode::TIMEOUT)
    );
    assert!(start.elapsed() >= Duration::from_millis(20));
    // The other has no deadline: still in flight long after.
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(e.status(untimed).unwrap(), Status::Posted);
    assert!(matches!(
        e.wait(untimed, Duration::from_millis(5)),
        Err(Error::Timeout { .. })
    ));
    // A deadline is chosen before posting only.
    assert!(matches!(
        e.set_deadline(untimed, Some(Duration::from_millis(1))),
        Err(Error::WrongState { .. })
    ));
    // The expired transfer's slot is still the sim's: released, it is detached, and
    // freed when the sim lets go; its outcome stays TIMEOUT whatever the sim says.
    assert_eq!(e.cancel(timed).unwrap(), CancelResult::AlreadyComplete);
    assert_eq!(e.release(timed).unwrap(), Released::Detached);
    assert_eq!(e.stats().ring.live, 2);
    assert_eq!(e.cancel(untimed).unwrap(), CancelResult::InFlight);
    assert_eq!(e.wait(untimed, Duration::from_secs(5)).unwrap(), Status::Cancelled);
    e.release(untimed).unwrap();
    e.sim_drain();
    let ring = e.stats().ring;
    assert_eq!((ring.live, ring.acquired, ring.freed), (0, 2, 2));
    e.check_quiescent().unwrap();
}

#[test]
fn a_shorter_deadline_for_one_transfer() {
    // The engine's deadline is long; this transfer's is 10 ms.
    let e = stalling_sim(Some(Duration::from_secs(3600)));
    let peer = e.sim_peer().unwrap();
    let region = e.alloc_region(1 << 16).unwrap();
    let d = Desc::new(region, 0, 4096);
    let h = e.prepare(Op::Read, &[d], peer, &[d], None).unwrap();
    e.set_deadline(h, Some(Duration::from_millis(10))).unwrap();
    e.post(h).unwrap();
    assert_eq!(
        e.wait(h, Duration::from_secs(5)).unwrap(),
        Status::Failed(FailCode::TIMEOUT)
    );
    e.release(h).unwrap();
    e.sim_drain();
    e.check_quiescent().unwrap();
}

fn file_engine(deadline: Option<Duration>) -> (Engine, std::path::PathBuf) {
    let e = Engine::new(Config {
        name: "cancel-file".into(),
        capacity: 64,
        file_workers: 1,
        deadline,
        ..Config::default()
    })
    .unwrap();
    let path = std::env::temp_dir().join(format!("ringxfer-cancel-{}-{:?}", std::process::id(), deadline));
    std::fs::write(&path, vec![7u8; 1 << 16]).unwrap();
    (e, path)
}

#[test]
fn a_file_transfer_on_a_stalled_filesystem_fails_at_its_deadline() {
    let (e, path) = file_engine(Some(Duration::from_millis(20)));
    let file = e.register_file(&path, FileOptions::default()).unwrap();
    let region = e.alloc_region(1 << 16).unwrap();
    e.stall_file_io(true);
    let h = e
        .prepare(
            Op::Read,
            &[Desc::new(region, 0, 4096)],
            ringxfer::PeerId::SELF,
            &[Desc::new(file, 0, 4096)],
            None,
        )
        .unwrap();
    e.post(h).unwrap();
    // Not `wait`: a waiter takes a queued job and would stall in its I/O itself.
    until(&e, "the deadline fails the transfer", || {
        e.status(h).unwrap() == Status::Failed(FailCode::TIMEOUT)
    });
    // Cancel says it ended; release detaches it (the worker still has it).
    assert_eq!(e.cancel(h).unwrap(), CancelResult::AlreadyComplete);
    assert_eq!(e.release(h).unwrap(), Released::Detached);
    assert_eq!(e.stats().ring.live, 1, "the slot stays the worker's");
    assert!(e.check_quiescent().is_err());
    // The filesystem comes back: the worker ends it, and its slot is freed once.
    e.stall_file_io(false);
    until(&e, "the worker lets go", || e.stats().ring.live == 0);
    let ring = e.stats().ring;
    assert_eq!((ring.acquired, ring.freed, ring.failed), (1, 1, 1));
    e.check_quiescent().unwrap();
    drop(e);
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_queued_file_transfer_is_cancelled_and_a_running_one_completes() {
    let (e, path) = file_engine(None);
    let file = e.register_file(&path, FileOptions::default()).unwrap();
    let region = e.alloc_region(1 << 16).unwrap();
    let read = |at: u64| {
        let h = e
            .prepare(
                Op::Read,
                &[Desc::new(region, at, 4096)],
                ringxfer::PeerId::SELF,
                &[Desc::new(file, at, 4096)],
                None,
            )
            .unwrap();
        e.post(h).unwrap();
        h
    };
    e.stall_file_io(true);
    // The one worker takes the first and stalls in it; the second stays queued.
    let running = read(0);
    std::thread::sleep(Duration::from_millis(20));
    let queued = read(4096);
    assert_eq!(e.cancel(running).unwrap(), CancelResult::InFlight);
    assert_eq!(e.cancel(queued).unwrap(), CancelResult::InFlight);
    e.stall_file_io(false);
    assert_eq!(e.wait(running, Duration::from_secs(5)).unwrap(), Status::Done);
    assert_eq!(e.wait(queued, Duration::from_secs(5)).unwrap(), Status::Cancelled);
    e.release(running).unwrap();
    e.release(queued).unwrap();
    let ring = e.stats().ring;
    assert_eq!((ring.done, ring.cancelled, ring.live), (1, 1, 0));
    e.check_quiescent().unwrap();
    drop(e);
    let _ = std::fs::remove_file(path);
}

#[test]
fn the_ledger_counts_what_transports_hold_and_notifications_not_popped() {
    let e = stalling_sim(None);
    let peer = e.sim_peer().unwrap();
    let region = e.alloc_region(1 << 16).unwrap();
    let d = Desc::new(region, 0, 4096);
    let h = e.prepare(Op::Write, &[d], peer, &[d], None).unwrap();
    e.post(h).unwrap();
    e.release(h).unwrap();
    // Released (detached) but the sim still has it: not quiescent, and said so.
    assert_eq!(e.stats().transport_held, 1);
    match e.check_quiescent() {
        Err(Error::NotQuiescent { transport_held, .. }) => assert_eq!(transport_held, 1),
        other => panic!("{other:?}"),
    }
    e.sim_drain();
    assert_eq!(e.stats().transport_held, 0);
    e.check_quiescent().unwrap();

    // A notification delivered and not popped is held too.
    let e = Engine::new(Config {
        name: "ledger-notes".into(),
        capacity: 8,
        sim: Some(SimConfig {
            stall: 0,
            delay: 0,
            fail: 0,
            duplicate: 0,
            replay: 0,
            drop_notification: 0,
            duplicate_notification: 0,
            ..SimConfig::default()
        }),
        ..Config::default()
    })
    .unwrap();
    let peer = e.sim_peer().unwrap();
    let region = e.alloc_region(1 << 16).unwrap();
    let d = Desc::new(region, 0, 4096);
    let h = e.prepare(Op::Write, &[d], peer, &[d], Some(b"ready")).unwrap();
    e.post(h).unwrap();
    assert_eq!(e.wait(h, Duration::from_secs(5)).unwrap(), Status::Done);
    e.release(h).unwrap();
    match e.check_quiescent() {
        Err(Error::NotQuiescent {
            notifications_queued, ..
        }) => assert_eq!(notifications_queued, 1),
        other => panic!("{other:?}"),
    }
    let mut buf = [0u8; 256];
    assert!(e.pop_notification(&mut buf).unwrap().is_some());
    e.check_quiescent().unwrap();
}
