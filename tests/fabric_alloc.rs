//! Fabric transfers allocate nothing after connect — on any thread: this binary's
//! allocator counts every thread's allocations (the target's progress thread
//! included), so it holds this one test only. (libfabric's own allocations go to the
//! C allocator and are not counted here: they are the provider's, bounded by its
//! pools.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ringxfer::fabric::FabricConfig;
use ringxfer::{Config, Desc, Engine, Error, Op, Status};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the counter is an atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn engine(name: &str, provider: &str, progress_thread: bool) -> Option<Engine> {
    let config = Config {
        name: name.into(),
        capacity: 64,
        fabric: Some(FabricConfig {
            provider: Some(provider.into()),
            progress_thread,
            ..FabricConfig::default()
        }),
        ..Config::default()
    };
    match Engine::new(config) {
        Ok(e) => Some(e),
        Err(e @ Error::FabricUnavailable { .. }) if std::env::var_os("RINGXFER_SKIP_FABRIC").is_some() => {
            eprintln!("skipped (RINGXFER_SKIP_FABRIC is set): {e}");
            None
        }
        Err(e) => panic!("fabric engine on {provider}: {e}"),
    }
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
        let mut delivered = 0u64;
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
            assert_eq!(a.wait(h, Duration::from_secs(10)).unwrap(), Status::Done);
            a.release(h).unwrap();
            if with_note {
                while b.pop_notification(&mut note).unwrap().is_none() {}
                delivered += 1;
            }
            a.progress();
        };
        // Warm-up: the first transfers may grow nothing of ours, but let the
        // provider's connection settle before counting.
        for i in 0..300 {
            cycle(i);
        }
        let before = ALLOCS.load(Ordering::Relaxed);
        for i in 300..3300 {
            cycle(i);
        }
        let allocations = ALLOCS.load(Ordering::Relaxed) - before;
        assert_eq!(allocations, 0, "{provider}: allocations over 3000 fabric transfers");
        assert_eq!(delivered, 1100);
        a.check_quiescent().unwrap();
    }
}
