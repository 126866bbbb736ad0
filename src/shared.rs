//! The half of an engine that its transports and its peers in the same process
//! reach: its name and id, its registered memory and its notification inbox.

use crate::mem::Registry;
use crate::notify::Inbox;

/// See the module docs. Held in an `Arc` by the engine, its I/O workers and the
/// process-wide directory of the `local` transport.
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) engine_id: u64,
    /// Slots of the engine's ring (a receiver tracks that many per sender).
    pub(crate) capacity: usize,
    pub(crate) registry: Registry,
    pub(crate) inbox: Inbox,
}
