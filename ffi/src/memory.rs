//! Memory: regions the engine allocates (host or GPU), registrations of the caller's
//! memory and of files, and control-path copies into and out of local regions.

use std::ffi::{CStr, c_char, c_void};

use ringxfer::RegionId;

use crate::boundary::{engine, guard, need, put, slice, slice_mut};
use crate::engine::rx_engine;
use crate::status::{invalid, rx_status, status_of};

/// Allocates `len` zeroed bytes owned by the engine (in shared memory, reachable by
/// peers in other processes) and registers them; the region id goes to `*out_region`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_alloc_region(engine: *const rx_engine, len: usize, out_region: *mut u64) -> rx_status {
    guard(|| {
        tri!(need(out_region));
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        let id = rx!(e.alloc_region(len));
        // SAFETY: checked non-NULL.
        unsafe { put(out_region, id.to_raw()) }
    })
}

/// Allocates `len` bytes of GPU memory (`cuMemAlloc`, freed with the region) and
/// registers them. Needs the cuda transport (`RX_CUDA_UNAVAILABLE` otherwise).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_alloc_vram(engine: *const rx_engine, len: usize, out_region: *mut u64) -> rx_status {
    guard(|| {
        tri!(need(out_region));
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        let id = rx!(e.alloc_vram(len));
        // SAFETY: checked non-NULL.
        unsafe { put(out_region, id.to_raw()) }
    })
}

/// Registers `len` bytes of GPU memory at device pointer `dev_ptr` that the caller
/// owns (a `CUdeviceptr` of the engine's device). It moves to and from host memory in
/// transfers with `RX_PEER_SELF`; with the fabric transport too, also to and from
/// fabric peers where the provider offers `FI_HMEM` (else such a transfer is refused
/// at prepare with `RX_INVALID_DESCRIPTOR`, and `rx_last_error` says why). It must
/// stay allocated, and not be touched while a transfer may use it, until
/// `rx_deregister` succeeds or the engine is freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_register_vram(
    engine: *const rx_engine,
    dev_ptr: u64,
    len: usize,
    out_region: *mut u64,
) -> rx_status {
    guard(|| {
        tri!(need(out_region));
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        // SAFETY: the caller's promise above is register_vram's contract.
        let id = rx!(unsafe { e.register_vram(dev_ptr, len) });
        // SAFETY: checked non-NULL.
        unsafe { put(out_region, id.to_raw()) }
    })
}

/// Registers `len` bytes at `addr` that the caller owns. They must stay allocated, and
/// not be touched while a transfer may use them, until `rx_deregister` succeeds or the
/// engine is freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_register_dram(
    engine: *const rx_engine,
    addr: *mut c_void,
    len: usize,
    out_region: *mut u64,
) -> rx_status {
    guard(|| {
        tri!(need(out_region));
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        if addr.is_null() {
            return invalid("addr is NULL");
        }
        // SAFETY: the caller's contract above is `Engine::register_dram`'s.
        let id = rx!(unsafe { e.register_dram(addr.cast::<u8>(), len) });
        // SAFETY: checked non-NULL.
        unsafe { put(out_region, id.to_raw()) }
    })
}

/// `rx_register_file` flag: open for writing too (else a write transfer fails EBADF).
pub const RX_FILE_WRITABLE: u32 = 1;
/// `rx_register_file` flag: create the file if missing (with `RX_FILE_WRITABLE`).
pub const RX_FILE_CREATE: u32 = 2;
/// `rx_register_file` flag: `fdatasync` every write before it completes.
pub const RX_FILE_SYNC: u32 = 4;
/// The peer id of the engine itself, for transfers between its own registrations
/// (memory to and from registered files).
pub const RX_PEER_SELF: u32 = u32::MAX;

/// Opens the file at `path` (NUL-terminated) once and registers it; `flags` is a
/// combination of `RX_FILE_*`, `len` the length to register (0: the file's size; a
/// shorter writable file is extended). The descriptor belongs to the registration and
/// is closed by `rx_deregister` or `rx_engine_free`, never per transfer. Move bytes
/// with transfers to `RX_PEER_SELF`, run by the engine's I/O workers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_register_file(
    engine: *const rx_engine,
    path: *const c_char,
    flags: u32,
    len: u64,
    out_region: *mut u64,
) -> rx_status {
    guard(|| {
        tri!(need(out_region));
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        if path.is_null() {
            return invalid("path is NULL");
        }
        if flags & !(RX_FILE_WRITABLE | RX_FILE_CREATE | RX_FILE_SYNC) != 0 {
            return invalid("unknown RX_FILE_* flag");
        }
        // SAFETY: the caller promises a NUL-terminated string.
        let path = tri!(
            unsafe { CStr::from_ptr(path) }
                .to_str()
                .map_err(|_| invalid("path is not UTF-8"))
        );
        let options = ringxfer::FileOptions {
            writable: flags & RX_FILE_WRITABLE != 0,
            create: flags & RX_FILE_CREATE != 0,
            len: (len != 0).then_some(len),
            sync: flags & RX_FILE_SYNC != 0,
        };
        let id = rx!(e.register_file(path, options));
        // SAFETY: checked non-NULL.
        unsafe { put(out_region, id.to_raw()) }
    })
}

/// Removes a registration. `RX_BUSY` while a transfer not yet released uses it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_deregister(engine: *const rx_engine, region: u64) -> rx_status {
    guard(|| {
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        status_of(e.deregister(RegionId::from_raw(region)))
    })
}

/// Copies `len` bytes from `data` into a local region at `offset` (control path).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_write_region(
    engine: *const rx_engine,
    region: u64,
    offset: u64,
    data: *const c_void,
    len: usize,
) -> rx_status {
    guard(|| {
        // SAFETY: see `engine` and `slice`.
        let e = tri!(unsafe { self::engine(engine) });
        // SAFETY: the caller's buffer contract (see `slice`).
        let data = tri!(unsafe { slice(data.cast::<u8>(), len) });
        status_of(e.write_region(RegionId::from_raw(region), offset, data))
    })
}

/// Copies `len` bytes of a local region at `offset` into `out` (control path).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_read_region(
    engine: *const rx_engine,
    region: u64,
    offset: u64,
    out: *mut c_void,
    len: usize,
) -> rx_status {
    guard(|| {
        // SAFETY: see `engine` and `slice_mut`.
        let e = tri!(unsafe { self::engine(engine) });
        // SAFETY: the caller's buffer contract (see `slice_mut`).
        let out = tri!(unsafe { slice_mut(out.cast::<u8>(), len) });
        status_of(e.read_region(RegionId::from_raw(region), offset, out))
    })
}
