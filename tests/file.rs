//! The `file` transport: registered files to and from registered memory, on the
//! engine's I/O workers, with every descriptor owned by its registration.

use std::path::PathBuf;
use std::time::Duration;

use ringxfer::{CancelResult, Config, Desc, Engine, Error, FailCode, FileOptions, Op, RegionId, Status};

const WAIT: Duration = Duration::from_secs(30);

/// One test at a time: the descriptor ledger counts the whole process's open files.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A scratch directory removed at the end of the test.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ringxfer-file-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn engine() -> Engine {
    Engine::new(Config {
        name: "files".into(),
        capacity: 64,
        ..Config::default()
    })
    .unwrap()
}

fn rw(len: u64) -> FileOptions {
    FileOptions {
        writable: true,
        create: true,
        len: Some(len),
        sync: false,
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One transfer to the engine itself, waited for; its final status.
fn move_bytes(e: &Engine, op: Op, local: &[Desc], file: &[Desc]) -> Status {
    let h = e.prepare(op, local, e.local_peer(), file, None).unwrap();
    e.post(h).unwrap();
    let status = e.wait(h, WAIT).unwrap();
    e.release(h).unwrap();
    status
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn bytes_survive_every_size_and_unaligned_offsets() {
    let _serial = serial();
    let dir = Scratch::new("sizes");
    let e = engine();
    let file = e.register_file(dir.path("kv.bin"), rw(80 << 20)).unwrap();
    let out = e.alloc_region(64 << 20).unwrap();
    let back = e.alloc_region(64 << 20).unwrap();
    for (i, &len) in [1usize, 7, 4096, 4097, (64 << 10) + 3, (1 << 20) + 5, 16 << 20, 64 << 20]
        .iter()
        .enumerate()
    {
        for &offset in &[0u64, 1, 4095, 12345] {
            let data = pattern(len, (i as u64) << 8 | offset);
            e.write_region(out, 0, &data).unwrap();
            let n = len as u64;
            assert_eq!(
                move_bytes(&e, Op::Write, &[Desc::new(out, 0, n)], &[Desc::new(file, offset, n)]),
                Status::Done
            );
            assert_eq!(
                move_bytes(&e, Op::Read, &[Desc::new(back, 0, n)], &[Desc::new(file, offset, n)]),
                Status::Done
            );
            let mut got = vec![0u8; len];
            e.read_region(back, 0, &mut got).unwrap();
            assert!(got == data, "{len} bytes at offset {offset} came back different");
        }
    }
    let s = e.stats();
    assert_eq!((s.ring.live, s.pins, s.open_files), (0, 0, 1));
}

#[test]
fn contiguous_batches_go_in_one_vectored_call_and_stop_at_end_of_file() {
    let _serial = serial();
    let dir = Scratch::new("vectored");
    let e = Engine::new(Config {
        name: "vectored".into(),
        capacity: 64,
        max_descs_per_xfer: 130,
        ..Config::default()
    })
    .unwrap();
    let file = e.register_file(dir.path("v.bin"), rw(200 * 1000)).unwrap();
    let mem = e.alloc_region(200 * 1000).unwrap();
    let back = e.alloc_region(200 * 1000).unwrap();
    let data = pattern(200 * 1000, 5);
    e.write_region(mem, 0, &data).unwrap();
    // 130 blocks of 1,000 bytes in one transfer: memory scattered (backwards), the
    // file side contiguous from an unaligned offset for 100 blocks (one vectored call
    // of 64 pieces, then one of 36), then a gap, then 30 more contiguous ones.
    let block = 1000u64;
    let local: Vec<Desc> = (0..130).map(|i| Desc::new(mem, (199 - i) * block, block)).collect();
    let mut remote: Vec<Desc> = (0..100).map(|i| Desc::new(file, 7 + i * block, block)).collect();
    remote.extend((100..130).map(|i| Desc::new(file, 7 + block + i * block, block)));
    assert_eq!(move_bytes(&e, Op::Write, &local, &remote), Status::Done);
    let gather: Vec<Desc> = local.iter().map(|d| Desc::new(back, d.offset, d.len)).collect();
    assert_eq!(move_bytes(&e, Op::Read, &gather, &remote), Status::Done);
    // The file holds the blocks in order, and they came back where they belong.
    let mut on_disk = vec![0u8; 100 * block as usize];
    std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(dir.path("v.bin")).unwrap(), &mut on_disk, 7)
        .unwrap();
    for (i, d) in local[..100].iter().enumerate() {
        let (at, n) = (d.offset as usize, block as usize);
        assert!(on_disk[i * n..(i + 1) * n] == data[at..at + n], "file block {i}");
    }
    for d in &local {
        let mut got = vec![0u8; block as usize];
        e.read_region(back, d.offset, &mut got).unwrap();
        let at = d.offset as usize;
        assert!(got == data[at..at + block as usize], "block at {at}");
    }
    // A vectored read that crosses the end of the file ends END_OF_FILE.
    std::fs::write(dir.path("short.bin"), vec![3u8; 6000]).unwrap();
    let short = e.register_file(dir.path("short.bin"), rw(8192)).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path("short.bin"))
        .unwrap()
        .set_len(6000)
        .unwrap();
    let into = [Desc::new(back, 0, 4096), Desc::new(back, 8192, 4096)];
    let from = [Desc::new(short, 0, 4096), Desc::new(short, 4096, 4096)];
    assert_eq!(
        move_bytes(&e, Op::Read, &into, &from),
        Status::Failed(FailCode::END_OF_FILE)
    );
}

#[test]
fn batches_scatter_and_gather() {
    let _serial = serial();
    let dir = Scratch::new("batches");
    let e = engine();
    let file = e.register_file(dir.path("kv.bin"), rw(64 * 8192)).unwrap();
    let mem = e.alloc_region(64 * 4096).unwrap();
    let back = e.alloc_region(64 * 4096).unwrap();
    let data = pattern(64 * 4096, 9);
    e.write_region(mem, 0, &data).unwrap();
    for batch in [1u64, 2, 7, 64] {
        // Block i goes to the file's odd 4 KiB slots, backwards.
        let local: Vec<Desc> = (0..batch).map(|i| Desc::new(mem, i * 4096, 4096)).collect();
        let remote: Vec<Desc> = (0..batch)
            .map(|i| Desc::new(file, (2 * (batch - 1 - i) + 1) * 4096, 4096))
            .collect();
        assert_eq!(move_bytes(&e, Op::Write, &local, &remote), Status::Done);
        let gather: Vec<Desc> = (0..batch).map(|i| Desc::new(back, i * 4096, 4096)).collect();
        assert_eq!(move_bytes(&e, Op::Read, &gather, &remote), Status::Done);
        let mut got = vec![0u8; (batch * 4096) as usize];
        e.read_region(back, 0, &mut got).unwrap();
        assert_eq!(got, data[..got.len()], "batch of {batch}");
    }
}

#[test]
fn a_hundred_thousand_transfers_open_no_descriptor() {
    let _serial = serial();
    let dir = Scratch::new("ledger");
    let before = open_fds();
    {
        let e = engine();
        let unregistered = open_fds();
        let file = e.register_file(dir.path("kv.bin"), rw(1 << 20)).unwrap();
        std::fs::write(dir.path("ro.bin"), vec![7u8; 1 << 16]).unwrap();
        let read_only = e.register_file(dir.path("ro.bin"), FileOptions::default()).unwrap();
        std::fs::write(dir.path("short.bin"), vec![1u8; 1 << 16]).unwrap();
        let short = e.register_file(dir.path("short.bin"), FileOptions::default()).unwrap();
        // Truncated behind the engine's back: reads past 4 KiB now hit end of file.
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path("short.bin"))
            .unwrap()
            .set_len(4096)
            .unwrap();
        let full = e
            .register_file(
                "/dev/full",
                FileOptions {
                    writable: true,
                    len: Some(1 << 20),
                    ..Default::default()
                },
            )
            .unwrap();
        let mem = e.alloc_region(1 << 20).unwrap();
        let with_fds = open_fds();
        assert_eq!(with_fds, unregistered + 4, "one descriptor per registered file");

        let (mut done, mut failed, mut cancelled, mut backpressure) = (0u64, 0u64, 0u64, 0u64);
        for i in 0..100_000u64 {
            let off = (i % 16) * 4096;
            let (op, target, expect): (Op, RegionId, Option<FailCode>) = match i % 10 {
                0 => (Op::Write, read_only, None), // EBADF
                1 => (Op::Read, short, Some(FailCode::END_OF_FILE)),
                2 => (Op::Write, full, None), // ENOSPC
                n if n % 2 == 0 => (Op::Write, file, None),
                _ => (Op::Read, file, None),
            };
            let (local, remote) = ([Desc::new(mem, off, 4096)], [Desc::new(target, off, 4096)]);
            // `post` never waits for the workers, so a loop that leaves transfers to
            // them can fill the ring (on a busy 2-core VM the workers can go unscheduled
            // for milliseconds): RingFull is the back-pressure, and it passes.
            let since = std::time::Instant::now();
            let h = loop {
                match e.prepare(op, &local, e.local_peer(), &remote, None) {
                    Ok(h) => break h,
                    Err(Error::RingFull { .. }) if since.elapsed() < WAIT => {
                        backpressure += 1;
                        std::thread::sleep(Duration::from_micros(50));
                    }
                    Err(err) => panic!("transfer {i}: {err}"),
                }
            };
            e.post(h).unwrap();
            match i % 7 {
                // Cancelled while queued, or found already done.
                3 => match e.cancel(h).unwrap() {
                    CancelResult::InFlight | CancelResult::AlreadyComplete => {}
                    r @ (CancelResult::Cancelled | CancelResult::Abandoned) => {
                        unreachable!("a posted file transfer: {r:?}")
                    }
                },
                // Released while in flight: the worker's completion frees the slot,
                // and the handle is no longer the caller's to wait for.
                5 => {
                    e.release(h).unwrap();
                    assert!(matches!(e.wait(h, WAIT), Err(Error::StaleHandle { .. })));
                    continue;
                }
                _ => {}
            }
            match e.wait(h, WAIT).unwrap() {
                Status::Done => done += 1,
                Status::Cancelled => cancelled += 1,
                Status::Failed(code) => {
                    failed += 1;
                    if let Some(expected) = expect {
                        assert_eq!(code, expected);
                    } else {
                        assert_eq!(code.source(), ringxfer::ring::FailSource::Errno, "{code}");
                    }
                }
                other => panic!("{other:?}"),
            }
            e.release(h).unwrap();
        }
        assert_eq!(
            open_fds(),
            with_fds,
            "no descriptor opened or leaked by 100,000 transfers"
        );
        // Wait for the detached ones to finish.
        let start = std::time::Instant::now();
        while e.stats().ring.live > 0 && start.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(1));
        }
        let s = e.stats();
        assert_eq!((s.ring.live, s.pins, s.open_files), (0, 0, 4), "{s:?}");
        assert_eq!(s.ring.done + s.ring.failed + s.ring.cancelled, 100_000);
        assert!(
            done > 0 && failed > 0,
            "done {done}, failed {failed}, cancelled {cancelled}"
        );
        eprintln!(
            "file ledger: {done} done, {failed} failed, {cancelled} cancelled (+ detached), ring full {backpressure} times"
        );
    }
    assert_eq!(open_fds(), before, "engine drop closed every registered file");
}

