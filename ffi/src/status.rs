//! `rx_status`, the mapping from `ringxfer::Error`, and the per-thread last error text.

use std::cell::RefCell;
use std::fmt::Write;

use ringxfer::Error;

/// The result of every fallible `rx_*` function. `RX_OK` (0) is success; every other
/// value names a failure, and `rx_status_str` describes it. The calling thread's last
/// failure is described in detail by `rx_last_error`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum rx_status {
    /// Success.
    RX_OK = 0,
    /// A pointer was NULL, a length did not match its buffer, or an enum value from C
    /// was out of range. Nothing was done.
    RX_INVALID_ARGUMENT = 1,
    /// Every transfer slot is in use: release finished transfers, or raise `capacity`.
    RX_RING_FULL = 2,
    /// The handle's transfer was released, or the handle belongs to another engine.
    RX_STALE_HANDLE = 3,
    /// The handle is 0 or its index is outside the ring.
    RX_INVALID_HANDLE = 4,
    /// The transfer is not in a state that allows this (e.g. posted twice).
    RX_WRONG_STATE = 5,
    /// A configuration value is out of range.
    RX_INVALID_CONFIG = 6,
    /// A descriptor is malformed (empty, or the list is empty with no notification).
    RX_INVALID_DESCRIPTOR = 7,
    /// A region id is not registered (locally or at the peer).
    RX_UNKNOWN_REGION = 8,
    /// A descriptor reaches outside its region.
    RX_OUT_OF_BOUNDS = 9,
    /// The region is used by a transfer not yet released.
    RX_BUSY = 10,
    /// The registration table is full.
    RX_REGISTRY_FULL = 11,
    /// An allocation the caller asked for failed.
    RX_OUT_OF_MEMORY = 12,
    /// Local and remote descriptor lists differ in count or lengths.
    RX_LENGTH_MISMATCH = 13,
    /// More descriptors than `max_descs_per_xfer`.
    RX_TOO_MANY_DESCRIPTORS = 14,
    /// No peer with this id.
    RX_UNKNOWN_PEER = 15,
    /// The peer table (or the peer's inbox lanes) is full.
    RX_PEER_TABLE_FULL = 16,
    /// The prepared list was released or never existed.
    RX_UNKNOWN_LIST = 17,
    /// The prepared-list table is full.
    RX_LIST_TABLE_FULL = 18,
    /// The notification exceeds `max_notif_bytes` (ours or the peer's).
    RX_NOTIFICATION_TOO_LARGE = 19,
    /// The peer's inbox lane is full: retry after it pops notifications.
    RX_INBOX_FULL = 20,
    /// The caller's buffer is too small.
    RX_BUFFER_TOO_SMALL = 21,
    /// A metadata blob is truncated, corrupted, of another version, or malformed.
    RX_METADATA = 22,
    /// The peer cannot be reached with any transport this engine has.
    RX_PEER_UNREACHABLE = 23,
    /// The peer is lost: its process exited or its connection broke (load it again).
    RX_PEER_LOST = 24,
    /// An operating-system call failed (see `rx_last_error`).
    RX_IO = 25,
    /// `rx_wait` gave up before the transfer ended; the transfer goes on.
    RX_TIMEOUT = 26,
    /// The library was built without what the call needs.
    RX_UNSUPPORTED = 27,
    /// A bug inside ringxfer panicked; the call was abandoned and the panic stopped at
    /// the FFI boundary. The engine may be left with a slot held: report it.
    RX_PANIC = 28,
    /// libfabric is not installed, or no provider offers what the fabric transport needs.
    RX_FABRIC_UNAVAILABLE = 29,
    /// A libfabric call failed (see `rx_last_error`).
    RX_FABRIC = 30,
    /// CUDA is not usable: no driver library, no device, or a build without it.
    RX_CUDA_UNAVAILABLE = 31,
    /// A CUDA driver call failed (see `rx_last_error`).
    RX_CUDA = 32,
    /// The engine still holds something for transfers (`rx_check_quiescent`; see
    /// `rx_last_error`).
    RX_NOT_QUIESCENT = 33,
    /// Every entry of the completion queue is taken: poll completions first
    /// (`rx_poll_completions`), or raise `rx_config::completion_queue`.
    RX_COMPLETION_QUEUE_FULL = 34,
    /// The cluster's metadata store (etcd) could not be reached or refused a
    /// request; the message names the endpoints.
    RX_METADATA_STORE = 35,
    /// Another live engine is registered under this name in the metadata store.
    RX_NAME_TAKEN = 36,
}

