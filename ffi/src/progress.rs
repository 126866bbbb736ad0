//! Driving the transports that complete asynchronously: `rx_progress`.

use crate::boundary::{engine, guard, need, put};
use crate::engine::rx_engine;
use crate::status::rx_status;

/// Drives transports that complete asynchronously (the fabric's progress is manual)
/// and writes how many completion entries it handled to `*out_completed`. The `local`
/// transport completes transfers inside `rx_post` (0 here). `rx_status`, `rx_wait`
/// and `rx_pop_notification` drive progress too; call this where an engine only
/// serves others, or set `RX_FABRIC_PROGRESS_THREAD`. Never allocates.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_progress(engine: *const rx_engine, out_completed: *mut usize) -> rx_status {
    guard(|| {
        tri!(need(out_completed));
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        let handled = e.progress();
        // SAFETY: checked non-NULL.
        unsafe { put(out_completed, handled) }
    })
}
