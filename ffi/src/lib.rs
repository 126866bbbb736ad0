//! The C ABI of ringxfer.
//!
//! This crate builds `libringxfer_ffi.so` and `libringxfer_ffi.a` (installed as
//! `libringxfer`, see `ffi/install.sh`); `include/ringxfer.h` is generated from it by
//! cbindgen and `include/ringxfer.hpp` wraps it for C++17.
//!
//! Conventions, as in rustls-ffi:
//! - every fallible function returns an [`rx_status`] and writes its outputs only on
//!   success; the calling thread's last failure is described by [`rx_last_error`];
//! - engines are opaque pointers (`rx_engine*`) made by [`rx_engine_new`] and freed by
//!   [`rx_engine_free`] (NULL is a no-op); handles, regions and lists are `uint64_t`;
//! - every buffer is a pointer and a length; a NULL pointer with length 0 is an empty
//!   buffer, with a non-zero length it is `RX_INVALID_ARGUMENT`;
//! - enum values coming from C are taken as integers and validated;
//! - no Rust allocation is ever handed to C, and every entry point runs inside
//!   `catch_unwind`: a panic returns `RX_PANIC` instead of unwinding into C.
//!
//! The hot-path functions (`rx_prepare`, `rx_post`, `rx_post_list`, `rx_get_status`,
//! `rx_wait`, `rx_cancel`, `rx_release`, `rx_notify`, `rx_pop_notification`,
//! `rx_progress`) never allocate, on success or on failure.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)] // the header's doc comments state each contract

mod status;

use std::ffi::{CStr, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use ringxfer::CudaConfig;
use ringxfer::fabric::FabricConfig;
use ringxfer::ring::{CancelResult, FailSource, Handle, Status, TransportId};
use ringxfer::{Config, Desc, Engine, ListId, MetadataServer, Op, PeerId, RegionId};

pub use status::rx_status;
use status::{fail, invalid, rx_status as S, status_of};

/// An engine. Opaque: made by `rx_engine_new`, freed by `rx_engine_free`.
pub struct rx_engine {
    _private: [u8; 0],
}

/// A running metadata server (`rx_serve_metadata`); stops when freed.
pub struct rx_metadata_server {
    _private: [u8; 0],
}

/// Engine capacities; fill with `rx_config_default`, then change what you need.
/// See the README's configuration table for each field's range.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rx_config {
    /// The engine's name (NUL-terminated UTF-8, 1–255 bytes), or NULL for "ringxfer".
    /// Copied by `rx_engine_new`.
    pub name: *const c_char,
    /// Transfer slots: a power of two, 1–2^20.
    pub capacity: u32,
    /// Descriptors per transfer, 1–65536.
    pub max_descs_per_xfer: u32,
    /// Registered regions at once, 1–2^20.
    pub max_registrations: u32,
    /// Peers (and notification senders), 1–4096.
    pub max_peers: u32,
    /// Largest notification payload, 0–65536 bytes.
    pub max_notif_bytes: u32,
    /// Prepared lists alive at once, 1–4096.
    pub max_prepared_lists: u32,
    /// Notifications queued per sender: a power of two, 1–2^20.
    pub inbox_capacity: u32,
    /// I/O worker threads for file transfers, 0–64 (0 disables them).
    pub file_workers: u32,
    /// How long an idle I/O worker polls before it sleeps, in microseconds, 0–10000
    /// (0: sleep at once; each post after an idle spell then wakes one).
    pub file_worker_poll_us: u32,
    /// The fabric transport (libfabric): 0 leaves it off; `RX_FABRIC_ENABLE`, plus
    /// `RX_FABRIC_PROGRESS_THREAD` for an engine that only serves others.
    pub fabric_flags: u32,
    /// A posted fabric transfer's deadline in milliseconds (0: the default, 30000).
    pub fabric_deadline_ms: u32,
    /// The libfabric provider ("tcp", "shm", "verbs", "efa", …; NUL-terminated), or
    /// NULL for libfabric's choice. `RINGXFER_FI_PROVIDER` overrides it.
    pub fabric_provider: *const c_char,
    /// A local address to bind the fabric endpoint to (an interface's IP), or NULL.
    pub fabric_node: *const c_char,
    /// The cuda transport: 0 leaves it off; `RX_CUDA_ENABLE` turns it on (no driver
    /// or no device: `rx_engine_new` returns `RX_CUDA_UNAVAILABLE`), plus
    /// `RX_CUDA_NO_PIN_HOST` to leave host regions pageable.
    pub cuda_flags: u32,
    /// The CUDA device ordinal.
    pub cuda_device: u32,
    /// Streams the engine creates, 1–64 (ignored with `cuda_stream`).
    pub cuda_streams: u32,
    /// A caller's `CUstream` to put every transfer on (borrowed, never destroyed; it
    /// must outlive the engine), or 0 for the engine's own streams.
    pub cuda_stream: usize,
}

