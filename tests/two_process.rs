//! Two processes on one host: the test re-runs its own binary as the target
//! (`child_target`, ignored in normal runs) and drives transfers into it.

use std::io::{BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use ringxfer::{Config, Desc, Engine, Error, FailCode, Op, RegionId, Status};

#[path = "support/child.rs"]
mod child;
use child::read_tagged;

const SMALL: u64 = 4096;
const SMALL_SLOTS: u64 = 256;
const LARGE: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(10);

/// The tests below run one at a time: an `Engine::new` in one sweeps the segments
/// the other's killed target left, which the second test checks for.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn config(name: &str) -> Config {
    Config {
        name: name.into(),
        capacity: 256,
        ..Config::default()
    }
}

/// The target side, run in a child process by the tests below.
#[test]
#[ignore = "the child process of the two-process tests; run by them"]
fn child_target() {
    let b = Engine::new(config("target")).unwrap();
    let small = b.alloc_region((SMALL * SMALL_SLOTS) as usize).unwrap();
    let large = b.alloc_region(LARGE as usize).unwrap();
    // Memory the caller allocated, not in a shared segment: reached with process_vm_*.
    let mut heap = vec![0u8; SMALL as usize];
    // SAFETY: `heap` outlives the engine (declared first, dropped last) and is only
    // read after the parent's writes finished.
    let own = unsafe { b.register_dram(heap.as_mut_ptr(), heap.len()) }.unwrap();
    let server = b.serve_metadata("127.0.0.1:0").unwrap();
    println!(
        "ADDR {} {} {} {}",
        server.local_addr(),
        small.to_raw(),
        large.to_raw(),
        own.to_raw()
    );
    std::io::stdout().flush().unwrap();

    let rx = child::stdin_lines();
    let mut buf = [0u8; 256];
    let mut notifications = 0u64;
    let mut expected = None;
    let mut large_crc_before = 0;
    loop {
        while let Some(n) = b.pop_notification(&mut buf).unwrap() {
            let text = std::str::from_utf8(&buf[..n.len]).unwrap();
            assert_eq!(
                text,
                format!("batch {notifications}"),
                "notifications arrive in order, none lost"
            );
            notifications += 1;
        }
        match rx.try_recv() {
            Ok(line) if line == "deregister" => {
                let mut bytes = vec![0u8; LARGE as usize];
                b.read_region(large, 0, &mut bytes).unwrap();
                large_crc_before = crc32fast::hash(&bytes);
                b.deregister(own).unwrap();
                b.deregister(large).unwrap();
                println!("DEREGISTERED");
                std::io::stdout().flush().unwrap();
            }
            Ok(line) => expected = line.strip_prefix("finish ").map(|n| n.parse::<u64>().unwrap()),
            Err(std::sync::mpsc::TryRecvError::Disconnected) if expected.is_none() => return,
            Err(_) => {}
        }
        if expected.is_some_and(|e| notifications >= e) {
            break;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    let mut bytes = vec![0u8; (SMALL * SMALL_SLOTS) as usize];
    b.read_region(small, 0, &mut bytes).unwrap();
    let small_crc = crc32fast::hash(&bytes);
    // `large` was deregistered on request; its last image was taken before that.
    let large_crc = large_crc_before;
    let s = b.stats();
    println!(
        "RESULT {small_crc} {large_crc} {} {notifications} {} {}",
        crc32fast::hash(&heap),
        s.ring.live,
        s.notifications_stale
    );
    std::io::stdout().flush().unwrap();
    drop(server);
    drop(b);
}

struct Target {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    addr: String,
    small: RegionId,
    large: RegionId,
    own: RegionId,
}

fn spawn_target() -> Target {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_target",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            "--quiet",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let line = read_tagged(&mut stdout, "ADDR ");
    let mut parts = line.split_whitespace();
    let addr = parts.next().unwrap().to_owned();
    let mut id = || RegionId::from_raw(parts.next().unwrap().parse().unwrap());
    let (small, large, own) = (id(), id(), id());
    Target {
        child,
        stdin,
        stdout,
        addr,
        small,
        large,
        own,
    }
}

/// Posts, retrying while the target's inbox lane is full (it is popping meanwhile).
fn post_with_backpressure(a: &Engine, h: ringxfer::Handle) {
    let start = Instant::now();
    loop {
        match a.post(h) {
            Ok(()) => return,
            Err(Error::InboxFull { .. }) if start.elapsed() < WAIT => std::thread::sleep(Duration::from_micros(20)),
            Err(e) => panic!("post failed: {e}"),
        }
    }
}

#[test]
fn two_processes_move_bytes_and_notifications() {
    let _serial = serial();
    let mut t = spawn_target();
    let a = Engine::new(config("initiator")).unwrap();
    let src = a.alloc_region((SMALL * SMALL_SLOTS) as usize).unwrap();
    let big = a.alloc_region(LARGE as usize).unwrap();
    let peer = a.fetch_peer(t.addr.as_str()).unwrap();
    let mut notifications = 0u64;
    let mut transfers = 0u64;
    let mut send = |a: &Engine, local: Desc, remote: Desc| {
        let note = format!("batch {notifications}");
        let with_note = transfers % 100 == 99;
        let h = a
            .prepare(
                Op::Write,
                &[local],
                peer,
                &[remote],
                with_note.then_some(note.as_bytes()),
            )
            .unwrap();
        post_with_backpressure(a, h);
        assert_eq!(a.wait(h, WAIT).unwrap(), Status::Done);
        a.release(h).unwrap();
        notifications += u64::from(with_note);
        transfers += 1;
    };
    // 100,000 writes of 4 KiB: each stamps its block first, so the final image is
    // the last stamp of every block.
    for i in 0..100_000u64 {
        let off = (i % SMALL_SLOTS) * SMALL;
        a.write_region(src, off, &i.to_le_bytes()).unwrap();
        send(&a, Desc::new(src, off, SMALL), Desc::new(t.small, off, SMALL));
    }
    // 1,000 writes of 1 MiB.
    for i in 0..1_000u64 {
        a.write_region(big, (i * 8191) % (LARGE - 8), &i.to_le_bytes()).unwrap();
        send(&a, Desc::new(big, 0, LARGE), Desc::new(t.large, 0, LARGE));
    }
    // Into memory the target registered itself: process_vm_writev.
    let heap_src = a.alloc_region(SMALL as usize).unwrap();
    a.write_region(heap_src, 0, b"to the target's own heap").unwrap();
    let h = a
        .prepare(
            Op::Write,
            &[Desc::new(heap_src, 0, SMALL)],
            peer,
            &[Desc::new(t.own, 0, SMALL)],
            None,
        )
        .unwrap();
    a.post(h).unwrap();
    let cma = a.wait(h, WAIT).unwrap();
    a.release(h).unwrap();
    // The target deregisters two regions: writes to them now fail, rather than land in
    // memory it may have freed (its own heap) or that nobody reads (a segment).
    writeln!(t.stdin, "deregister").unwrap();
    read_tagged(&mut t.stdout, "DEREGISTERED");
    for (local, remote) in [
        (Desc::new(heap_src, 0, SMALL), Desc::new(t.own, 0, SMALL)),
        (Desc::new(big, 0, LARGE), Desc::new(t.large, 0, LARGE)),
    ] {
        let h = a.prepare(Op::Write, &[local], peer, &[remote], None).unwrap();
        a.post(h).unwrap();
        assert_eq!(a.wait(h, WAIT).unwrap(), Status::Failed(FailCode::REGION_GONE));
        a.release(h).unwrap();
    }
    writeln!(t.stdin, "finish {notifications}").unwrap();
    let result: Vec<u64> = read_tagged(&mut t.stdout, "RESULT ")
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    let [small_crc, large_crc, heap_crc, got_notes, target_live, stale] = result[..] else {
        panic!("{result:?}")
    };

    let mut bytes = vec![0u8; (SMALL * SMALL_SLOTS) as usize];
    a.read_region(src, 0, &mut bytes).unwrap();
    assert_eq!(small_crc as u32, crc32fast::hash(&bytes), "4 KiB blocks landed");
    let mut big_bytes = vec![0u8; LARGE as usize];
    a.read_region(big, 0, &mut big_bytes).unwrap();
    assert_eq!(large_crc as u32, crc32fast::hash(&big_bytes), "1 MiB blocks landed");
    match cma {
        Status::Done => {
            let mut heap = vec![0u8; SMALL as usize];
            a.read_region(heap_src, 0, &mut heap).unwrap();
            assert_eq!(heap_crc as u32, crc32fast::hash(&heap));
        }
        Status::Failed(code) => {
            // The kernel may forbid process_vm_writev (ptrace rules); the failure must
            // say so with its errno rather than corrupt anything.
            assert_eq!(code.source(), ringxfer::ring::FailSource::Errno, "{code}");
            eprintln!("process_vm_writev refused here: {code}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((got_notes, notifications), (1010, 1010));
    assert_eq!((target_live, stale), (0, 0));
    let s = a.stats();
    assert_eq!((s.ring.live, s.pins), (0, 0), "{s:?}");
    assert_eq!(s.ring.done, 101_000 + u64::from(cma == Status::Done));
    assert_eq!(s.ring.failed, 2);
    drop(t.stdin);
    assert!(t.child.wait().unwrap().success());
}

#[test]
fn a_killed_target_fails_transfers_with_peer_lost() {
    let _serial = serial();
    let mut t = spawn_target();
    let a = Engine::new(config("initiator")).unwrap();
    let src = a.alloc_region(SMALL as usize).unwrap();
    let peer = a.fetch_peer(t.addr.as_str()).unwrap();
    let write = |note: Option<&[u8]>| {
        a.prepare(
            Op::Write,
            &[Desc::new(src, 0, SMALL)],
            peer,
            &[Desc::new(t.small, 0, SMALL)],
            note,
        )
        .unwrap()
    };
    let h = write(None);
    a.post(h).unwrap();
    assert_eq!(a.wait(h, WAIT).unwrap(), Status::Done);
    a.release(h).unwrap();

    t.child.kill().unwrap();
    t.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(5)); // past the liveness check interval
    for _ in 0..10 {
        let h = write(None);
        a.post(h).unwrap();
        assert_eq!(a.wait(h, WAIT).unwrap(), Status::Failed(FailCode::PEER_LOST));
        a.release(h).unwrap();
    }
    // With a notification the post itself reports the lost peer once its lane is full.
    let h = write(Some(b"n"));
    match a.post(h) {
        Ok(()) => assert_eq!(a.wait(h, WAIT).unwrap(), Status::Failed(FailCode::PEER_LOST)),
        Err(e) => assert_eq!(e, Error::PeerLost { peer: peer.0 }),
    }
    a.release(h).unwrap();
    let s = a.stats();
    assert_eq!(
        (s.ring.live, s.pins, s.ring.failed),
        (0, 0, s.ring.failed.max(10)),
        "{s:?}"
    );
    assert!(
        matches!(a.fetch_peer(t.addr.as_str()), Err(Error::Io { .. })),
        "its metadata server died with it"
    );
    // The killed target could not unlink its shared-memory segments; the next engine
    // created on this host sweeps them.
    let dead = format!("ringxfer-{:08x}", t.child.id());
    let leftovers = || {
        let dir = std::env::var_os("RINGXFER_SHM_DIR").map_or_else(|| "/dev/shm".into(), std::path::PathBuf::from);
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&dead))
            .count()
    };
    assert!(leftovers() > 0, "the killed target's segments are still there");
    drop(Engine::new(config("sweeper")).unwrap());
    assert_eq!(leftovers(), 0, "and the next engine removed them");
}
