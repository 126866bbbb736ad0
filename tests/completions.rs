//! The completion queue on every transport it can be driven on here (local, file,
//! sim, fabric; the cuda transport's in `tests/cuda.rs driver_calls_child`): each
//! transfer that asked for a report is reported exactly once, whichever way it
//! ended, with its tag; none that did not ask ever is; a full queue refuses at the
//! ask; the eventfd is readable exactly while completions wait.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use ringxfer::fabric::FabricConfig;
use ringxfer::ring::{CancelResult, FailCode, Status};
use ringxfer::{Completion, Config, Desc, Engine, Error, FileOptions, Handle, Op, SimConfig};

#[path = "support/skip.rs"]
mod skip;

/// Polls until `n` completions came (10 s at most); they are returned by handle.
fn collect(e: &Engine, n: usize) -> HashMap<Handle, Completion> {
    let mut seen = HashMap::new();
    let mut out = [Completion::EMPTY; 8];
    let start = Instant::now();
    while seen.len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "only {} of {n} reported",
            seen.len()
        );
        if !e.wait_any(Duration::from_millis(10)).unwrap() {
            continue;
        }
        let got = e.poll_completions(&mut out);
        for c in &out[..got] {
            assert!(seen.insert(c.handle, *c).is_none(), "{:?} reported twice", c.handle);
        }
    }
    seen
}

/// Whether `fd` is readable now.
fn readable(fd: RawFd, wait: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as i32) };
    n == 1 && pfd.revents & libc::POLLIN != 0
}

fn engine(name: &str) -> Engine {
    Engine::new(Config {
        name: name.into(),
        capacity: 64,
        completion_queue: 16,
        ..Config::default()
    })
    .unwrap()
}

#[test]
fn local_transfers_are_reported_once_with_their_tags_and_others_never() {
    let a = engine("a");
    let b = engine("b");
    let src = a.alloc_region(1 << 16).unwrap();
    let dst = b.alloc_region(1 << 16).unwrap();
    let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    let mut asked = HashMap::new();
    let mut silent = Vec::new();
    for i in 0..12u64 {
        let d = |r| Desc::new(r, i * 4096, 4096);
        let h = a.prepare(Op::Write, &[d(src)], peer, &[d(dst)], None).unwrap();
        if i % 3 != 0 {
            a.report_completion(h, 1000 + i).unwrap();
            asked.insert(h, 1000 + i);
        } else {
            silent.push(h);
        }
        a.post(h).unwrap();
    }
    let seen = collect(&a, asked.len());
    for (h, tag) in &asked {
        assert_eq!((seen[h].status, seen[h].tag), (Status::Done, *tag));
    }
    // Nothing else comes: the silent ones never report.
    let mut out = [Completion::EMPTY; 8];
    assert_eq!(a.poll_completions(&mut out), 0);
    for h in asked.keys().chain(&silent) {
        assert_eq!(a.status(*h).unwrap(), Status::Done, "still readable until released");
        a.release(*h).unwrap();
    }
    a.check_quiescent().unwrap();
}

#[test]
fn a_full_queue_refuses_at_the_ask_and_released_transfers_give_entries_back() {
    let a = engine("full");
    let src = a.alloc_region(1 << 16).unwrap();
    let me = a.local_peer();
    let d = |i: u64| Desc::new(src, i * 64, 64);
    let prepare = |i| a.prepare(Op::Write, &[d(i)], me, &[d(i + 100)], None).unwrap();
    let hs: Vec<_> = (0..16).map(prepare).collect();
    for (i, &h) in hs.iter().enumerate() {
        a.report_completion(h, i as u64).unwrap();
    }
    let extra = prepare(20);
    assert!(matches!(
        a.report_completion(extra, 99),
        Err(Error::CompletionQueueFull { capacity: 16 })
    ));
    // Asking again for one already asked changes its tag and takes nothing.
    a.report_completion(hs[0], 500).unwrap();
    // A prepared transfer released gives its entry back, unreported.
    a.release(hs[1]).unwrap();
    a.report_completion(extra, 99).unwrap();
    // A prepared transfer cancelled is reported, CANCELLED.
    assert_eq!(a.cancel(hs[2]).unwrap(), CancelResult::Cancelled);
    // The rest run; while 15 reports wait unpolled, the queue stays full.
    for &h in hs.iter().skip(3).chain([&hs[0], &extra]) {
        a.post(h).unwrap();
    }
    let more = prepare(21);
    assert!(matches!(
        a.report_completion(more, 1),
        Err(Error::CompletionQueueFull { .. })
    ));
    let seen = collect(&a, 15);
    assert_eq!(seen[&hs[0]].tag, 500);
    assert_eq!(seen[&hs[2]].status, Status::Cancelled);
    assert_eq!(seen[&extra].tag, 99);
    assert!(!seen.contains_key(&hs[1]));
    // Polled: room again.
    a.report_completion(more, 1).unwrap();
    a.release(more).unwrap();
    for h in seen.keys() {
        a.release(*h).unwrap();
    }
    a.check_quiescent().unwrap();
}