impl rx_status {
    /// Every status, for turning a number from C back into one.
    pub(crate) const ALL: [rx_status; 37] = [
        rx_status::RX_OK,
        rx_status::RX_INVALID_ARGUMENT,
        rx_status::RX_RING_FULL,
        rx_status::RX_STALE_HANDLE,
        rx_status::RX_INVALID_HANDLE,
        rx_status::RX_WRONG_STATE,
        rx_status::RX_INVALID_CONFIG,
        rx_status::RX_INVALID_DESCRIPTOR,
        rx_status::RX_UNKNOWN_REGION,
        rx_status::RX_OUT_OF_BOUNDS,
        rx_status::RX_BUSY,
        rx_status::RX_REGISTRY_FULL,
        rx_status::RX_OUT_OF_MEMORY,
        rx_status::RX_LENGTH_MISMATCH,
        rx_status::RX_TOO_MANY_DESCRIPTORS,
        rx_status::RX_UNKNOWN_PEER,
        rx_status::RX_PEER_TABLE_FULL,
        rx_status::RX_UNKNOWN_LIST,
        rx_status::RX_LIST_TABLE_FULL,
        rx_status::RX_NOTIFICATION_TOO_LARGE,
        rx_status::RX_INBOX_FULL,
        rx_status::RX_BUFFER_TOO_SMALL,
        rx_status::RX_METADATA,
        rx_status::RX_PEER_UNREACHABLE,
        rx_status::RX_PEER_LOST,
        rx_status::RX_IO,
        rx_status::RX_TIMEOUT,
        rx_status::RX_UNSUPPORTED,
        rx_status::RX_PANIC,
        rx_status::RX_FABRIC_UNAVAILABLE,
        rx_status::RX_FABRIC,
        rx_status::RX_CUDA_UNAVAILABLE,
        rx_status::RX_CUDA,
        rx_status::RX_NOT_QUIESCENT,
        rx_status::RX_COMPLETION_QUEUE_FULL,
        rx_status::RX_METADATA_STORE,
        rx_status::RX_NAME_TAKEN,
    ];

