//! The hot path never allocates: a counting global allocator watches 1,000,000
//! acquire → post → complete → release cycles (and the other hot-path calls: the
//! completion queue and its eventfd included) after
//! construction and must see exactly zero allocations and deallocations.
//!
//! Counting is per thread (a `const` thread-local, which itself never allocates), so
//! the test harness's own threads cannot disturb the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ringxfer::ring::{FailCode, Handle, Outcome, SlotRing};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static DEALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counters are thread-local `Cell`s with no destructor.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        DEALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: `ptr` came from `System.alloc` with this layout (via `alloc` above).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        DEALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counts() -> (u64, u64) {
    (ALLOCS.with(Cell::get), DEALLOCS.with(Cell::get))
}

#[test]
fn a_million_transfer_cycles_allocate_nothing() {
    const CYCLES: u64 = 1_000_000;
    let ring: SlotRing<[u64; 8]> = SlotRing::new(256).unwrap();
    let before = counts();
    let mut stale = Handle::NULL;
    for i in 0..CYCLES {
        let h = ring.acquire_with(|ctx| ctx[0] = i).unwrap();
        ring.post(h).unwrap();
        // Mix every path: success, failure, cancellation, detached release, and a
        // stale completion and stale release from the previous cycle (errors included:
        // an `Error` must not allocate either).
        match i % 4 {
            0 => {
                assert!(ring.complete(h, Outcome::Done));
                ring.status(h).unwrap();
                ring.release(h).unwrap();
            }
            1 => {
                assert!(ring.complete(h, Outcome::Failed(FailCode::TIMEOUT)));
                ring.release(h).unwrap();
            }
            2 => {
                ring.cancel(h).unwrap();
                assert!(ring.complete(h, Outcome::Cancelled));
                ring.release(h).unwrap();
            }
            _ => {
                ring.release(h).unwrap();
                assert!(ring.complete(h, Outcome::Done));
            }
        }
        assert!(!ring.complete(stale, Outcome::Done));
        assert!(ring.release(stale).is_err());
        stale = h;
    }
    let after = counts();
    assert_eq!(
        after, before,
        "hot path allocated: (allocs, deallocs) went from {before:?} to {after:?}"
    );
    let s = ring.stats();
    assert_eq!((s.live, s.acquired, s.freed), (0, CYCLES, CYCLES));
    assert_eq!(s.stale_completions, CYCLES);
}

#[test]
fn the_counter_sees_allocations() {
    // Guards the test above against a counter that counts nothing.
    let before = counts();
    let v = std::hint::black_box(vec![1u8; 64]);
    drop(v);
    let after = counts();
    assert_eq!((after.0 - before.0, after.1 - before.1), (1, 1));
}

#[test]
fn a_million_engine_writes_allocate_nothing() {
    use ringxfer::{Config, Desc, Engine, Op, Status};
    use std::time::Duration;

    const CYCLES: u64 = 1_000_000;
    let a = Engine::new(Config {
        name: "a".into(),
        capacity: 64,
        ..Config::default()
    })
    .unwrap();
    let b = Engine::new(Config {
        name: "b".into(),
        ..Config::default()
    })
    .unwrap();
    let src = a.alloc_region(1 << 20).unwrap();
    let dst = b.alloc_region(1 << 20).unwrap();
    let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    let mut note = [0u8; 256];
    let _fd = a.completion_fd().unwrap();
    assert_eq!(a.poll_completions(&mut []), 0);
    let before = counts();
    for i in 0..CYCLES {
        let off = (i % 256) * 4096;
        let (local, remote) = ([Desc::new(src, off, 4096)], [Desc::new(dst, off, 4096)]);
        let notif: Option<&[u8]> = if i % 100 == 0 { Some(b"100 blocks landed") } else { None };
        let h = a.prepare(Op::Write, &local, peer, &remote, notif).unwrap();
        a.post(h).unwrap();
        assert_eq!(a.wait(h, Duration::from_secs(5)).unwrap(), Status::Done);
        a.release(h).unwrap();
        if notif.is_some() {
            let n = b.pop_notification(&mut note).unwrap().unwrap();
            assert_eq!(n.len, 17);
        }
        if i % 1000 == 0 {
            a.notify(peer, b"standalone").unwrap();
            assert!(b.pop_notification(&mut note).unwrap().is_some());
        }
        if i % 10 == 0 {
            // One in ten through the completion queue (and its eventfd).
            let h = a.prepare(Op::Write, &local, peer, &remote, None).unwrap();
            a.report_completion(h, i).unwrap();
            a.post(h).unwrap();
            assert!(a.wait_any(Duration::from_secs(5)).unwrap());
            let mut out = [ringxfer::Completion::EMPTY; 2];
            assert_eq!(a.poll_completions(&mut out), 1);
            assert_eq!((out[0].handle, out[0].tag), (h, i));
            a.release(h).unwrap();
        }
    }
    let after = counts();
    assert_eq!(
        after, before,
        "engine hot path allocated: (allocs, deallocs) went from {before:?} to {after:?}"
    );
    let s = a.stats();
    assert_eq!((s.ring.live, s.pins), (0, 0));
    assert_eq!(s.ring.done, CYCLES + CYCLES / 1000 + CYCLES / 10);
}

#[test]
fn stats_metrics_and_the_quiescence_check_allocate_nothing() {
    use ringxfer::{Config, Engine};
    let a = Engine::new(Config {
        name: "scraped".into(),
        capacity: 64,
        ..Config::default()
    })
    .unwrap();
    let _region = a.alloc_region(1 << 16).unwrap();
    let mut text = vec![0u8; 64 << 10];
    let mut small = [0u8; 16];
    let before = counts();
    for _ in 0..1000 {
        let n = a.metrics(&mut text).unwrap();
        assert!(n > 1000);
        assert!(a.metrics(&mut small).is_err());
        std::hint::black_box(a.stats());
        a.check_quiescent().unwrap();
    }
    assert_eq!(counts(), before, "allocations over 1,000 scrapes");
}
