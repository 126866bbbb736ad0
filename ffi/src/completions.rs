//! The completion queue in C: `rx_report_completion`, `rx_poll_completions`,
//! `rx_wait_any` and `rx_completion_fd`.

use std::time::Duration;

use ringxfer::{Completion, Handle};

use crate::boundary::{engine, guard, need, put};
use crate::engine::rx_engine;
use crate::status::{invalid, rx_status, status_of};
use crate::transfers::{rx_xfer_status, xfer_status};

/// One transfer's end, from `rx_poll_completions`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rx_completion {
    /// The transfer's handle: still the caller's, to release as usual.
    pub handle: u64,
    /// The tag given to `rx_report_completion`.
    pub tag: u64,
    /// Its final status (`RX_XFER_DONE`, `RX_XFER_FAILED` with the failure, or
    /// `RX_XFER_CANCELLED`).
    pub status: rx_xfer_status,
}

/// Asks for the end of the prepared transfer `handle` in the completion queue, with
/// `tag`: once it ends (done, failed, timed out, cancelled, or at shutdown) an
/// `rx_completion` waits for `rx_poll_completions`, exactly once. Call it between
/// `rx_prepare` and `rx_post`; again to change the tag. `RX_COMPLETION_QUEUE_FULL`:
/// every entry is taken (poll first); nothing is posted or lost. A transfer released
/// before it ends gives its entry back unreported.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_report_completion(engine: *const rx_engine, handle: u64, tag: u64) -> rx_status {
    guard(|| {
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        status_of(e.report_completion(Handle::from_raw(handle), tag))
    })
}

/// Drives progress once, then moves up to `cap` completions into `out` (oldest
/// first) and their number to `*out_count`. `out` may be NULL with `cap` 0. Makes the
/// `rx_completion_fd` descriptor unreadable when it drains the queue.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_poll_completions(
    engine: *const rx_engine,
    out: *mut rx_completion,
    cap: usize,
    out_count: *mut usize,
) -> rx_status {
    guard(|| {
        tri!(need(out_count));
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        if cap > 0 && (out.is_null() || !out.is_aligned()) {
            return invalid("out is NULL or misaligned with a non-zero cap");
        }
        // Polled in small batches through a stack buffer: no allocation.
        let mut batch = [Completion::EMPTY; 32];
        let mut n = 0;
        // At least one poll, even for `cap` 0: it clears the eventfd.
        loop {
            let want = (cap - n).min(batch.len());
            let got = e.poll_completions(&mut batch[..want]);
            for (i, c) in batch[..got].iter().enumerate() {
                let item = rx_completion {
                    handle: c.handle.to_raw(),
                    tag: c.tag,
                    status: xfer_status(c.status),
                };
                // SAFETY: `out` is non-NULL and aligned, and the caller promises `cap`
                // writable entries; `n + i < cap`.
                unsafe { out.add(n + i).write(item) };
            }
            n += got;
            if got < want || n == cap {
                break;
            }
        }
        // SAFETY: checked non-NULL.
        unsafe { put(out_count, n) }
    })
}

/// Waits up to `timeout_us` microseconds until a completion can be polled, driving
/// progress meanwhile (as `rx_wait`); `*out_ready` says whether one can.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_wait_any(engine: *const rx_engine, timeout_us: u64, out_ready: *mut bool) -> rx_status {
    guard(|| {
        tri!(need(out_ready));
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        let ready = rx!(e.wait_any(Duration::from_micros(timeout_us)));
        // SAFETY: checked non-NULL.
        unsafe { put(out_ready, ready) }
    })
}

/// Writes to `*out_fd` a Linux eventfd that is readable while completions wait to be
/// polled, to `epoll` with the caller's sockets; `rx_poll_completions` makes it
/// unreadable again when it drains the queue. The engine owns it (do not close it);
/// valid until `rx_engine_free`. The first call makes it readable once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_completion_fd(engine: *const rx_engine, out_fd: *mut i32) -> rx_status {
    guard(|| {
        tri!(need(out_fd));
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        let fd = rx!(e.completion_fd());
        // SAFETY: checked non-NULL.
        unsafe { put(out_fd, fd) }
    })
}
