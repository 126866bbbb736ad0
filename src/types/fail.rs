//! How transfers end: failure codes, outcomes, statuses, and what `release` and
//! `cancel` did.

use core::fmt;

/// Where a [`FailCode`] comes from, so the number inside it can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailSource {
    /// The engine itself: see the `FailCode` constants (timeout, peer lost, …).
    Engine,
    /// A POSIX `errno` (file I/O, shared memory).
    Errno,
    /// A transport's own error number (libfabric's `FI_E*`, a CUDA `CUresult`, …):
    /// [`TransportId`] says whose.
    Transport(TransportId),
}

impl FailSource {
    /// The 3-bit form packed into a [`FailCode`].
    const fn bits(self) -> u32 {
        match self {
            FailSource::Engine => 0,
            FailSource::Errno => 1,
            FailSource::Transport(id) => id.0 as u32,
        }
    }

    const fn from_bits(bits: u32) -> FailSource {
        match bits {
            0 => FailSource::Engine,
            1 => FailSource::Errno,
            b => FailSource::Transport(TransportId(b as u8)),
        }
    }
}

/// Which transport a [`FailSource::Transport`] code comes from: a number from 2 to 7
/// (0 and 1 are the engine and `errno`), fixed per transport because it crosses the
/// C API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransportId(u8);

impl TransportId {
    /// libfabric (`FI_E*` numbers, positive).
    pub const FABRIC: TransportId = TransportId(2);
    /// The CUDA driver (`CUresult`).
    pub const CUDA: TransportId = TransportId(3);
    /// Any other transport's own code.
    pub const OTHER: TransportId = TransportId(4);

    /// The id's number (2 ..= 7).
    pub const fn to_raw(self) -> u8 {
        self.0
    }

    /// What the id's codes are, for messages.
    pub const fn name(self) -> &'static str {
        match self.0 {
            2 => "libfabric error",
            3 => "CUDA error",
            _ => "transport code",
        }
    }
}

/// Why a transfer failed: a source and a number, packed in 17 bits so that it fits
/// in the slot's state word next to the generation.
///
/// The number keeps 14 bits (0 ..= 16383): every `errno`, libfabric and CUDA error
/// code fits; a larger one is saturated to 16383 rather than wrapped into another code.
///
/// ```
/// use ringxfer::ring::{FailCode, FailSource};
///
/// let c = FailCode::new(FailSource::Errno, 5); // EIO
/// assert_eq!((c.source(), c.value()), (FailSource::Errno, 5));
/// assert_eq!(c.to_string(), "errno 5");
/// assert_eq!(FailCode::TIMEOUT.source(), FailSource::Engine);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FailCode(u32);

const VALUE_BITS: u32 = FailCode::BITS - 3;
const VALUE_MAX: u32 = (1 << VALUE_BITS) - 1;

impl FailCode {
    /// The width of the packed form ([`to_bits`](FailCode::to_bits)).
    pub const BITS: u32 = 17;

    /// The transfer's deadline passed before the transport completed it.
    pub const TIMEOUT: FailCode = FailCode::new(FailSource::Engine, 1);
    /// The peer went away (process died, connection lost) with the transfer in flight.
    pub const PEER_LOST: FailCode = FailCode::new(FailSource::Engine, 2);
    /// The engine shut down with the transfer in flight.
    pub const SHUTDOWN: FailCode = FailCode::new(FailSource::Engine, 3);
    /// The transport refused or lost the request without a more precise code.
    pub const TRANSPORT: FailCode = FailCode::new(FailSource::Engine, 4);
    /// The peer deregistered the region (or is deregistering it) before the bytes moved.
    pub const REGION_GONE: FailCode = FailCode::new(FailSource::Engine, 5);
    /// A read reached the end of the file before the requested length.
    pub const END_OF_FILE: FailCode = FailCode::new(FailSource::Engine, 6);
    /// Cancelled while its transport could not recall the operation
    /// ([`CancelResult::Abandoned`]): some of its bytes may have moved, and its
    /// notification is not sent.
    pub const CANCELLED: FailCode = FailCode::new(FailSource::Engine, 7);

    /// A code from `source` with number `value` (saturated to 16383).
    pub const fn new(source: FailSource, value: u32) -> FailCode {
        let value = if value > VALUE_MAX { VALUE_MAX } else { value };
        FailCode(source.bits() << VALUE_BITS | value)
    }