/// `rx_config::cuda_flags`: turn the cuda transport on.
pub const RX_CUDA_ENABLE: u32 = 1;
/// `rx_config::cuda_flags`: do not page-lock host regions for the GPU.
pub const RX_CUDA_NO_PIN_HOST: u32 = 2;

/// `rx_config::fabric_flags`: turn the fabric transport on.
pub const RX_FABRIC_ENABLE: u32 = 1;
/// `rx_config::fabric_flags`: start a thread that drives fabric progress.
pub const RX_FABRIC_PROGRESS_THREAD: u32 = 2;

/// One contiguous piece of a region: `len` bytes at `offset`. Same layout as the Rust
/// `ringxfer::Desc`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rx_desc {
    /// The region id (`rx_alloc_region`, `rx_register_dram`, or the peer's metadata).
    pub region: u64,
    /// Byte offset into the region.
    pub offset: u64,
    /// Length in bytes (non-zero).
    pub len: u64,
}

const _: () = {
    assert!(size_of::<rx_desc>() == size_of::<Desc>());
    assert!(align_of::<rx_desc>() == align_of::<Desc>());
    assert!(std::mem::offset_of!(rx_desc, region) == std::mem::offset_of!(Desc, region));
    assert!(std::mem::offset_of!(rx_desc, offset) == std::mem::offset_of!(Desc, offset));
    assert!(std::mem::offset_of!(rx_desc, len) == std::mem::offset_of!(Desc, len));
};

/// Transfer direction, from the initiator's side.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum rx_op {
    /// Local → remote.
    RX_OP_WRITE = 0,
    /// Remote → local.
    RX_OP_READ = 1,
}

/// Where a transfer is (`rx_xfer_status::state`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum rx_xfer_state {
    /// Prepared, not posted.
    RX_XFER_RESERVED = 1,
    /// Posted, in flight.
    RX_XFER_POSTED = 2,
    /// Completed successfully.
    RX_XFER_DONE = 3,
    /// Completed with a failure (see `fail_source` and `fail_code`).
    RX_XFER_FAILED = 4,
    /// Cancelled.
    RX_XFER_CANCELLED = 5,
}

/// Where a failure code comes from (`rx_xfer_status::fail_source`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum rx_fail_source {
    /// The engine: 1 deadline expired, 2 peer lost, 3 shut down, 4 transport error,
    /// 5 the peer deregistered the region, 6 end of file.
    RX_FAIL_ENGINE = 0,
    /// A POSIX errno.
    RX_FAIL_ERRNO = 1,
    /// A libfabric error number.
    RX_FAIL_FABRIC = 2,
    /// A CUDA driver error.
    RX_FAIL_CUDA = 3,
    /// A transport-specific code.
    RX_FAIL_TRANSPORT = 4,
}

/// A transfer's status.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rx_xfer_status {
    /// An `rx_xfer_state` value.
    pub state: u32,
    /// For `RX_XFER_FAILED`: an `rx_fail_source` value; otherwise 0.
    pub fail_source: u32,
    /// For `RX_XFER_FAILED`: the code within its source; otherwise 0.
    pub fail_code: u32,
}

/// What `rx_cancel` did.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum rx_cancel_result {
    /// Never posted: now cancelled (release it).
    RX_CANCEL_DONE = 0,
    /// In flight: the transport was asked; the transfer still ends on its own.
    RX_CANCEL_IN_FLIGHT = 1,
    /// It had already ended.
    RX_CANCEL_ALREADY_COMPLETE = 2,
}

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

