//! Every `ringxfer::Error` kind as its own exception class, all under
//! `ringxfer.Error`, carrying the Rust message.

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::{PyErr, create_exception};

create_exception!(ringxfer, Error, PyException, "Base class of every ringxfer error.");

/// Declares the exception classes (each a subclass of `Error`) and the table that
/// registers them on the module.
macro_rules! errors {
    ($($name:ident: $doc:literal,)*) => {
        $(create_exception!(ringxfer, $name, Error, $doc);)*

        /// Adds `Error` and every subclass to the module.
        pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
            let py = m.py();
            m.add("Error", py.get_type::<Error>())?;
            $(m.add(stringify!($name), py.get_type::<$name>())?;)*
            Ok(())
        }
    };
}

errors! {
    RingFull: "Every transfer slot is in use (`capacity`): release some, or make the engine bigger.",
    CompletionQueueFull: "The completion queue is full: poll it.",
    StaleHandle: "The handle names a transfer that was released (its slot has moved on).",
    InvalidHandle: "The handle was never issued by this engine.",
    WrongState: "The transfer is not in a state that allows this operation.",
    InvalidCapacity: "A capacity out of its range.",
    InvalidConfig: "A configuration field out of its range.",
    InvalidDescriptor: "A descriptor the engine cannot use (empty, overflowing).",
    UnknownRegion: "The region is not registered (or was deregistered).",
    OutOfBounds: "A descriptor reaches past the end of its region.",
    Busy: "The resource is held (a region pinned by a transfer, an engine used elsewhere).",
    RegistryFull: "Every registration slot is in use.",
    OutOfMemory: "An allocation at registration failed.",
    LengthMismatch: "The two sides of a transfer (or a batch) differ in length.",
    TooManyDescriptors: "More descriptors than `max_descs_per_xfer`.",
    TooManyBlocks: "More block ids than `max_blocks_per_xfer`.",
    UnknownList: "The prepared list was released or never made.",
    ListTableFull: "Every prepared-list slot is in use.",
    UnknownPeer: "The peer is not loaded (or was unloaded).",
    PeerTableFull: "Every peer slot is in use.",
    NotificationTooLarge: "A notification payload over `max_notif_bytes`.",
    InboxFull: "The peer's inbox lane for this engine is full: it has not popped.",
    BufferTooSmall: "The buffer given is too small for what was to be written into it.",
    MetadataError: "Malformed, foreign or refused metadata.",
    PeerLost: "The peer exited or stopped answering.",
    CudaUnavailable: "The cuda transport is off or CUDA could not be loaded.",
    CudaError: "A CUDA driver call failed.",
    NotOnFabric: "The peer or region cannot be reached over the fabric.",
    FabricUnavailable: "The fabric transport is off or libfabric could not be loaded.",
    FabricError: "A libfabric call failed.",
    PeerUnreachable: "The peer could not be reached (metadata server, connection).",
    IoError: "An operating-system call failed.",
    KvFull: "The key-value store has no free value block.",
    KeyTooLong: "A key longer than the store's `max_key_len` (or empty).",
    ValueTooLarge: "A value larger than the store's `block_size`.",
    TransferFailed: "A transfer ended in failure (the message names the cause).",
    Poisoned: "A panic inside the engine left it unusable: make a new one.",
    NotQuiescent: "Something is still held (slots, pins, lists, notifications).",
    Timeout: "A wait gave up before the transfer ended; the transfer goes on.",
    MetadataStoreError: "The cluster's metadata store (etcd) is unreachable or refused the request.",
    NameTaken: "Another live engine is registered under this name in the metadata store.",
    Closed: "The engine (or store) was closed.",
}

/// The exception class of `e`, with its message.
pub(crate) fn to_py(e: ringxfer::Error) -> PyErr {
    use ringxfer::Error as E;
    let message = e.to_string();
    match e {
        E::RingFull { .. } => RingFull::new_err(message),
        E::CompletionQueueFull { .. } => CompletionQueueFull::new_err(message),
        E::StaleHandle { .. } => StaleHandle::new_err(message),
        E::InvalidHandle { .. } => InvalidHandle::new_err(message),
        E::WrongState { .. } => WrongState::new_err(message),
        E::InvalidCapacity { .. } => InvalidCapacity::new_err(message),
        E::InvalidConfig { .. } => InvalidConfig::new_err(message),
        E::InvalidDescriptor { .. } => InvalidDescriptor::new_err(message),
        E::UnknownRegion { .. } => UnknownRegion::new_err(message),
        E::OutOfBounds { .. } => OutOfBounds::new_err(message),
        E::Busy { .. } => Busy::new_err(message),
        E::RegistryFull { .. } => RegistryFull::new_err(message),
        E::OutOfMemory { .. } => OutOfMemory::new_err(message),
        E::LengthMismatch { .. } => LengthMismatch::new_err(message),
        E::TooManyDescriptors { .. } => TooManyDescriptors::new_err(message),
        E::TooManyBlocks { .. } => TooManyBlocks::new_err(message),
        E::UnknownList { .. } => UnknownList::new_err(message),
        E::ListTableFull { .. } => ListTableFull::new_err(message),
        E::UnknownPeer { .. } => UnknownPeer::new_err(message),
        E::PeerTableFull { .. } => PeerTableFull::new_err(message),
        E::NotificationTooLarge { .. } => NotificationTooLarge::new_err(message),
        E::InboxFull { .. } => InboxFull::new_err(message),
        E::BufferTooSmall { .. } => BufferTooSmall::new_err(message),
        E::Metadata(_) => MetadataError::new_err(message),
        E::PeerLost { .. } => PeerLost::new_err(message),
        E::CudaUnavailable { .. } => CudaUnavailable::new_err(message),
        E::Cuda { .. } => CudaError::new_err(message),
        E::NotOnFabric { .. } => NotOnFabric::new_err(message),
        E::FabricUnavailable { .. } => FabricUnavailable::new_err(message),
        E::Fabric { .. } => FabricError::new_err(message),
        E::PeerUnreachable { .. } => PeerUnreachable::new_err(message),
        E::Io { .. } => IoError::new_err(message),
        E::KvFull { .. } => KvFull::new_err(message),
        E::KeyTooLong { .. } => KeyTooLong::new_err(message),
        E::ValueTooLarge { .. } => ValueTooLarge::new_err(message),
        E::TransferFailed { .. } => TransferFailed::new_err(message),
        E::Poisoned => Poisoned::new_err(message),
        E::NotQuiescent { .. } => NotQuiescent::new_err(message),
        E::Timeout { .. } => Timeout::new_err(message),
        E::MetadataStore { .. } => MetadataStoreError::new_err(message),
        E::NameTaken { .. } => NameTaken::new_err(message),
        _ => Error::new_err(message),
    }
}

/// `Result<T, ringxfer::Error>` into a Python result.
pub(crate) trait IntoPy<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for ringxfer::Result<T> {
    #[inline]
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