#[test]
fn four_threads_two_files() {
    let _serial = serial();
    let dir = Scratch::new("threads");
    let e = engine();
    let files = [
        e.register_file(dir.path("a.bin"), rw(4 << 20)).unwrap(),
        e.register_file(dir.path("b.bin"), rw(4 << 20)).unwrap(),
    ];
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (e, files) = (&e, &files);
            s.spawn(move || {
                let mem = e.alloc_region(64 << 10).unwrap();
                let back = e.alloc_region(64 << 10).unwrap();
                let file = files[(t % 2) as usize];
                for i in 0..200u64 {
                    let data = pattern(64 << 10, t << 32 | i);
                    e.write_region(mem, 0, &data).unwrap();
                    let spot = Desc::new(file, (t / 2) * (2 << 20) + (i % 16) * (64 << 10), 64 << 10);
                    assert_eq!(
                        move_bytes(e, Op::Write, &[Desc::new(mem, 0, 64 << 10)], &[spot]),
                        Status::Done
                    );
                    assert_eq!(
                        move_bytes(e, Op::Read, &[Desc::new(back, 0, 64 << 10)], &[spot]),
                        Status::Done
                    );
                    let mut got = vec![0u8; 64 << 10];
                    e.read_region(back, 0, &mut got).unwrap();
                    assert!(got == data, "thread {t} round {i}");
                }
            });
        }
    });
    let s = e.stats();
    assert_eq!((s.ring.live, s.pins, s.ring.done), (0, 0, 4 * 200 * 2));
}