    /// Where the code comes from.
    pub const fn source(self) -> FailSource {
        FailSource::from_bits(self.0 >> VALUE_BITS)
    }

    /// The number within its source.
    pub const fn value(self) -> u32 {
        self.0 & VALUE_MAX
    }

    /// The packed 17-bit form (as stored in the state word and passed over FFI).
    pub const fn to_bits(self) -> u32 {
        self.0
    }

    /// Unpacks the 17-bit form; bits above 17 are ignored.
    pub const fn from_bits(bits: u32) -> FailCode {
        let bits = bits & ((1 << FailCode::BITS) - 1);
        FailCode::new(FailSource::from_bits(bits >> VALUE_BITS), bits & VALUE_MAX)
    }
}

impl fmt::Display for FailCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.source(), *self) {
            (_, FailCode::TIMEOUT) => f.write_str("deadline expired"),
            (_, FailCode::PEER_LOST) => f.write_str("peer lost"),
            (_, FailCode::SHUTDOWN) => f.write_str("engine shut down"),
            (_, FailCode::TRANSPORT) => f.write_str("transport error"),
            (_, FailCode::REGION_GONE) => f.write_str("the peer deregistered the region"),
            (_, FailCode::END_OF_FILE) => f.write_str("end of file before the requested length"),
            (_, FailCode::CANCELLED) => f.write_str("cancelled while in flight"),
            (FailSource::Engine, c) => write!(f, "engine code {}", c.value()),
            (FailSource::Errno, c) => write!(f, "errno {}", c.value()),
            (FailSource::Transport(id), c) => write!(f, "{} {}", id.name(), c.value()),
        }
    }
}

impl fmt::Debug for FailCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FailCode({self})")
    }
}

/// How a posted transfer ended: what a backend reports to
/// `SlotRing::complete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Every byte moved (and the notification, if any, was delivered).
    Done,
    /// The transfer failed; the code says why.
    Failed(FailCode),
    /// The transport proved the transfer stopped before completing.
    Cancelled,
}

/// Where a live transfer is in its life, as `SlotRing::status` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Acquired (prepared), not posted yet.
    Reserved,
    /// Posted and in flight.
    Posted,
    /// Completed successfully.
    Done,
    /// Completed with a failure.
    Failed(FailCode),
    /// Cancelled.
    Cancelled,
}

impl Status {
    /// Whether the transfer has ended (done, failed or cancelled).
    pub const fn is_terminal(self) -> bool {
        matches!(self, Status::Done | Status::Failed(_) | Status::Cancelled)
    }
}

/// What `SlotRing::release` did with the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// The transfer had ended (or was never posted): the slot is free again.
    Freed,
    /// The transfer is still in flight: the handle is dead now, and the transfer's
    /// completion will free the slot (no one waits for it).
    Detached,
}

/// What `SlotRing::cancel` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelResult {
    /// The transfer was never posted; it is now CANCELLED (release it).
    Cancelled,
    /// The transfer is in flight: ask the transport to stop it. The slot still ends
    /// through `SlotRing::complete`, with whatever outcome the transport reports.
    InFlight,
    /// The transfer had already ended; nothing changed.
    AlreadyComplete,
    /// The transfer was in flight on a transport that cannot recall its operations
    /// (the fabric's RMA): it reads `Failed(FailCode::CANCELLED)` from now on, its
    /// notification is not sent, and its slot stays the transport's until the
    /// operations let go of the memory (release detaches it meanwhile).
    Abandoned,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_saturate() {
        for source in [
            FailSource::Engine,
            FailSource::Errno,
            FailSource::Transport(TransportId::FABRIC),
            FailSource::Transport(TransportId::CUDA),
            FailSource::Transport(TransportId::OTHER),
        ] {
            for value in [0, 1, 999, VALUE_MAX] {
                let c = FailCode::new(source, value);
                assert_eq!((c.source(), c.value()), (source, value));
                assert_eq!(FailCode::from_bits(c.to_bits()), c);
            }
        }
        assert_eq!(
            FailCode::new(FailSource::Transport(TransportId::CUDA), u32::MAX).value(),
            VALUE_MAX
        );
        assert_eq!(
            FailCode::new(FailSource::Transport(TransportId::FABRIC), 5).to_string(),
            "libfabric error 5"
        );
    }
}
