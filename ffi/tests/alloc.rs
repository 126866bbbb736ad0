//! The C API's hot path allocates nothing either: a counting global allocator watches
//! 100,000 transfers driven through the `extern "C"` functions, errors included.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ringxfer_ffi::*;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to `System`; the counter is a thread-local
// `Cell` with no destructor.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn transfers_through_the_c_api_allocate_nothing() {
    // SAFETY: every pointer passed below is to a live local of the right type.
    unsafe {
        let mut a: *mut rx_engine = std::ptr::null_mut();
        let mut b: *mut rx_engine = std::ptr::null_mut();
        assert_eq!(rx_engine_new(std::ptr::null(), &mut a), rx_status::RX_OK);
        assert_eq!(rx_engine_new(std::ptr::null(), &mut b), rx_status::RX_OK);
        let (mut src, mut dst) = (0u64, 0u64);
        assert_eq!(rx_alloc_region(a, 1 << 20, &mut src), rx_status::RX_OK);
        assert_eq!(rx_alloc_region(b, 1 << 20, &mut dst), rx_status::RX_OK);
        let mut md = vec![0u8; 1 << 16];
        let mut md_len = 0;
        assert_eq!(
            rx_local_metadata(b, md.as_mut_ptr(), md.len(), &mut md_len),
            rx_status::RX_OK
        );
        let mut peer = 0;
        assert_eq!(rx_load_peer(a, md.as_ptr(), md_len, &mut peer), rx_status::RX_OK);
        let mut buf = [0u8; 256];
        let note = b"ready";

        let before = ALLOCS.with(Cell::get);
        for i in 0..100_000u64 {
            let off = (i % 256) * 4096;
            let local = rx_desc {
                region: src,
                offset: off,
                len: 4096,
            };
            let remote = rx_desc {
                region: dst,
                offset: off,
                len: 4096,
            };
            let (np, nl) = if i % 100 == 0 {
                (note.as_ptr(), note.len())
            } else {
                (std::ptr::null(), 0)
            };
            let mut h = 0;
            assert_eq!(
                rx_prepare(a, 0, &local, 1, peer, &remote, 1, np, nl, &mut h),
                rx_status::RX_OK
            );
            assert_eq!(rx_post(a, h), rx_status::RX_OK);
            let mut st = rx_xfer_status {
                state: 0,
                fail_source: 0,
                fail_code: 0,
            };
            assert_eq!(rx_wait(a, h, 1_000_000, &mut st), rx_status::RX_OK);
            assert_eq!(rx_release(a, h), rx_status::RX_OK);
            // Failures on the hot path: stale handle, bad enum, NULL output.
            assert_eq!(rx_release(a, h), rx_status::RX_STALE_HANDLE);
            assert_eq!(
                rx_prepare(a, 9, &local, 1, peer, &remote, 1, np, nl, &mut h),
                rx_status::RX_INVALID_ARGUMENT
            );
            assert_eq!(
                rx_get_status(a, h, std::ptr::null_mut()),
                rx_status::RX_INVALID_ARGUMENT
            );
            if i % 100 == 0 {
                let mut n = rx_notification {
                    sender: 0,
                    sender_engine: 0,
                    handle: 0,
                    len: 0,
                };
                let mut popped = false;
                assert_eq!(
                    rx_pop_notification(b, buf.as_mut_ptr(), buf.len(), &mut n, &mut popped),
                    rx_status::RX_OK
                );
                assert!(popped && n.len == 5);
                assert_eq!(rx_notify(a, peer, note.as_ptr(), note.len()), rx_status::RX_OK);
                assert_eq!(
                    rx_pop_notification(b, buf.as_mut_ptr(), buf.len(), &mut n, &mut popped),
                    rx_status::RX_OK
                );
            }
        }
        let after = ALLOCS.with(Cell::get);
        assert_eq!(after, before, "the C API's hot path allocated {} times", after - before);

        let mut stats = rx_stats::default();
        assert_eq!(rx_engine_stats(a, &mut stats), rx_status::RX_OK);
        assert_eq!((stats.live, stats.pins), (0, 0));
        rx_engine_free(a);
        rx_engine_free(b);
    }
}