/// Counters and the resource ledger (`rx_engine_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct rx_stats {
    /// Transfer slots.
    pub capacity: u64,
    /// Slots held now.
    pub live: u64,
    /// Most slots held at once (sampled).
    pub high_water: u64,
    /// Slots acquired since start.
    pub acquired: u64,
    /// Slots freed since start.
    pub freed: u64,
    /// Transfers completed done.
    pub done: u64,
    /// Transfers completed failed.
    pub failed: u64,
    /// Transfers cancelled.
    pub cancelled: u64,
    /// Completions rejected as duplicate, late or stale.
    pub stale_completions: u64,
    /// Slots retired at their last generation.
    pub retired: u64,
    /// Live registrations.
    pub registrations: u64,
    /// Region pins held by transfers not yet released.
    pub pins: u64,
    /// Peers loaded.
    pub peers: u64,
    /// Prepared lists alive.
    pub prepared_lists: u64,
    /// File descriptors held by file registrations.
    pub open_files: u64,
    /// Notifications waiting in this engine's inbox.
    pub notifications_queued: u64,
    /// Notifications popped.
    pub notifications_delivered: u64,
    /// Notifications dropped as duplicates or stale.
    pub notifications_stale: u64,
}

/// Runs an entry point's body; a panic becomes `RX_PANIC` instead of unwinding into C.
fn guard(body: impl FnOnce() -> rx_status) -> rx_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(status) => status,
        Err(_) => {
            status::set_last_error(format_args!("internal panic inside ringxfer (a bug: please report it)"));
            S::RX_PANIC
        }
    }
}

/// The engine behind a pointer from C.
///
/// # Safety
/// `engine` is NULL or a pointer from `rx_engine_new` not yet freed.
unsafe fn engine<'a>(engine: *const rx_engine) -> Result<&'a Engine, rx_status> {
    // SAFETY: the caller's contract: NULL or a live engine made by `rx_engine_new`.
    unsafe { engine.cast::<Engine>().as_ref() }.ok_or_else(|| invalid("engine is NULL"))
}

/// A slice from a C pointer and length: NULL with 0 is empty.
///
/// # Safety
/// A non-NULL `ptr` points to `len` readable `T`s that live for `'a`.
unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> Result<&'a [T], rx_status> {
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
unsafe fn slice_mut<'a>(ptr: *mut u8, len: usize) -> Result<&'a mut [u8], rx_status> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(invalid("NULL buffer with a non-zero length"));
    }
    // SAFETY: non-NULL and the caller promises `len` writable bytes.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// Writes an output, or fails if its pointer is NULL.
///
/// # Safety
/// A non-NULL `out` points to a writable, aligned `T`.
unsafe fn put<T>(out: *mut T, value: T) -> rx_status {
    if out.is_null() {
        return invalid("output pointer is NULL");
    }
    // SAFETY: non-NULL; the caller promises it is writable and aligned.
    unsafe { out.write(value) };
    S::RX_OK
}

/// Checks an output pointer before any work, so nothing is done when it is NULL.
fn need<T>(out: *mut T) -> Result<(), rx_status> {
    if out.is_null() {
        Err(invalid("output pointer is NULL"))
    } else {
        Ok(())
    }
}

fn op_from(op: u32) -> Result<Op, rx_status> {
    match op {
        0 => Ok(Op::Write),
        1 => Ok(Op::Read),
        _ => Err(invalid("op must be RX_OP_WRITE (0) or RX_OP_READ (1)")),
    }
}

/// Reinterprets descriptors from C in place (same layout, checked at compile time).
///
/// # Safety
/// As for [`slice`].
unsafe fn descs<'a>(ptr: *const rx_desc, len: usize) -> Result<&'a [Desc], rx_status> {
    // SAFETY: rx_desc and Desc have the same size, alignment and field offsets, and
    // every bit pattern is valid for both (three u64s).
    unsafe { slice(ptr.cast::<Desc>(), len) }
}

