//! Transfers, the hot path: descriptors and transfer states as C sees them; preparing,
//! posting, watching, cancelling and releasing a transfer; and prepared lists, which
//! validate and pin a descriptor list once to post it many times.

use std::time::Duration;

use ringxfer::ring::{CancelResult, FailSource, Handle, Status, TransportId};
use ringxfer::{Blocks, Desc, ListId, Op, PeerId, RegionId};

use crate::boundary::{engine, guard, need, put, slice};
use crate::engine::rx_engine;
use crate::notifications::notification;
use crate::status::{invalid, rx_status, status_of};

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
    /// In flight on the fabric, whose operations cannot be recalled: it reads
    /// failed (engine code 7, cancelled) from now on, its notification is not sent,
    /// and its slot is freed once the operations let go.
    RX_CANCEL_ABANDONED = 3,
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

pub(crate) fn xfer_status(s: Status) -> rx_xfer_status {
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

/// `count` equal blocks of one region, `block_len` bytes each: block `k` starts at
/// `offset + id × stride`, where `id` is `ids[k]`, or `k` when `ids` is NULL (a
/// strided set). See `rx_prepare_blocks`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rx_blocks {
    /// The region id.
    pub region: u64,
    /// Where block id 0 starts in the region.
    pub offset: u64,
    /// Each block's length in bytes (non-zero).
    pub block_len: u64,
    /// Bytes from one block id to the next.
    pub stride: u64,
    /// `count` block ids, or NULL for ids `0..count`.
    pub ids: *const u32,
    /// How many blocks.
    pub count: u32,
}

/// One side of a pair of block sets, read from C. `ids` was checked by `check_ids`.
fn blocks_of<'a>(b: &rx_blocks) -> Blocks<'a> {
    let region = RegionId::from_raw(b.region);
    if b.ids.is_null() {
        return Blocks::strided(region, b.offset, b.block_len, b.stride, b.count);
    }
    // SAFETY: checked non-NULL and aligned by `check_ids`; the caller promises `count`
    // readable ids for the call.
    let ids = unsafe { std::slice::from_raw_parts(b.ids, b.count as usize) };
    Blocks::indexed(region, b.offset, b.block_len, b.stride, ids)
}

/// Checks that every set's ids are NULL or an aligned array.
fn check_ids(sets: &[rx_blocks]) -> Result<(), rx_status> {
    match sets.iter().any(|b| !b.ids.is_null() && !b.ids.is_aligned()) {
        true => Err(invalid("misaligned block ids")),
        false => Ok(()),
    }
}

/// Prepares a block transfer (`op` is an `rx_op`): block `k` of `local[i]` moves to
/// or from block `k` of `remote[i]`; pairs have equal block length and count. The
/// indexed sets' ids are copied (at most `max_blocks_per_xfer` a side); `local` and
/// `remote` need not outlive the call. Otherwise as `rx_prepare`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_prepare_blocks(
    engine: *const rx_engine,
    op: u32,
    local: *const rx_blocks,
    local_len: usize,
    peer: u32,
    remote: *const rx_blocks,
    remote_len: usize,
    notif: *const u8,
    notif_len: usize,
    out_handle: *mut u64,
) -> rx_status {
    guard(|| {
        tri!(need(out_handle));
        // SAFETY: see `engine` and `notification`.
        let e = tri!(unsafe { self::engine(engine) });
        let op = tri!(op_from(op));
        // SAFETY: the caller promises `local_len` readable sets.
        let local = tri!(unsafe { slice(local, local_len) });
        // SAFETY: the caller promises `remote_len` readable sets.
        let remote = tri!(unsafe { slice(remote, remote_len) });
        tri!(check_ids(local));
        tri!(check_ids(remote));
        if local.len() != remote.len() {
            return status_of(Err(ringxfer::Error::LengthMismatch {
                what: "block set count",
                local: local.len() as u64,
                remote: remote.len() as u64,
            }));
        }
        // SAFETY: the caller's buffer contract (see `notification`).
        let notif = tri!(unsafe { notification(notif, notif_len) });
        let pair = |i: usize| (blocks_of(&local[i]), blocks_of(&remote[i]));
        let h = rx!(e.prepare_blocks_with(op, local.len(), pair, PeerId(peer), notif));
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
            CancelResult::Abandoned => rx_cancel_result::RX_CANCEL_ABANDONED,
        };
        // SAFETY: checked non-NULL.
        unsafe { put(out_result, r as u32) }
    })
}

/// Chooses how long one prepared (not yet posted) transfer may stay in flight once
/// posted, in nanoseconds, instead of `rx_config::deadline_ms`; `UINT64_MAX`: no
/// deadline. Past it the transfer reads failed (engine code 1, deadline expired).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_set_deadline(engine: *const rx_engine, handle: u64, timeout_ns: u64) -> rx_status {
    guard(|| {
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        let timeout = (timeout_ns != u64::MAX).then(|| Duration::from_nanos(timeout_ns));
        status_of(e.set_deadline(Handle::from_raw(handle), timeout))
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

/// Posts the entries `indices[0..count]` of a prepared list (descriptor pairs by
/// position; any order, repeats allowed; at most `max_descs_per_xfer`) as one new
/// transfer with an optional notification. An index past the list's end is
/// `RX_INVALID_DESCRIPTOR` and nothing is posted.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_post_list_indices(
    engine: *const rx_engine,
    list: u64,
    indices: *const u32,
    count: usize,
    notif: *const u8,
    notif_len: usize,
    out_handle: *mut u64,
) -> rx_status {
    guard(|| {
        tri!(need(out_handle));
        // SAFETY: see `engine` and `notification`.
        let e = tri!(unsafe { self::engine(engine) });
        // SAFETY: the caller's buffer contract: `count` readable ids (NULL with 0).
        let indices = tri!(unsafe { slice(indices, count) });
        // SAFETY: the caller's buffer contract (see `notification`).
        let notif = tri!(unsafe { notification(notif, notif_len) });
        let h = rx!(e.post_list_indices(ListId::from_raw(list), indices, notif));
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