#[test]
fn bad_files_and_descriptors_are_refused_before_anything_moves() {
    let _serial = serial();
    let dir = Scratch::new("bad");
    let e = engine();
    assert!(matches!(
        e.register_file(dir.path("missing.bin"), FileOptions::default()),
        Err(Error::Io {
            kind: std::io::ErrorKind::NotFound,
            ..
        })
    ));
    assert!(matches!(
        e.register_file(&dir.0, FileOptions::default()),
        Err(Error::InvalidDescriptor { .. })
    ));
    std::fs::write(dir.path("empty.bin"), b"").unwrap();
    assert!(matches!(
        e.register_file(dir.path("empty.bin"), FileOptions::default()),
        Err(Error::InvalidDescriptor { .. })
    ));
    let file = e.register_file(dir.path("kv.bin"), rw(8192)).unwrap();
    let other = e.register_file(dir.path("kv2.bin"), rw(8192)).unwrap();
    let mem = e.alloc_region(8192).unwrap();
    let me = e.local_peer();
    // Past the end of the file, an unknown registration, file to file, a notification.
    assert!(matches!(
        e.prepare(
            Op::Read,
            &[Desc::new(mem, 0, 4096)],
            me,
            &[Desc::new(file, 6000, 4096)],
            None
        ),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        e.prepare(
            Op::Read,
            &[Desc::new(mem, 0, 64)],
            me,
            &[Desc::new(RegionId::from_raw(1 << 20 | 60), 0, 64)],
            None
        ),
        Err(Error::UnknownRegion { .. })
    ));
    assert!(matches!(
        e.prepare(
            Op::Write,
            &[Desc::new(file, 0, 64)],
            me,
            &[Desc::new(other, 0, 64)],
            None
        ),
        Err(Error::InvalidDescriptor { .. })
    ));
    assert!(matches!(
        e.prepare(
            Op::Write,
            &[Desc::new(mem, 0, 64)],
            me,
            &[Desc::new(file, 0, 64)],
            Some(b"n")
        ),
        Err(Error::InvalidDescriptor { .. })
    ));
    // A file is not memory: not readable as a region, not sendable to a peer.
    assert!(matches!(
        e.read_region(file, 0, &mut [0u8; 8]),
        Err(Error::InvalidDescriptor { .. })
    ));
    let peer_engine = engine();
    let dst = peer_engine.alloc_region(64).unwrap();
    let peer = e.load_peer(&peer_engine.local_metadata().unwrap()).unwrap();
    assert!(matches!(
        e.prepare(
            Op::Write,
            &[Desc::new(file, 0, 64)],
            peer,
            &[Desc::new(dst, 0, 64)],
            None
        ),
        Err(Error::InvalidDescriptor { .. })
    ));
    let s = e.stats();
    assert_eq!((s.ring.live, s.pins), (0, 0), "nothing held after refusals");
    // Deregistering a file in use is Busy; afterwards its descriptor is closed.
    let h = e
        .prepare(Op::Write, &[Desc::new(mem, 0, 64)], me, &[Desc::new(file, 0, 64)], None)
        .unwrap();
    assert!(matches!(e.deregister(file), Err(Error::Busy { .. })));
    e.release(h).unwrap();
    let fds = open_fds();
    e.deregister(file).unwrap();
    assert_eq!(open_fds(), fds - 1);
    assert_eq!(e.stats().open_files, 1);
}