/// An optional notification: NULL means none (its length must then be 0).
///
/// # Safety
/// As for [`slice`].
unsafe fn notification<'a>(ptr: *const u8, len: usize) -> Result<Option<&'a [u8]>, rx_status> {
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

fn xfer_status(s: Status) -> rx_xfer_status {
    let (state, fail_source, fail_code) = match s {
        Status::Reserved => (rx_xfer_state::RX_XFER_RESERVED, 0, 0),
        Status::Posted => (rx_xfer_state::RX_XFER_POSTED, 0, 0),
        Status::Done => (rx_xfer_state::RX_XFER_DONE, 0, 0),
        Status::Cancelled => (rx_xfer_state::RX_XFER_CANCELLED, 0, 0),
        Status::Failed(code) => {
            let source = match code.source() {
                FailSource::Engine => rx_fail_source::RX_FAIL_ENGINE,
                FailSource::Errno => rx_fail_source::RX_FAIL_ERRNO,
                FailSource::Transport(TransportId::FABRIC) => rx_fail_source::RX_FAIL_FABRIC,
                FailSource::Transport(TransportId::CUDA) => rx_fail_source::RX_FAIL_CUDA,
                FailSource::Transport(_) => rx_fail_source::RX_FAIL_TRANSPORT,
            };
            (rx_xfer_state::RX_XFER_FAILED, source as u32, code.value())
        }
    };
    rx_xfer_status {
        state: state as u32,
        fail_source,
        fail_code,
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
            Err(e) => return fail(&e),
        }
    };
}

// ----- library -----

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

// ----- engine lifetime -----

/// Fills `*out` with the default configuration.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_config_default(out: *mut rx_config) -> rx_status {
    guard(|| {
        let d = Config::default();
        let c = rx_config {
            name: std::ptr::null(),
            capacity: d.capacity as u32,
            max_descs_per_xfer: d.max_descs_per_xfer as u32,
            max_registrations: d.max_registrations as u32,
            max_peers: d.max_peers as u32,
            max_notif_bytes: d.max_notif_bytes as u32,
            max_prepared_lists: d.max_prepared_lists as u32,
            inbox_capacity: d.inbox_capacity as u32,
            file_workers: d.file_workers as u32,
            file_worker_poll_us: d.file_worker_poll.as_micros() as u32,
            fabric_flags: 0,
            fabric_deadline_ms: 0,
            fabric_provider: std::ptr::null(),
            fabric_node: std::ptr::null(),
            cuda_flags: 0,
            cuda_device: 0,
            cuda_streams: CudaConfig::default().streams as u32,
            cuda_stream: 0,
        };
        // SAFETY: the caller promises a writable rx_config (NULL is refused).
        unsafe { put(out, c) }
    })
}

/// Creates an engine, allocating everything it will use, and writes it to `*out`.
/// `config` NULL means all defaults.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_engine_new(config: *const rx_config, out: *mut *mut rx_engine) -> rx_status {
    guard(|| {
        tri!(need(out));
        let mut c = Config::default();
        // SAFETY: the caller promises NULL or a readable rx_config.
        if let Some(cfg) = unsafe { config.as_ref() } {
            if !cfg.name.is_null() {
                // SAFETY: the caller promises a NUL-terminated string.
                let name = unsafe { CStr::from_ptr(cfg.name) };
                c.name = tri!(name.to_str().map_err(|_| invalid("name is not UTF-8"))).to_owned();
            }
            c.capacity = cfg.capacity as usize;
            c.max_descs_per_xfer = cfg.max_descs_per_xfer as usize;
            c.max_registrations = cfg.max_registrations as usize;
            c.max_peers = cfg.max_peers as usize;
            c.max_notif_bytes = cfg.max_notif_bytes as usize;
            c.max_prepared_lists = cfg.max_prepared_lists as usize;
            c.inbox_capacity = cfg.inbox_capacity as usize;
            c.file_workers = cfg.file_workers as usize;
            c.file_worker_poll = std::time::Duration::from_micros(u64::from(cfg.file_worker_poll_us));
            if cfg.fabric_flags & !(RX_FABRIC_ENABLE | RX_FABRIC_PROGRESS_THREAD) != 0 {
                return invalid("unknown fabric_flags");
            }
            if cfg.fabric_flags & RX_FABRIC_ENABLE != 0 {
                let text = |p: *const c_char, what: &'static str| -> Result<Option<String>, S> {
                    if p.is_null() {
                        return Ok(None);
                    }
                    // SAFETY: the caller promises NULL or a NUL-terminated string.
                    let s = unsafe { CStr::from_ptr(p) };
                    s.to_str().map(|s| Some(s.to_owned())).map_err(|_| invalid(what))
                };
                let mut f = FabricConfig {
                    provider: tri!(text(cfg.fabric_provider, "fabric_provider is not UTF-8")),
                    node: tri!(text(cfg.fabric_node, "fabric_node is not UTF-8")),
                    progress_thread: cfg.fabric_flags & RX_FABRIC_PROGRESS_THREAD != 0,
                    ..FabricConfig::default()
                };
                if cfg.fabric_deadline_ms != 0 {
                    f.deadline = std::time::Duration::from_millis(u64::from(cfg.fabric_deadline_ms));
                }
                c.fabric = Some(f);
            }
            if cfg.cuda_flags & !(RX_CUDA_ENABLE | RX_CUDA_NO_PIN_HOST) != 0 {
                return invalid("unknown cuda_flags");
            }
            if cfg.cuda_flags & RX_CUDA_ENABLE != 0 {
                c.cuda = Some(CudaConfig {
                    device: cfg.cuda_device,
                    streams: cfg.cuda_streams as usize,
                    stream: (cfg.cuda_stream != 0).then_some(cfg.cuda_stream),
                    pin_host: cfg.cuda_flags & RX_CUDA_NO_PIN_HOST == 0,
                });
            }
        }
        let engine = rx!(Engine::new(c));
        let ptr = Box::into_raw(Box::new(engine)).cast::<rx_engine>();
        // SAFETY: checked non-NULL above.
        unsafe { put(out, ptr) }
    })
}

