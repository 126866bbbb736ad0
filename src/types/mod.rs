//! The vocabulary every layer shares: which way a transfer goes ([`Op`]), whom it goes
//! to ([`PeerId`]), what it names ([`RegionId`], [`Desc`]), its name ([`Handle`]) and
//! how it ends ([`FailCode`], [`Outcome`], [`Status`]). Nothing here knows a transport
//! or the engine; every other module may use it.

mod blocks;
mod desc;
mod fail;
mod handle;

pub use blocks::Blocks;
pub use desc::{Desc, RegionId};
pub use fail::{CancelResult, FailCode, FailSource, Outcome, Released, Status, TransportId};
pub use handle::{FIRST_GENERATION, GENERATION_BITS, Handle, INDEX_BITS, MAX_CAPACITY, MAX_GENERATION};

/// Which way a transfer moves bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Op {
    /// Local → remote.
    #[default]
    Write,
    /// Remote → local.
    Read,
}

/// A loaded peer: an index into the engine's peer table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerId(pub u32);

impl PeerId {
    /// This engine itself: transfers between its own registrations, e.g. memory to and
    /// from a registered file. Also `Engine::local_peer`.
    pub const SELF: PeerId = PeerId(u32::MAX);
}
