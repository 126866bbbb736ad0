//! Dropping an engine with transfers in flight: the drop ends in bounded time and
//! leaves nothing of the engine's in the process — no file descriptor, no
//! shared-memory segment, no endpoint — whatever its transports were doing.
//!
//! (The cuda transport's case, with events that never complete, is in
//! `tests/cuda.rs driver_calls_child`, against the fake driver.)

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ringxfer::SimConfig;
use ringxfer::fabric::FabricConfig;
use ringxfer::{Config, Desc, Engine, FileOptions, Op};

#[path = "support/skip.rs"]
mod skip;

/// Open file descriptors and this process's segments are counted process-wide: one
/// test at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the process holds: open descriptors, and shared-memory segments named after
/// it.
fn held() -> (usize, usize) {
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let dir = std::env::var_os("RINGXFER_SHM_DIR").map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from);
    let prefix = format!("ringxfer-{:08x}", std::process::id());
    let segments = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .count();
    (fds, segments)
}

/// Drops `e`, checking that it takes less than `limit`.
fn drop_within(e: Engine, limit: Duration) {
    let start = Instant::now();
    drop(e);
    let took = start.elapsed();
    assert!(took < limit, "the drop took {took:?}");
}

#[test]
fn file_transfers_in_flight() {
    let _serial = serial();
    let before = held();
    let path = std::env::temp_dir().join(format!("ringxfer-shutdown-{}", std::process::id()));
    {
        let e = Engine::new(Config {
            name: "files".into(),
            capacity: 256,
            file_workers: 2,
            ..Config::default()
        })
        .unwrap();
        let memory = e.alloc_region(64 << 20).unwrap();
        let options = FileOptions {
            writable: true,
            create: true,
            len: Some(64 << 20),
            sync: false,
        };
        let file = e.register_file(&path, options).unwrap();
        let mut handles = Vec::new();
        for i in 0..200u64 {
            let at = (i % 64) << 20;
            let h = e
                .prepare(
                    Op::Write,
                    &[Desc::new(memory, at, 1 << 20)],
                    e.local_peer(),
                    &[Desc::new(file, at, 1 << 20)],
                    None,
                )
                .unwrap();
            e.post(h).unwrap();
            handles.push(h);
        }
        // Some released while in flight, the rest left to the drop.
        for h in handles.iter().step_by(2) {
            e.release(*h).unwrap();
        }
        drop_within(e, Duration::from_secs(20));
    }
    let _ = std::fs::remove_file(&path);
    assert_eq!(held(), before, "descriptors and segments after the drop");
}

#[test]
fn sim_transfers_that_never_end() {
    let _serial = serial();
    let before = held();
    let e = Engine::new(Config {
        name: "sim".into(),
        capacity: 64,
        sim: Some(SimConfig {
            stall: 255,
            deadline_ticks: u64::MAX,
            ..SimConfig::default()
        }),
        ..Config::default()
    })
    .unwrap();
    let peer = e.sim_peer().unwrap();
    let region = e.alloc_region(1 << 20).unwrap();
    for i in 0..32u64 {
        let h = e
            .prepare(
                Op::Write,
                &[Desc::new(region, i * 4096, 4096)],
                peer,
                &[Desc::new(region, i * 4096, 4096)],
                None,
            )
            .unwrap();
        e.post(h).unwrap();
        if i % 2 == 0 {
            e.release(h).unwrap();
        }
    }
    e.progress();
    assert!(e.stats().ring.live >= 32);
    drop_within(e, Duration::from_secs(10));
    assert_eq!(held(), before);
}

#[test]
fn fabric_transfers_in_flight() {
    let _serial = serial();
    let before = held();
    for provider in ["tcp", "shm"] {
        let engine = |name: &str, progress_thread: bool| {
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
        };
        let Some(a) = engine("a", false) else { return };
        let Some(b) = engine("b", true) else { return };
        let src = a.alloc_region(16 << 20).unwrap();
        let dst = b.alloc_region(16 << 20).unwrap();
        let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
        for i in 0..16 {
            let h = a
                .prepare(
                    Op::Write,
                    &[Desc::new(src, 0, 16 << 20)],
                    peer,
                    &[Desc::new(dst, 0, 16 << 20)],
                    Some(b"dropped"),
                )
                .unwrap();
            a.post(h).unwrap();
            if i % 2 == 0 {
                a.release(h).unwrap();
            }
        }
        drop_within(a, Duration::from_secs(10));
        drop_within(b, Duration::from_secs(10));
    }
    assert_eq!(held(), before, "descriptors (endpoints) and segments after the drops");
}