    pub(crate) fn describe(self) -> &'static std::ffi::CStr {
        match self {
            rx_status::RX_OK => c"ok",
            rx_status::RX_INVALID_ARGUMENT => c"invalid argument (NULL pointer, bad length or bad enum value)",
            rx_status::RX_RING_FULL => c"all transfer slots are in use",
            rx_status::RX_STALE_HANDLE => c"stale handle: released, or from another engine",
            rx_status::RX_INVALID_HANDLE => c"invalid handle: 0, or index outside the ring",
            rx_status::RX_WRONG_STATE => c"transfer is in the wrong state for this call",
            rx_status::RX_INVALID_CONFIG => c"invalid configuration",
            rx_status::RX_INVALID_DESCRIPTOR => c"invalid descriptor",
            rx_status::RX_UNKNOWN_REGION => c"unknown region",
            rx_status::RX_OUT_OF_BOUNDS => c"descriptor out of bounds",
            rx_status::RX_BUSY => c"resource busy: used by a transfer not yet released",
            rx_status::RX_REGISTRY_FULL => c"registration table full",
            rx_status::RX_OUT_OF_MEMORY => c"out of memory",
            rx_status::RX_LENGTH_MISMATCH => c"local and remote descriptor lists differ",
            rx_status::RX_TOO_MANY_DESCRIPTORS => c"too many descriptors",
            rx_status::RX_UNKNOWN_PEER => c"unknown peer",
            rx_status::RX_PEER_TABLE_FULL => c"peer table full",
            rx_status::RX_UNKNOWN_LIST => c"unknown prepared list",
            rx_status::RX_LIST_TABLE_FULL => c"prepared list table full",
            rx_status::RX_NOTIFICATION_TOO_LARGE => c"notification too large",
            rx_status::RX_INBOX_FULL => c"peer's notification inbox is full",
            rx_status::RX_BUFFER_TOO_SMALL => c"buffer too small",
            rx_status::RX_METADATA => c"bad metadata blob",
            rx_status::RX_PEER_UNREACHABLE => c"peer unreachable",
            rx_status::RX_PEER_LOST => c"peer lost: its process exited or its connection broke",
            rx_status::RX_IO => c"operating-system error",
            rx_status::RX_TIMEOUT => c"timed out",
            rx_status::RX_UNSUPPORTED => c"not supported by this build",
            rx_status::RX_PANIC => c"internal panic (a ringxfer bug)",
            rx_status::RX_FABRIC_UNAVAILABLE => c"libfabric unavailable",
            rx_status::RX_FABRIC => c"libfabric call failed",
            rx_status::RX_CUDA_UNAVAILABLE => c"CUDA unavailable",
            rx_status::RX_CUDA => c"CUDA call failed",
            rx_status::RX_NOT_QUIESCENT => c"the engine still holds transfers, regions or lists",
            rx_status::RX_COMPLETION_QUEUE_FULL => c"every entry of the completion queue is taken",
            rx_status::RX_METADATA_STORE => c"the metadata store (etcd) is unreachable or refused the request",
            rx_status::RX_NAME_TAKEN => c"the name is taken by another live engine in the metadata store",
        }
    }
}

impl From<&Error> for rx_status {
    fn from(e: &Error) -> rx_status {
        match e {
            Error::RingFull { .. } => rx_status::RX_RING_FULL,
            Error::StaleHandle { .. } => rx_status::RX_STALE_HANDLE,
            Error::InvalidHandle { .. } => rx_status::RX_INVALID_HANDLE,
            Error::WrongState { .. } => rx_status::RX_WRONG_STATE,
            Error::InvalidCapacity { .. } | Error::InvalidConfig { .. } => rx_status::RX_INVALID_CONFIG,
            Error::InvalidDescriptor { .. } | Error::NotOnFabric { .. } => rx_status::RX_INVALID_DESCRIPTOR,
            Error::UnknownRegion { .. } => rx_status::RX_UNKNOWN_REGION,
            Error::OutOfBounds { .. } => rx_status::RX_OUT_OF_BOUNDS,
            Error::Busy { .. } => rx_status::RX_BUSY,
            Error::RegistryFull { .. } => rx_status::RX_REGISTRY_FULL,
            Error::OutOfMemory { .. } => rx_status::RX_OUT_OF_MEMORY,
            Error::LengthMismatch { .. } => rx_status::RX_LENGTH_MISMATCH,
            Error::TooManyDescriptors { .. } | Error::TooManyBlocks { .. } => rx_status::RX_TOO_MANY_DESCRIPTORS,
            Error::UnknownPeer { .. } => rx_status::RX_UNKNOWN_PEER,
            Error::PeerTableFull { .. } => rx_status::RX_PEER_TABLE_FULL,
            Error::UnknownList { .. } => rx_status::RX_UNKNOWN_LIST,
            Error::ListTableFull { .. } => rx_status::RX_LIST_TABLE_FULL,
            Error::NotificationTooLarge { .. } => rx_status::RX_NOTIFICATION_TOO_LARGE,
            Error::InboxFull { .. } => rx_status::RX_INBOX_FULL,
            Error::BufferTooSmall { .. } => rx_status::RX_BUFFER_TOO_SMALL,
            Error::Metadata(_) => rx_status::RX_METADATA,
            Error::PeerUnreachable { .. } => rx_status::RX_PEER_UNREACHABLE,
            Error::PeerLost { .. } => rx_status::RX_PEER_LOST,
            Error::Io { .. } => rx_status::RX_IO,
            Error::Timeout { .. } => rx_status::RX_TIMEOUT,
            Error::KvFull { .. } => rx_status::RX_REGISTRY_FULL,
            Error::KeyTooLong { .. } | Error::ValueTooLarge { .. } => rx_status::RX_INVALID_ARGUMENT,
            Error::FabricUnavailable { .. } => rx_status::RX_FABRIC_UNAVAILABLE,
            Error::Fabric { .. } => rx_status::RX_FABRIC,
            Error::CudaUnavailable { .. } => rx_status::RX_CUDA_UNAVAILABLE,
            Error::Cuda { .. } => rx_status::RX_CUDA,
            Error::NotQuiescent { .. } => rx_status::RX_NOT_QUIESCENT,
            Error::CompletionQueueFull { .. } => rx_status::RX_COMPLETION_QUEUE_FULL,
            Error::Poisoned => rx_status::RX_PANIC,
            Error::MetadataStore { .. } => rx_status::RX_METADATA_STORE,
            Error::NameTaken { .. } => rx_status::RX_NAME_TAKEN,
            _ => rx_status::RX_UNSUPPORTED,
        }
    }
}

