//! File transfers allocate nothing after registration — on any thread: this binary's
//! allocator counts every thread's allocations (the I/O workers' included), so it holds
//! this one test only.

use std::time::Duration;

use ringxfer::{Config, Desc, Engine, FileOptions, Op, Status};

#[path = "support/counting.rs"]
mod counting;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

#[test]
fn file_transfers_allocate_nothing_on_any_thread() {
    let path = std::env::temp_dir().join(format!("ringxfer-file-alloc-{}", std::process::id()));
    let e = Engine::new(Config {
        name: "alloc".into(),
        capacity: 64,
        ..Config::default()
    })
    .unwrap();
    let file = e
        .register_file(
            &path,
            FileOptions {
                writable: true,
                create: true,
                len: Some(1 << 20),
                sync: false,
            },
        )
        .unwrap();
    let mem = e.alloc_region(1 << 20).unwrap();
    let me = e.local_peer();
    let cycle = |i: u64| {
        let off = (i % 256) * 4096;
        let op = if i.is_multiple_of(2) { Op::Write } else { Op::Read };
        let h = e
            .prepare(
                op,
                &[Desc::new(mem, off, 4096)],
                me,
                &[Desc::new(file, off, 4096)],
                None,
            )
            .unwrap();
        e.post(h).unwrap();
        assert_eq!(e.wait(h, Duration::from_secs(10)).unwrap(), Status::Done);
        e.release(h).unwrap();
    };
    // Warm up: the workers' first wake-ups, the first page faults.
    (0..1000).for_each(cycle);
    let before = counting::allocations();
    (0..100_000).for_each(cycle);
    let after = counting::allocations();
    assert_eq!(
        after,
        before,
        "{} allocations over 100,000 file transfers",
        after - before
    );
    drop(e);
    let _ = std::fs::remove_file(&path);
}
