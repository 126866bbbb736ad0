//! `Error`: every way a ringxfer call can fail, with a message a user can act on.

use crate::ring::Handle;

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
}

/// `Result` with ringxfer's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