#[test]
fn without_workers_file_transfers_are_refused_and_stay_prepared() {
    let _serial = serial();
    let dir = Scratch::new("noworkers");
    let e = Engine::new(Config {
        name: "nw".into(),
        file_workers: 0,
        ..Config::default()
    })
    .unwrap();
    let file = e.register_file(dir.path("kv.bin"), rw(4096)).unwrap();
    let mem = e.alloc_region(4096).unwrap();
    let h = e
        .prepare(
            Op::Write,
            &[Desc::new(mem, 0, 4096)],
            e.local_peer(),
            &[Desc::new(file, 0, 4096)],
            None,
        )
        .unwrap();
    assert!(matches!(
        e.post(h),
        Err(Error::InvalidConfig {
            field: "file_workers",
            ..
        })
    ));
    assert_eq!(e.status(h).unwrap(), Status::Reserved);
    e.release(h).unwrap();
    // Memory to memory within the engine needs no worker.
    let other = e.alloc_region(4096).unwrap();
    assert_eq!(
        move_bytes(&e, Op::Write, &[Desc::new(mem, 0, 4096)], &[Desc::new(other, 0, 4096)]),
        Status::Done
    );
}

#[test]
fn durable_writes_sync_before_done() {
    let _serial = serial();
    let dir = Scratch::new("sync");
    let e = engine();
    let file = e
        .register_file(
            dir.path("kv.bin"),
            FileOptions {
                sync: true,
                ..rw(1 << 20)
            },
        )
        .unwrap();
    let mem = e.alloc_region(1 << 20).unwrap();
    let data = pattern(1 << 20, 5);
    e.write_region(mem, 0, &data).unwrap();
    assert_eq!(
        move_bytes(
            &e,
            Op::Write,
            &[Desc::new(mem, 0, 1 << 20)],
            &[Desc::new(file, 0, 1 << 20)]
        ),
        Status::Done
    );
    assert_eq!(
        std::fs::read(dir.path("kv.bin")).unwrap(),
        data,
        "visible to any reader of the file"
    );
}

