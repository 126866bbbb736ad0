//! Library-wide entry points: the version, status descriptions, the calling thread's
//! last error, and the parts of a transfer handle.

use std::ffi::c_char;

use ringxfer::ring::Handle;

use crate::boundary::{guard, need, put, slice_mut};
use crate::status::{self, invalid, rx_status};

/// The library version as `major << 16 | minor << 8 | patch`.
#[unsafe(no_mangle)]
pub extern "C" fn rx_version() -> u32 {
    const fn parse(s: &str) -> u32 {
        let b = s.as_bytes();
        let mut i = 0;
        let mut v = 0;
        while i < b.len() {
            v = v * 10 + (b[i] - b'0') as u32;
            i += 1;
        }
        v
    }
    parse(env!("CARGO_PKG_VERSION_MAJOR")) << 16
        | parse(env!("CARGO_PKG_VERSION_MINOR")) << 8
        | parse(env!("CARGO_PKG_VERSION_PATCH"))
}

/// A static, NUL-terminated description of a status value (any value: unknown ones
/// get "unknown status"). Never NULL; never free it.
#[unsafe(no_mangle)]
pub extern "C" fn rx_status_str(status: u32) -> *const c_char {
    match rx_status::ALL.iter().find(|s| **s as u32 == status) {
        Some(s) => s.describe().as_ptr(),
        None => c"unknown status".as_ptr(),
    }
}

/// Copies the calling thread's last failure message into `buf` (NUL-terminated, cut to
/// fit `cap`) and writes its length (without the NUL) to `*out_len`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_last_error(buf: *mut c_char, cap: usize, out_len: *mut usize) -> rx_status {
    guard(|| {
        tri!(need(out_len));
        if cap == 0 {
            return invalid("cap must be at least 1 (room for the NUL)");
        }
        // SAFETY: the caller promises `cap` writable bytes at `buf`.
        let out = tri!(unsafe { slice_mut(buf.cast::<u8>(), cap) });
        let n = status::copy_last_error(out);
        // SAFETY: checked non-NULL above.
        unsafe { put(out_len, n) }
    })
}

/// The slot index of a transfer handle (its low 20 bits).
#[unsafe(no_mangle)]
pub extern "C" fn rx_handle_index(handle: u64) -> u32 {
    Handle::from_raw(handle).index()
}

/// The generation of a transfer handle (its high 44 bits); 0 only for the null handle.
#[unsafe(no_mangle)]
pub extern "C" fn rx_handle_generation(handle: u64) -> u64 {
    Handle::from_raw(handle).generation()
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;

    #[test]
    fn handle_parts_cross_the_abi() {
        let h = Handle::new(3, 77).unwrap().to_raw();
        assert_eq!((rx_handle_index(h), rx_handle_generation(h)), (3, 77));
        assert_eq!(rx_handle_generation(0), 0);
        assert_eq!(rx_version(), 0x00_01_00);
    }

    #[test]
    fn every_status_has_a_description() {
        let count = crate::status::rx_status::ALL.len() as u32;
        for s in 0..count {
            // SAFETY: rx_status_str returns a static NUL-terminated string.
            let text = unsafe { CStr::from_ptr(rx_status_str(s)) }.to_str().unwrap();
            assert!(!text.is_empty() && text != "unknown status", "{s}");
        }
        // SAFETY: as above.
        let unknown = unsafe { CStr::from_ptr(rx_status_str(count)) };
        assert_eq!(unknown.to_str().unwrap(), "unknown status");
    }
}