/// Frees an engine: its regions, segments and inbox go with it. NULL is a no-op. The
/// engine must not be in use by another thread, and is dangling afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_engine_free(engine: *mut rx_engine) {
    let _ = guard(|| {
        if !engine.is_null() {
            // SAFETY: the caller promises a pointer from rx_engine_new, freed once.
            drop(unsafe { Box::from_raw(engine.cast::<Engine>()) });
        }
        S::RX_OK
    });
}

// ----- memory -----

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

// ----- metadata and peers -----

/// Copies this engine's metadata blob into `buf` and its length to `*out_len`. If `cap`
/// is too small the call returns `RX_BUFFER_TOO_SMALL` and — the one exception to
/// "outputs only on success" — writes the size needed to `*out_len`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_local_metadata(
    engine: *const rx_engine,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> rx_status {
    guard(|| {
        tri!(need(out_len));
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        let blob = rx!(e.local_metadata());
        if blob.len() > cap {
            status::set_last_error(format_args!("metadata needs {} bytes, buffer has {cap}", blob.len()));
            // SAFETY: checked non-NULL.
            unsafe { out_len.write(blob.len()) };
            return S::RX_BUFFER_TOO_SMALL;
        }
        // SAFETY: the caller promises `cap` writable bytes.
        let out = tri!(unsafe { slice_mut(buf, cap) });
        out[..blob.len()].copy_from_slice(&blob);
        // SAFETY: checked non-NULL.
        unsafe { put(out_len, blob.len()) }
    })
}

/// Loads (or reloads) a peer from its metadata blob; its id goes to `*out_peer`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_load_peer(
    engine: *const rx_engine,
    blob: *const u8,
    len: usize,
    out_peer: *mut u32,
) -> rx_status {
    guard(|| {
        tri!(need(out_peer));
        // SAFETY: see `engine` and `slice`.
        let e = tri!(unsafe { self::engine(engine) });
        // SAFETY: the caller's buffer contract (see `slice`).
        let blob = tri!(unsafe { slice(blob, len) });
        let peer = rx!(e.load_peer(blob));
        // SAFETY: checked non-NULL.
        unsafe { put(out_peer, peer.0) }
    })
}

/// Fetches a peer's metadata from its metadata server at `addr` ("host:port") and
/// loads it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_fetch_peer(engine: *const rx_engine, addr: *const c_char, out_peer: *mut u32) -> rx_status {
    guard(|| {
        tri!(need(out_peer));
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        if addr.is_null() {
            return invalid("addr is NULL");
        }
        // SAFETY: the caller promises a NUL-terminated string.
        let addr = tri!(
            unsafe { CStr::from_ptr(addr) }
                .to_str()
                .map_err(|_| invalid("addr is not UTF-8"))
        );
        let peer = rx!(e.fetch_peer(addr));
        // SAFETY: checked non-NULL.
        unsafe { put(out_peer, peer.0) }
    })
}

