//! Notifications: the optional payload a transfer carries, notifications sent on their
//! own, and popping them from this engine's inbox.

use ringxfer::PeerId;

use crate::boundary::{engine, guard, need, put, slice, slice_mut};
use crate::engine::rx_engine;
use crate::status::{invalid, rx_status, status_of};

/// A popped notification.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rx_notification {
    /// The inbox lane it came through.
    pub sender: u32,
    /// The sending engine's id.
    pub sender_engine: u64,
    /// The sender's transfer handle it travelled with.
    pub handle: u64,
    /// Payload bytes written to the caller's buffer.
    pub len: usize,
}

/// An optional notification: NULL means none (its length must then be 0).
///
/// # Safety
/// As for [`slice`].
pub(crate) unsafe fn notification<'a>(ptr: *const u8, len: usize) -> Result<Option<&'a [u8]>, rx_status> {
    if ptr.is_null() {
        return if len == 0 {
            Ok(None)
        } else {
            Err(invalid("NULL notification with a non-zero length"))
        };
    }
    // SAFETY: as for `slice`.
    unsafe { slice(ptr, len) }.map(Some)
}

/// Sends a notification on its own.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_notify(engine: *const rx_engine, peer: u32, payload: *const u8, len: usize) -> rx_status {
    guard(|| {
        // SAFETY: see `engine` and `slice`.
        let e = tri!(unsafe { self::engine(engine) });
        // SAFETY: the caller's buffer contract (see `slice`).
        let payload = tri!(unsafe { slice(payload, len) });
        status_of(e.notify(PeerId(peer), payload))
    })
}

/// Pops the oldest notification into `buf` (`cap` ≥ `max_notif_bytes`). `*out_popped`
/// says whether there was one; `*out` is written only if there was.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_pop_notification(
    engine: *const rx_engine,
    buf: *mut u8,
    cap: usize,
    out: *mut rx_notification,
    out_popped: *mut bool,
) -> rx_status {
    guard(|| {
        tri!(need(out));
        tri!(need(out_popped));
        // SAFETY: see `engine` and `slice_mut`.
        let e = tri!(unsafe { self::engine(engine) });
        // SAFETY: the caller's buffer contract (see `slice_mut`).
        let buf = tri!(unsafe { slice_mut(buf, cap) });
        let popped = rx!(e.pop_notification(buf));
        if let Some(n) = popped {
            let note = rx_notification {
                sender: n.sender.0,
                sender_engine: n.sender_engine,
                handle: n.handle.to_raw(),
                len: n.len,
            };
            // SAFETY: checked non-NULL.
            unsafe { out.write(note) };
        }
        // SAFETY: checked non-NULL.
        unsafe { put(out_popped, popped.is_some()) }
    })
}