#[test]
fn file_transfers_wake_the_eventfd_and_polling_clears_it() {
    let dir = std::env::temp_dir().join(format!("ringxfer-completions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = engine("file");
    let src = a.alloc_region(1 << 20).unwrap();
    let options = FileOptions {
        writable: true,
        create: true,
        len: Some(1 << 20),
        sync: false,
    };
    let file = a.register_file(dir.join("f.bin"), options).unwrap();
    let fd = a.completion_fd().unwrap();
    assert_eq!(a.completion_fd().unwrap(), fd, "one descriptor");
    // The first call makes it readable once; a poll clears it.
    assert!(readable(fd, Duration::ZERO));
    assert_eq!(a.poll_completions(&mut [Completion::EMPTY; 4]), 0);
    assert!(!readable(fd, Duration::ZERO), "cleared by the poll");
    for round in 0..20u64 {
        let d = |r| Desc::new(r, 0, 256 << 10);
        let h = a
            .prepare(Op::Write, &[d(src)], a.local_peer(), &[d(file)], None)
            .unwrap();
        a.report_completion(h, round).unwrap();
        a.post(h).unwrap();
        // An I/O worker runs it; the caller sleeps in poll(2) on the descriptor.
        assert!(readable(fd, Duration::from_secs(10)), "round {round}: no wake-up");
        let mut out = [Completion::EMPTY; 4];
        assert_eq!(a.poll_completions(&mut out), 1);
        assert_eq!((out[0].handle, out[0].status, out[0].tag), (h, Status::Done, round));
        assert!(
            !readable(fd, Duration::ZERO),
            "round {round}: readable with nothing queued"
        );
        a.release(h).unwrap();
    }
    // A stalled file system: the deadline reports TIMEOUT once; the late completion
    // reports nothing more.
    a.stall_file_io(true);
    let d = |r| Desc::new(r, 0, 4096);
    let h = a
        .prepare(Op::Write, &[d(src)], a.local_peer(), &[d(file)], None)
        .unwrap();
    a.report_completion(h, 77).unwrap();
    a.set_deadline(h, Some(Duration::from_millis(5))).unwrap();
    a.post(h).unwrap();
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(a.status(h).unwrap(), Status::Failed(FailCode::TIMEOUT));
    assert!(readable(fd, Duration::ZERO));
    let mut out = [Completion::EMPTY; 4];
    assert_eq!(a.poll_completions(&mut out), 1);
    assert_eq!((out[0].status, out[0].tag), (Status::Failed(FailCode::TIMEOUT), 77));
    a.release(h).unwrap();
    a.stall_file_io(false);
    let start = Instant::now();
    while a.stats().ring.live != 0 {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        a.poll_completions(&mut out),
        0,
        "the late completion is not reported again"
    );
    a.check_quiescent().unwrap();
    drop(a);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sim_transfers_with_every_fault_are_each_reported_once() {
    let e = Engine::new(Config {
        name: "sim".into(),
        capacity: 64,
        completion_queue: 64,
        deadline: Some(Duration::from_millis(50)),
        sim: Some(SimConfig {
            seed: 11,
            deadline_ticks: 8,
            ..SimConfig::default()
        }),
        ..Config::default()
    })
    .unwrap();
    let peer = e.sim_peer().unwrap();
    let region = e.alloc_region(1 << 16).unwrap();
    // Asked transfers are released when their report is polled; the others once
    // they read a final status.
    let mut asked = std::collections::HashSet::new();
    let mut silent = Vec::new();
    let (mut reported, mut asked_total) = (0u64, 0u64);
    let mut out = [Completion::EMPTY; 16];
    let mut poll = |e: &Engine, asked: &mut std::collections::HashSet<Handle>| {
        let n = e.poll_completions(&mut out);
        for c in &out[..n] {
            assert!(c.status.is_terminal());
            assert!(
                asked.remove(&c.handle),
                "{:?}: reported twice, or never asked",
                c.handle
            );
            e.release(c.handle).unwrap();
        }
        n as u64
    };
    for i in 0..4000u64 {
        let d = Desc::new(region, (i % 16) * 1024, 1024);
        match e.prepare(Op::Write, &[d], peer, &[d], None) {
            Ok(h) => {
                if i % 4 != 0 && e.report_completion(h, i).is_ok() {
                    asked.insert(h);
                    asked_total += 1;
                } else {
                    silent.push(h);
                }
                e.post(h).unwrap();
                if i % 7 == 0 {
                    e.cancel(h).unwrap();
                }
            }
            Err(Error::RingFull { .. }) => {}
            Err(err) => panic!("{err}"),
        }
        reported += poll(&e, &mut asked);
        silent.retain(|&h| !(e.status(h).unwrap().is_terminal() && e.release(h).is_ok()));
    }
    let start = Instant::now();
    while !asked.is_empty() || !silent.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} asked and unreported",
            asked.len()
        );
        e.sim_drain();
        reported += poll(&e, &mut asked);
        silent.retain(|&h| !(e.status(h).unwrap().is_terminal() && e.release(h).is_ok()));
    }
    let start = Instant::now();
    while e.stats().ring.live != 0 {
        assert!(start.elapsed() < Duration::from_secs(10));
        e.sim_drain();
        e.progress();
    }
    assert_eq!(
        e.poll_completions(&mut [Completion::EMPTY; 4]),
        0,
        "nothing reported twice"
    );
    let stats = e.stats();
    assert_eq!(reported, asked_total, "{stats:?}");
    assert!(
        stats.sim.expired > 0 && stats.ring.failed > 0 && stats.ring.cancelled > 0,
        "{stats:?}"
    );
    assert_eq!(stats.sim.misattributed, 0);
    e.check_quiescent().unwrap();
}

