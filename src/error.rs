//! `Error`: every way a ringxfer call can fail, with a message a user can act on.

use crate::types::Handle;

/// The error of every fallible ringxfer call.
///
/// Each variant names the problem and carries what the caller needs to act on it.
/// Nothing is changed by a call that returns an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Every slot of the ring is taken. Back off, progress and release transfers,
    /// or build the engine with a larger capacity.
    #[error("ring full: all {capacity} transfer slots are in use (release finished transfers or raise the capacity)")]
    RingFull {
        /// The ring's fixed capacity.
        capacity: usize,
    },
    /// Every entry of the completion queue is taken (by transfers that asked for a
    /// report, or by completions not yet polled). Poll completions, or build the
    /// engine with a larger `Config::completion_queue`; 0: the engine has none.
    #[error(
        "completion queue full: all {capacity} entries are taken (poll completions or raise Config::completion_queue)"
    )]
    CompletionQueueFull {
        /// The queue's fixed capacity (0: no completion queue).
        capacity: usize,
    },
    /// The handle names a transfer that was released (or a generation its slot never
    /// had). It no longer refers to any transfer, and nothing was touched.
    #[error("stale handle {handle}: its transfer was already released, or the handle was never issued")]
    StaleHandle {
        /// The handle that was passed.
        handle: Handle,
    },
    /// The handle is null or its index is outside the ring.
    #[error("invalid handle {handle:?}: null, or its index is outside a ring of {capacity} slots")]
    InvalidHandle {
        /// The handle that was passed.
        handle: Handle,
        /// The ring's capacity.
        capacity: usize,
    },
    /// The transfer is live but not in a state that allows this operation
    /// (e.g. posting a transfer twice).
    #[error("cannot {operation} transfer {handle}: it is {state}")]
    WrongState {
        /// The handle that was passed.
        handle: Handle,
        /// What was asked: "post", …
        operation: &'static str,
        /// The state the transfer is in.
        state: &'static str,
    },
    /// A capacity given at construction is out of range.
    #[error("invalid capacity {requested}: must be a power of two between 1 and {max}")]
    InvalidCapacity {
        /// What was asked for.
        requested: usize,
        /// The largest capacity allowed.
        max: usize,
    },
    /// An engine configuration value is out of range.
    #[error("invalid config: {field} {reason}")]
    InvalidConfig {
        /// The `Config` field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A descriptor or region argument is malformed.
    #[error("invalid descriptor: {reason}")]
    InvalidDescriptor {
        /// What is wrong.
        reason: &'static str,
    },
    /// The region id is not (or no longer) registered, locally or at the peer.
    #[error("unknown region {region:#x}: not registered, or deregistered since")]
    UnknownRegion {
        /// The raw region id.
        region: u64,
    },
    /// A descriptor reaches outside its region.
    #[error(
        "descriptor out of bounds: {len} bytes at offset {offset} of region {region:#x}, which has {region_len} bytes"
    )]
    OutOfBounds {
        /// The raw region id.
        region: u64,
        /// The descriptor's offset.
        offset: u64,
        /// The descriptor's length.
        len: u64,
        /// The region's length.
        region_len: u64,
    },
    /// The resource is in use by transfers (or prepared lists, or a peer's copy);
    /// finish or release them first.
    #[error(
        "{what} {id:#x} is busy: {users} user(s) still hold it (transfers not yet released, prepared lists, copies)"
    )]
    Busy {
        /// What kind of resource.
        what: &'static str,
        /// Its raw id.
        id: u64,
        /// How many users hold it: transfers not yet released and prepared lists that
        /// name it, control-path copies in progress, or a peer's copies.
        users: u32,
    },
    /// The registration table is full (`Config::max_registrations`).
    #[error("registration table full: all {capacity} entries in use (deregister or raise max_registrations)")]
    RegistryFull {
        /// The table's fixed capacity.
        capacity: usize,
    },
    /// The engine could not allocate a buffer it was asked for (control path only).
    #[error("out of memory allocating {len} bytes")]
    OutOfMemory {
        /// The requested size.
        len: usize,
    },
    /// The local and remote descriptor lists do not move the same bytes.
    #[error("descriptor lists differ: local {local} vs remote {remote} ({what})")]
    LengthMismatch {
        /// Which quantity differs: "descriptor count" or "length of descriptor N".
        what: &'static str,
        /// The local value.
        local: u64,
        /// The remote value.
        remote: u64,
    },
    /// More descriptors than `Config::max_descs_per_xfer` in a transfer (or
    /// `Config::max_list_descs` in a prepared list).
    #[error(
        "too many descriptors: {count} (the limit is {max}: max_descs_per_xfer in a transfer, max_list_descs in a prepared list)"
    )]
    TooManyDescriptors {
        /// How many were given.
        count: usize,
        /// The configured limit.
        max: usize,
    },
    /// More block ids than `Config::max_blocks_per_xfer` on one side of a block
    /// transfer.
    #[error("too many block ids: {count} (max_blocks_per_xfer is {max})")]
    TooManyBlocks {
        /// How many the transfer's indexed sets name on that side.
        count: usize,
        /// The configured limit.
        max: usize,
    },
    /// The prepared list was released (or never existed).
    #[error("unknown prepared list {list:#x}: released, or never prepared")]
    UnknownList {
        /// The raw list id.
        list: u64,
    },
    /// Every prepared-list entry is taken (`Config::max_prepared_lists`).
    #[error("prepared list table full: {capacity} lists alive (release one or raise max_prepared_lists)")]
    ListTableFull {
        /// The table's fixed capacity.
        capacity: usize,
    },
    /// No peer with this id was loaded.
    #[error("unknown peer {peer}")]
    UnknownPeer {
        /// The peer id.
        peer: u32,
    },
    /// The peer table is full (`Config::max_peers`).
    #[error("peer table full: {capacity} peers loaded (raise max_peers)")]
    PeerTableFull {
        /// The table's fixed capacity.
        capacity: usize,
    },
    /// A notification payload exceeds `Config::max_notif_bytes`.
    #[error("notification of {len} bytes exceeds max_notif_bytes ({max})")]
    NotificationTooLarge {
        /// The payload length.
        len: usize,
        /// The configured limit (the smaller of ours and the peer's).
        max: usize,
    },
    /// The peer's notification inbox is full: back off and retry (nothing was sent).
    #[error("peer {peer}'s notification inbox is full (it must pop notifications)")]
    InboxFull {
        /// The peer id.
        peer: u32,
    },
    /// The caller's buffer cannot hold the largest notification (or the metrics text).
    #[error("buffer of {got} bytes is too small: {needed} bytes needed")]
    BufferTooSmall {
        /// The size needed (`max_notif_bytes`, or the metrics text's length).
        needed: usize,
        /// The size given.
        got: usize,
    },
    /// A metadata blob could not be read.
    #[error(transparent)]
    Metadata(#[from] crate::wire::metadata::MetadataError),
    /// The peer is lost: its process has exited, its connection broke, or it let a
    /// transfer's deadline pass. Transfers to it fail with `FailCode::PEER_LOST`.
    #[error("peer {peer} is lost: its process exited or its connection broke (load it again once it is back)")]
    PeerLost {
        /// The peer id.
        peer: u32,
    },
    /// CUDA cannot be used: no driver library, no device, or the crate was built
    /// without the `cuda` feature. The message says which.
    #[error("CUDA unavailable: {reason}")]
    CudaUnavailable {
        /// Why.
        reason: String,
    },
    /// A CUDA driver call of the control path (context, streams, events, allocation)
    /// failed.
    #[error("{what} failed: CUDA error {code}")]
    Cuda {
        /// The call.
        what: &'static str,
        /// The `CUresult`.
        code: i32,
    },
    /// GPU memory named in a transfer to a fabric peer that the fabric could not
    /// register (no `FI_HMEM` in the provider, or no CUDA support in libfabric).
    #[error("GPU memory region {region:#x} cannot move over the fabric: {reason}")]
    NotOnFabric {
        /// The region.
        region: u64,
        /// Why (the provider, or libfabric's error).
        reason: String,
    },
    /// libfabric cannot be used: the library is not installed, or no provider offers
    /// what the fabric transport needs. The message says which, and how to install it.
    #[error("libfabric unavailable: {reason}")]
    FabricUnavailable {
        /// Why, with the fix.
        reason: String,
    },
    /// A libfabric call of the control path (opening, registering, connecting) failed.
    #[error("{what} failed: {message} (libfabric error {code})")]
    Fabric {
        /// The call.
        what: &'static str,
        /// libfabric's (positive) error number.
        code: i32,
        /// libfabric's text for it.
        message: String,
    },
    /// The peer's metadata names no transport this engine can reach it by.
    #[error("peer {name} unreachable: {reason}")]
    PeerUnreachable {
        /// The peer engine's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// An operating-system call on the control path failed.
    #[error("{context}: {kind} ({message})")]
    Io {
        /// What the engine was doing.
        context: &'static str,
        /// The error's kind.
        kind: std::io::ErrorKind,
        /// The OS message.
        message: String,
    },
    /// A key-value store is full: remove keys or create it with more blocks.
    #[error("key-value store full: all {capacity} value blocks are in use")]
    KvFull {
        /// The store's fixed capacity.
        capacity: usize,
    },
    /// A key is empty or longer than the store allows.
    #[error("key of {len} bytes: keys must be 1 to {max} bytes")]
    KeyTooLong {
        /// The key's length.
        len: usize,
        /// The store's `max_key_len`.
        max: usize,
    },
    /// A value does not fit (in a block on `set`, in the buffer on `get`).
    #[error("value of {len} bytes does not fit in {max}")]
    ValueTooLarge {
        /// The value's length.
        len: u64,
        /// The room there is.
        max: u64,
    },
    /// A transfer made on the caller's behalf (by the key-value store) failed.
    #[error("transfer {handle} failed: {code}")]
    TransferFailed {
        /// The transfer (already released).
        handle: Handle,
        /// Why it failed.
        code: crate::types::FailCode,
    },
    /// A panic inside the engine (caught by the caller, or by the C boundary as
    /// `RX_PANIC`) may have left its tables half-updated: it refuses new work. What
    /// is in flight can still be watched, cancelled and released; drop the engine
    /// and make a new one.
    #[error(
        "the engine is poisoned: a panic inside it may have left its tables inconsistent; drop it and make a new one"
    )]
    Poisoned,
    /// [`Engine::check_quiescent`](crate::Engine::check_quiescent): something is held.
    #[error(
        "not quiescent: {live_slots} transfer slot(s) held, {pins} region pin(s), {prepared_lists} prepared list(s), \
         {transport_held} transfer(s) held by transports, {notifications_queued} notification(s) not popped, \
         {completions_queued} completion(s) not polled"
    )]
    NotQuiescent {
        /// Slots not yet released (reserved, in flight, or ended).
        live_slots: usize,
        /// Region pins held by transfers and prepared lists.
        pins: u64,
        /// Prepared lists not yet released.
        prepared_lists: usize,
        /// Transfers the transports still hold by their own tables.
        transport_held: usize,
        /// Notifications waiting in the inbox.
        notifications_queued: usize,
        /// Completions waiting to be polled.
        completions_queued: usize,
    },
    /// The cluster's metadata store (etcd) could not be reached or refused a request
    /// (see `cluster`): transfers between peers already loaded go on; registration
    /// and discovery fail until it is back.
    #[error("metadata store at {endpoints}: {reason}")]
    MetadataStore {
        /// The endpoints tried.
        endpoints: String,
        /// What went wrong.
        reason: String,
    },
    /// Another live engine is registered under this name in the metadata store.
    #[error("the name {name:?} is taken in the metadata store by another live engine ({key})")]
    NameTaken {
        /// The name.
        name: String,
        /// The key it is registered under.
        key: String,
    },
    /// `wait` gave up before the transfer ended; the transfer goes on.
    #[error("timed out waiting for transfer {handle}")]
    Timeout {
        /// The transfer.
        handle: Handle,
    },
}

impl Error {
    /// An [`Error::Io`] for a failed OS call (control path only: it allocates).
    pub(crate) fn io(context: &'static str, e: &std::io::Error) -> Error {
        Error::Io {
            context,
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// `Result` with ringxfer's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