/// Serves this engine's metadata over TCP at `addr` (e.g. "127.0.0.1:0") until the
/// server is freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_serve_metadata(
    engine: *const rx_engine,
    addr: *const c_char,
    out: *mut *mut rx_metadata_server,
) -> rx_status {
    guard(|| {
        tri!(need(out));
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        if addr.is_null() {
            return invalid("addr is NULL");
        }
        // SAFETY: the caller promises a NUL-terminated string.
        let addr = tri!(
            unsafe { CStr::from_ptr(addr) }
                .to_str()
                .map_err(|_| invalid("addr is not UTF-8"))
        );
        let server = rx!(e.serve_metadata(addr));
        let ptr = Box::into_raw(Box::new(server)).cast::<rx_metadata_server>();
        // SAFETY: checked non-NULL.
        unsafe { put(out, ptr) }
    })
}

/// Writes the server's "ip:port" (NUL-terminated) into `buf`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_metadata_server_addr(
    server: *const rx_metadata_server,
    buf: *mut c_char,
    cap: usize,
) -> rx_status {
    guard(|| {
        // SAFETY: the caller promises NULL or a live server from rx_serve_metadata.
        let Some(server) = (unsafe { server.cast::<MetadataServer>().as_ref() }) else {
            return invalid("server is NULL");
        };
        let mut text = [0u8; 64];
        let mut cursor = std::io::Cursor::new(&mut text[..]);
        let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{}", server.local_addr()));
        let n = cursor.position() as usize;
        if n + 1 > cap {
            status::set_last_error(format_args!("the address needs {} bytes", n + 1));
            return S::RX_BUFFER_TOO_SMALL;
        }
        // SAFETY: the caller promises `cap` writable bytes.
        let out = tri!(unsafe { slice_mut(buf.cast::<u8>(), cap) });
        out[..n].copy_from_slice(&text[..n]);
        out[n] = 0;
        S::RX_OK
    })
}

/// Stops and frees a metadata server. NULL is a no-op.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_metadata_server_free(server: *mut rx_metadata_server) {
    let _ = guard(|| {
        if !server.is_null() {
            // SAFETY: the caller promises a pointer from rx_serve_metadata, freed once.
            drop(unsafe { Box::from_raw(server.cast::<MetadataServer>()) });
        }
        S::RX_OK
    });
}

// ----- transfers (hot path) -----

/// Validates a transfer (`op` is an `rx_op`) and takes a slot for it; the handle goes to
/// `*out_handle`. `notif` NULL (with `notif_len` 0) means no notification; a non-NULL
/// `notif` is sent after the last byte lands (it may be empty).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_prepare(
    engine: *const rx_engine,
    op: u32,
    local: *const rx_desc,
    local_len: usize,
    peer: u32,
    remote: *const rx_desc,
    remote_len: usize,
    notif: *const u8,
    notif_len: usize,
    out_handle: *mut u64,
) -> rx_status {
    guard(|| {
        tri!(need(out_handle));
        // SAFETY: see `engine`, `descs` and `notification`.
        let e = tri!(unsafe { self::engine(engine) });
        let op = tri!(op_from(op));
        // SAFETY: the caller's buffer contract (see `descs`).
        let local = tri!(unsafe { descs(local, local_len) });
        // SAFETY: the caller's buffer contract (see `descs`).
        let remote = tri!(unsafe { descs(remote, remote_len) });
        // SAFETY: the caller's buffer contract (see `notification`).
        let notif = tri!(unsafe { notification(notif, notif_len) });
        let h = rx!(e.prepare(op, local, PeerId(peer), remote, notif));
        // SAFETY: checked non-NULL.
        unsafe { put(out_handle, h.to_raw()) }
    })
}

/// Starts a prepared transfer. `RX_INBOX_FULL`: the peer's inbox lane is full and the
/// transfer stays prepared (retry, or release it).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_post(engine: *const rx_engine, handle: u64) -> rx_status {
    guard(|| {
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        status_of(e.post(Handle::from_raw(handle)))
    })
}

/// Writes where a transfer is to `*out`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_get_status(engine: *const rx_engine, handle: u64, out: *mut rx_xfer_status) -> rx_status {
    guard(|| {
        tri!(need(out));
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        let s = rx!(e.status(Handle::from_raw(handle)));
        // SAFETY: checked non-NULL.
        unsafe { put(out, xfer_status(s)) }
    })
}