/// Room for the calling thread's last error message (longer ones are cut).
const LAST_ERROR_BYTES: usize = 512;

/// A fixed buffer that `fmt::Write` fills without allocating, cutting at the end.
struct FixedText {
    bytes: [u8; LAST_ERROR_BYTES],
    len: usize,
}

impl Write for FixedText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = LAST_ERROR_BYTES - 1 - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<FixedText> = const { RefCell::new(FixedText { bytes: [0; LAST_ERROR_BYTES], len: 0 }) };
}

/// Records `text` as the calling thread's last error (no allocation).
pub(crate) fn set_last_error(text: std::fmt::Arguments<'_>) {
    LAST_ERROR.with(|cell| {
        if let Ok(mut t) = cell.try_borrow_mut() {
            t.len = 0;
            let _ = t.write_fmt(text);
        }
    });
}

/// Copies the calling thread's last error into `out` (NUL-terminated, cut to fit);
/// returns the number of bytes written before the NUL.
pub(crate) fn copy_last_error(out: &mut [u8]) -> usize {
    LAST_ERROR.with(|cell| {
        let t = cell.borrow();
        let n = t.len.min(out.len().saturating_sub(1));
        out[..n].copy_from_slice(&t.bytes[..n]);
        if let Some(nul) = out.get_mut(n) {
            *nul = 0;
        }
        n
    })
}

/// Converts a `ringxfer` result, recording the error text when there is one.
pub(crate) fn status_of(result: Result<(), Error>) -> rx_status {
    match result {
        Ok(()) => rx_status::RX_OK,
        Err(e) => fail(&e),
    }
}

/// Records `e` as the last error and returns its status.
pub(crate) fn fail(e: &Error) -> rx_status {
    set_last_error(format_args!("{e}"));
    rx_status::from(e)
}

/// A failure of something this build leaves out, with a reason.
#[cfg_attr(feature = "etcd", allow(dead_code))]
pub(crate) fn unsupported(reason: &'static str) -> rx_status {
    set_last_error(format_args!("unsupported: {reason}"));
    rx_status::RX_UNSUPPORTED
}

/// An invalid-argument failure with a reason.
pub(crate) fn invalid(reason: &'static str) -> rx_status {
    set_last_error(format_args!("invalid argument: {reason}"));
    rx_status::RX_INVALID_ARGUMENT
}
