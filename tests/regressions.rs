//! The real bugs this project exists to make impossible, one named test each. Every
//! test says which report it guards against (see `shared/seeds/`).

use std::time::Duration;

use ringxfer::ring::{Outcome, SlotRing};
use ringxfer::{Config, Desc, Engine, Error, FailCode, Op, Status};

const WAIT: Duration = Duration::from_secs(5);

/// One test at a time: the memory check reads the whole process's resident size.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn pair(capacity: usize, inbox: usize) -> (Engine, Engine, ringxfer::PeerId, ringxfer::RegionId, ringxfer::RegionId) {
    let a = Engine::new(Config {
        name: "a".into(),
        capacity,
        inbox_capacity: inbox,
        ..Config::default()
    })
    .unwrap();
    let b = Engine::new(Config {
        name: "b".into(),
        capacity,
        inbox_capacity: inbox,
        ..Config::default()
    })
    .unwrap();
    let src = a.alloc_region(1 << 16).unwrap();
    let _ = b.alloc_region(64).unwrap(); // region ids differ between the two engines
    let dst = b.alloc_region(1 << 16).unwrap();
    let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    (a, b, peer, src, dst)
}

/// Prepares a WRITE of `len` bytes from the start of `src` to the start of `dst`.
fn write(
    a: &Engine,
    peer: ringxfer::PeerId,
    src: ringxfer::RegionId,
    dst: ringxfer::RegionId,
    len: u64,
    notif: Option<&[u8]>,
) -> ringxfer::Handle {
    a.prepare(
        Op::Write,
        &[Desc::new(src, 0, len)],
        peer,
        &[Desc::new(dst, 0, len)],
        notif,
    )
    .unwrap()
}

/// NIXL #1722 (1): the libfabric backend's `releaseReqH()` never deleted the
/// per-transfer request handle. Here a transfer owns no heap object at all: its slot
/// is preallocated and `release` puts it back, so after 100 × capacity transfers the
/// ring is exactly as it started.
#[test]
fn nixl_1722_release_frees_the_transfer() {
    let _serial = serial();
    let (a, _b, peer, src, dst) = pair(16, 16);
    for _ in 0..100 * 16 {
        let h = write(&a, peer, src, dst, 64, None);
        a.post(h).unwrap();
        a.release(h).unwrap();
    }
    let s = a.stats();
    assert_eq!((s.ring.live, s.ring.acquired, s.ring.freed, s.pins), (0, 1600, 1600, 0));
}

/// NIXL #1722 (2): a control request was taken from a 256-entry pool at post time and
/// returned only when a notification was sent, so transfers without notifications
/// drained the pool. Here the notification resource (a record in the peer's inbox
/// lane) is reserved only by transfers that carry a notification, and returned by
/// the same post whatever happens; thousands of transfers without notifications
/// leave the lane untouched and a full lane's worth of notified ones still fits.
#[test]
fn nixl_1722_transfers_without_notification_drain_nothing() {
    let _serial = serial();
    let (a, b, peer, src, dst) = pair(16, 8);
    for _ in 0..10_000 {
        let h = write(&a, peer, src, dst, 64, None);
        a.post(h).unwrap();
        a.release(h).unwrap();
    }
    for i in 0..8u8 {
        a.notify(peer, &[i]).unwrap();
    }
    assert_eq!(a.notify(peer, b"one too many"), Err(Error::InboxFull { peer: peer.0 }));
    let mut buf = [0u8; 256];
    assert_eq!(std::iter::from_fn(|| b.pop_notification(&mut buf).unwrap()).count(), 8);
}

/// NIXL #1722 (3): the set of received remote-write IDs grew forever. Here the
/// receiver keeps a fixed table per sender lane (one generation per sender slot),
/// allocated when the engine is built; a million notifications later its memory is the
/// same and nothing was dropped.
#[test]
fn nixl_1722_received_ids_do_not_accumulate() {
    let _serial = serial();
    let (a, b, peer, _src, _dst) = pair(16, 16);
    let mut buf = [0u8; 256];
    // Warm up: the first notifications touch the inbox's pages.
    for _ in 0..1000 {
        a.notify(peer, b"warm").unwrap();
        b.pop_notification(&mut buf).unwrap().unwrap();
    }
    let rss_before = rss_kib();
    for i in 0..1_000_000u32 {
        a.notify(peer, &i.to_le_bytes()).unwrap();
        let n = b.pop_notification(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[..n.len], &i.to_le_bytes());
    }
    let s = b.stats();
    assert_eq!(
        (s.notifications_delivered, s.notifications_stale, s.notifications_queued),
        (1_001_000, 0, 0)
    );
    let growth = rss_kib().saturating_sub(rss_before);
    assert!(
        growth < 1024,
        "resident memory grew by {growth} KiB over a million notifications"
    );
}