/// Waits up to `timeout_us` microseconds for the transfer to end (backing off, not
/// spinning a core) and writes its final status to `*out`. `RX_TIMEOUT` leaves it going.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_wait(
    engine: *const rx_engine,
    handle: u64,
    timeout_us: u64,
    out: *mut rx_xfer_status,
) -> rx_status {
    guard(|| {
        tri!(need(out));
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        let s = rx!(e.wait(Handle::from_raw(handle), Duration::from_micros(timeout_us)));
        // SAFETY: checked non-NULL.
        unsafe { put(out, xfer_status(s)) }
    })
}

/// Cancels a transfer; what happened (an `rx_cancel_result`) goes to `*out_result`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_cancel(engine: *const rx_engine, handle: u64, out_result: *mut u32) -> rx_status {
    guard(|| {
        tri!(need(out_result));
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        let r = match rx!(e.cancel(Handle::from_raw(handle))) {
            CancelResult::Cancelled => rx_cancel_result::RX_CANCEL_DONE,
            CancelResult::InFlight => rx_cancel_result::RX_CANCEL_IN_FLIGHT,
            CancelResult::AlreadyComplete => rx_cancel_result::RX_CANCEL_ALREADY_COMPLETE,
        };
        // SAFETY: checked non-NULL.
        unsafe { put(out_result, r as u32) }
    })
}

/// Gives a handle up: its slot returns to the ring now (or, if the transfer is still
/// in flight, when it completes). Any later use of the handle is `RX_STALE_HANDLE`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_release(engine: *const rx_engine, handle: u64) -> rx_status {
    guard(|| {
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        status_of(e.release(Handle::from_raw(handle)).map(|_| ()))
    })
}

/// Validates and pins a descriptor list once (control path); its id goes to `*out_list`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_prepare_list(
    engine: *const rx_engine,
    op: u32,
    local: *const rx_desc,
    local_len: usize,
    peer: u32,
    remote: *const rx_desc,
    remote_len: usize,
    out_list: *mut u64,
) -> rx_status {
    guard(|| {
        tri!(need(out_list));
        // SAFETY: see `engine` and `descs`.
        let e = tri!(unsafe { self::engine(engine) });
        let op = tri!(op_from(op));
        // SAFETY: the caller's buffer contract (see `descs`).
        let local = tri!(unsafe { descs(local, local_len) });
        // SAFETY: the caller's buffer contract (see `descs`).
        let remote = tri!(unsafe { descs(remote, remote_len) });
        let list = rx!(e.prepare_list(op, local, PeerId(peer), remote));
        // SAFETY: checked non-NULL.
        unsafe { put(out_list, list.to_raw()) }
    })
}

/// Posts a prepared list as a new transfer (fresh handle) with an optional notification.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_post_list(
    engine: *const rx_engine,
    list: u64,
    notif: *const u8,
    notif_len: usize,
    out_handle: *mut u64,
) -> rx_status {
    guard(|| {
        tri!(need(out_handle));
        // SAFETY: see `engine` and `notification`.
        let e = tri!(unsafe { self::engine(engine) });
        // SAFETY: the caller's buffer contract (see `notification`).
        let notif = tri!(unsafe { notification(notif, notif_len) });
        let h = rx!(e.post_list(ListId::from_raw(list), notif));
        // SAFETY: checked non-NULL.
        unsafe { put(out_handle, h.to_raw()) }
    })
}

/// Drops a prepared list and its pins.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_release_list(engine: *const rx_engine, list: u64) -> rx_status {
    guard(|| {
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        status_of(e.release_list(ListId::from_raw(list)))
    })
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

/// Writes the engine's counters and ledger to `*out`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_engine_stats(engine: *const rx_engine, out: *mut rx_stats) -> rx_status {
    guard(|| {
        tri!(need(out));
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        let s = e.stats();
        let r = s.ring;
        let stats = rx_stats {
            capacity: r.capacity as u64,
            live: r.live as u64,
            high_water: r.high_water as u64,
            acquired: r.acquired,
            freed: r.freed,
            done: r.done,
            failed: r.failed,
            cancelled: r.cancelled,
            stale_completions: r.stale_completions,
            retired: r.retired,
            registrations: s.registrations as u64,
            pins: s.pins,
            peers: s.peers as u64,
            prepared_lists: s.prepared_lists as u64,
            open_files: s.open_files as u64,
            notifications_queued: s.notifications_queued as u64,
            notifications_delivered: s.notifications_delivered,
            notifications_stale: s.notifications_stale,
        };
        // SAFETY: checked non-NULL.
        unsafe { put(out, stats) }
    })
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