#[test]
fn mapped_files_move_the_same_bytes() {
    let _serial = serial();
    let dir = Scratch::new("mapped");
    let e = engine();
    std::fs::write(dir.path("kv.bin"), vec![0u8; 4 << 20]).unwrap();
    // SAFETY: nothing truncates the scratch file while it is registered.
    let file = unsafe {
        e.register_file_mapped(
            dir.path("kv.bin"),
            FileOptions {
                writable: true,
                sync: true,
                ..Default::default()
            },
        )
    }
    .unwrap();
    let mem = e.alloc_region(4 << 20).unwrap();
    let back = e.alloc_region(4 << 20).unwrap();
    for (len, offset) in [(1usize, 0u64), (4097, 3), (1 << 20, 12345), (2 << 20, 1 << 20)] {
        let data = pattern(len, offset);
        e.write_region(mem, 0, &data).unwrap();
        let n = len as u64;
        assert_eq!(
            move_bytes(&e, Op::Write, &[Desc::new(mem, 0, n)], &[Desc::new(file, offset, n)]),
            Status::Done
        );
        for _ in 0..3 {
            assert_eq!(
                move_bytes(&e, Op::Read, &[Desc::new(back, 0, n)], &[Desc::new(file, offset, n)]),
                Status::Done
            );
            let mut got = vec![0u8; len];
            e.read_region(back, 0, &mut got).unwrap();
            assert!(got == data, "{len} bytes at {offset}");
        }
        // Written through the mapping, visible to a plain reader of the file.
        let on_disk = std::fs::read(dir.path("kv.bin")).unwrap();
        assert!(on_disk[offset as usize..][..len] == data[..]);
    }
    // Read-only and mapped: reads work, a write fails like a pwrite would (EBADF).
    // SAFETY: as above.
    let ro = unsafe { e.register_file_mapped(dir.path("kv.bin"), FileOptions::default()) }.unwrap();
    assert_eq!(
        move_bytes(&e, Op::Read, &[Desc::new(back, 0, 4096)], &[Desc::new(ro, 0, 4096)]),
        Status::Done
    );
    let ebadf = ringxfer::FailCode::new(ringxfer::ring::FailSource::Errno, 9);
    assert_eq!(
        move_bytes(&e, Op::Write, &[Desc::new(mem, 0, 4096)], &[Desc::new(ro, 0, 4096)]),
        Status::Failed(ebadf)
    );
    // Devices are not mapped.
    let device = FileOptions {
        len: Some(4096),
        ..Default::default()
    };
    // SAFETY: refused before anything is mapped.
    let refused = unsafe { e.register_file_mapped("/dev/zero", device) };
    assert!(matches!(refused, Err(Error::InvalidDescriptor { .. })));
    e.deregister(ro).unwrap();
    let s = e.stats();
    assert_eq!((s.ring.live, s.pins, s.open_files), (0, 0, 1));
    e.deregister(file).unwrap();
    assert_eq!(e.stats().open_files, 0);
}
