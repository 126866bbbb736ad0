//! The FFI boundary, shared by every entry point: the panic guard, the macros that
//! unwrap results inside an entry point, and the checks that turn pointers and lengths
//! from C into Rust references.

use std::panic::{AssertUnwindSafe, catch_unwind};

use ringxfer::Engine;

use crate::engine::rx_engine;
use crate::status::{self, invalid, rx_status, rx_status as S};

/// Runs an entry point's body; a panic becomes `RX_PANIC` instead of unwinding into C.
///
/// The engine the body was using (the last one [`engine`] gave it on this thread) is
/// poisoned then: a panic may have left its tables half-updated, so it refuses new
/// work with `RX_PANIC` from then on.
pub(crate) fn guard(body: impl FnOnce() -> rx_status) -> rx_status {
    CURRENT.set(std::ptr::null());
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(status) => status,
        Err(_) => {
            let engine = CURRENT.replace(std::ptr::null());
            // SAFETY: set by `engine` in this very call from a live engine pointer;
            // `rx_engine_free` clears it before freeing.
            if let Some(e) = unsafe { engine.as_ref() } {
                e.poison();
            }
            status::set_last_error(format_args!(
                "internal panic inside ringxfer (a bug: please report it); the engine is poisoned: free it"
            ));
            S::RX_PANIC
        }
    }
}

thread_local! {
    /// The engine the current entry point on this thread uses, for `guard`.
    static CURRENT: std::cell::Cell<*const Engine> = const { std::cell::Cell::new(std::ptr::null()) };
}

/// Forgets the current engine (before it is freed).
pub(crate) fn forget_engine() {
    CURRENT.set(std::ptr::null());
}

/// The engine behind a pointer from C.
///
/// # Safety
/// `engine` is NULL or a pointer from `rx_engine_new` not yet freed.
pub(crate) unsafe fn engine<'a>(engine: *const rx_engine) -> Result<&'a Engine, rx_status> {
    CURRENT.set(engine.cast::<Engine>());
    // SAFETY: the caller's contract: NULL or a live engine made by `rx_engine_new`.
    unsafe { engine.cast::<Engine>().as_ref() }.ok_or_else(|| invalid("engine is NULL"))
}

/// A slice from a C pointer and length: NULL with 0 is empty.
///
/// # Safety
/// A non-NULL `ptr` points to `len` readable `T`s that live for `'a`.
pub(crate) unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> Result<&'a [T], rx_status> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(invalid("NULL buffer with a non-zero length"));
    }
    if !ptr.is_aligned() {
        return Err(invalid("misaligned array"));
    }
    // SAFETY: non-NULL, aligned, and the caller promises `len` readable elements.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// A mutable slice from a C pointer and length.
///
/// # Safety
/// A non-NULL `ptr` points to `len` writable bytes that live for `'a`, not aliased.
pub(crate) unsafe fn slice_mut<'a>(ptr: *mut u8, len: usize) -> Result<&'a mut [u8], rx_status> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(invalid("NULL buffer with a non-zero length"));
    }
    // SAFETY: non-NULL and the caller promises `len` writable bytes.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// A C string argument as UTF-8: `None` for NULL; `what` is the error's reason when
/// it is not UTF-8.
///
/// # Safety
/// A non-NULL `ptr` points to a NUL-terminated string that lives for `'a`.
pub(crate) unsafe fn c_str<'a>(ptr: *const std::ffi::c_char, what: &'static str) -> Result<Option<&'a str>, rx_status> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL, and the caller promises a NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(ptr) }
        .to_str()
        .map(Some)
        .map_err(|_| invalid(what))
}

/// Writes an output, or fails if its pointer is NULL.
///
/// # Safety
/// A non-NULL `out` points to a writable, aligned `T`.
pub(crate) unsafe fn put<T>(out: *mut T, value: T) -> rx_status {
    if out.is_null() {
        return invalid("output pointer is NULL");
    }
    // SAFETY: non-NULL; the caller promises it is writable and aligned.
    unsafe { out.write(value) };
    S::RX_OK
}

/// Checks an output pointer before any work, so nothing is done when it is NULL.
pub(crate) fn need<T>(out: *mut T) -> Result<(), rx_status> {
    if out.is_null() {
        Err(invalid("output pointer is NULL"))
    } else {
        Ok(())
    }
}

/// Unwraps a `Result<_, rx_status>` inside an entry point.
macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(status) => return status,
        }
    };
}

/// Unwraps a `ringxfer::Result` inside an entry point, recording the error text.
macro_rules! rx {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return $crate::status::fail(&e),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic caught at the boundary poisons the engine the entry point was using:
    /// later calls on it answer `RX_PANIC`.
    #[test]
    fn a_caught_panic_poisons_the_engine() {
        let e = Box::into_raw(Box::new(Engine::new(ringxfer::Config::default()).unwrap())).cast::<rx_engine>();
        let status = guard(|| {
            // SAFETY: a live engine.
            let _ = unsafe { engine(e) };
            panic!("a bug inside an entry point");
        });
        assert_eq!(status, S::RX_PANIC);
        // SAFETY: a live engine.
        let engine = unsafe { engine(e) }.unwrap();
        assert!(engine.is_poisoned());
        assert!(matches!(engine.alloc_region(4096), Err(ringxfer::Error::Poisoned)));
        assert_eq!(rx_status::from(&ringxfer::Error::Poisoned), S::RX_PANIC);
        // SAFETY: made above, freed once.
        unsafe { crate::engine::rx_engine_free(e) };
    }
}
