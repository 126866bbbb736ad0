//! The C ABI of ringxfer.
//!
//! This crate builds `libringxfer_ffi.so` and `libringxfer_ffi.a` (installed as
//! `libringxfer`). Today it exposes what the
//! slot ring defines for C callers: handle decoding and the library version. The
//! engine's entry points (`rx_engine_new`, registration, transfers, notifications)
//! arrive with the engine; every one will return an `rx_status` and be wrapped in
//! `catch_unwind`, as `DESIGN.md` §5 says.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

use ringxfer::ring::Handle;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_parts_cross_the_abi() {
        let h = Handle::new(3, 77).unwrap().to_raw();
        assert_eq!((rx_handle_index(h), rx_handle_generation(h)), (3, 77));
        assert_eq!(rx_handle_generation(0), 0);
        assert_eq!(rx_version(), 0x00_01_00);
    }
}