/// NIXL #1722 (4): a 20-bit transfer ID wrapped around and matched a stale entry (a
/// false-positive completion). Here a handle carries a 44-bit generation, and a slot
/// at its last generation is retired rather than wrapped: a completion from 2^20 + 1
/// transfers ago, whose low 20 generation bits equal the current ones, is stale.
#[test]
fn nixl_1722_id_wraparound_never_matches() {
    let _serial = serial();
    let ring: SlotRing<u8> = SlotRing::new(1).unwrap();
    let first = ring.acquire().unwrap();
    ring.post(first).unwrap();
    assert!(ring.complete(first, Outcome::Done));
    ring.release(first).unwrap();
    // 2^20 - 1 more transfers on the same slot: the next generation agrees with the
    // first in its low 20 bits, where a 20-bit ID would have wrapped onto it.
    for _ in 0..(1 << 20) - 1 {
        let h = ring.acquire().unwrap();
        ring.release(h).unwrap();
    }
    let current = ring.acquire().unwrap();
    ring.post(current).unwrap();
    assert_eq!(current.generation(), first.generation() + (1 << 20));
    assert_eq!(current.generation() & 0xF_FFFF, first.generation() & 0xF_FFFF);
    // The late completion of the first transfer loses; the live one is untouched.
    assert!(!ring.complete(first, Outcome::Failed(FailCode::TRANSPORT)));
    assert_eq!(ring.status(first), Err(Error::StaleHandle { handle: first }));
    assert_eq!(ring.status(current).unwrap(), Status::Posted);
    assert_eq!(ring.stats().stale_completions, 1);
}

/// NIXL #1722 (5): the CQ error path logged the error and never returned the failed
/// request to its pool. Here every failure ends through the ring's one exit function:
/// 10 × capacity transfers that fail (the peer deregistered the region) return every
/// slot, every pin and every inbox reservation.
#[test]
fn nixl_1722_failed_transfers_return_everything() {
    let _serial = serial();
    let (a, b, peer, src, dst) = pair(16, 4);
    let h0 = write(&a, peer, src, dst, 64, Some(b"x"));
    b.deregister(dst).unwrap();
    a.post(h0).unwrap();
    assert_eq!(a.wait(h0, WAIT).unwrap(), Status::Failed(FailCode::PEER_LOST));
    a.release(h0).unwrap();
    for _ in 0..160 {
        let h = write(&a, peer, src, dst, 64, Some(b"x"));
        a.post(h).unwrap();
        assert!(matches!(a.wait(h, WAIT).unwrap(), Status::Failed(_)));
        a.release(h).unwrap();
    }
    let s = a.stats();
    assert_eq!((s.ring.live, s.pins, s.ring.failed), (0, 0, 161));
    // No reservation leaked: the 4-record lane still takes 4 notifications.
    for _ in 0..4 {
        a.notify(peer, b"still room").unwrap();
    }
}

/// A transfer whose peer went away reads FAILED with the reason (`PEER_LOST`),
/// never DONE, and its slot comes back. (Mooncake #2507 itself — a CUDA event created
/// per submit and never destroyed, and an unchecked `cudaEventRecord` read as
/// complete — is tested against the fake driver in `tests/cuda.rs fake_driver_child`:
/// no event is created on the hot path, and an injected record failure reads FAILED.)
#[test]
fn a_transfer_to_a_dropped_peer_reads_failed_never_done() {
    let _serial = serial();
    let (a, b, peer, src, dst) = pair(16, 16);
    let h = write(&a, peer, src, dst, 64, None);
    drop(b);
    a.post(h).unwrap();
    let status = a.wait(h, WAIT).unwrap();
    assert_eq!(status, Status::Failed(FailCode::PEER_LOST));
    assert!(!status.eq(&Status::Done));
    a.release(h).unwrap();
    assert_eq!(a.stats().ring.live, 0);
}

/// Resident set size of this process, in KiB (from /proc/self/status).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}