#[test]
fn fabric_transfers_are_reported_to_a_waiter_that_drives_progress() {
    for provider in ["tcp", "shm"] {
        let config = |name: &str| Config {
            name: name.into(),
            capacity: 64,
            completion_queue: 64,
            fabric: Some(FabricConfig {
                provider: Some(provider.into()),
                ..FabricConfig::default()
            }),
            ..Config::default()
        };
        let Some(a) = skip::fabric_engine(config("a")) else {
            return;
        };
        let Some(b) = skip::fabric_engine(Config {
            fabric: Some(FabricConfig {
                provider: Some(provider.into()),
                progress_thread: true,
                ..FabricConfig::default()
            }),
            ..config("b")
        }) else {
            return;
        };
        let src = a.alloc_region(1 << 20).unwrap();
        let dst = b.alloc_region(1 << 20).unwrap();
        let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
        let mut asked = HashMap::new();
        for i in 0..16u64 {
            let d = |r| Desc::new(r, i * 65536, 65536);
            let op = if i % 2 == 0 { Op::Write } else { Op::Read };
            let h = a.prepare(op, &[d(src)], peer, &[d(dst)], None).unwrap();
            a.report_completion(h, i).unwrap();
            a.post(h).unwrap();
            asked.insert(h, i);
        }
        let seen = collect(&a, asked.len());
        for (h, tag) in &asked {
            assert_eq!((seen[h].status, seen[h].tag), (Status::Done, *tag), "{provider}");
            a.release(*h).unwrap();
        }
        a.check_quiescent().unwrap();
    }
}
