//! The slot's state word, and the outcomes and statuses it encodes.
//!
//! One `AtomicU64` per slot: `generation << 20 | fail_code << 3 | state`. The top 44
//! bits are the generation, exactly as in a [`Handle`](super::Handle), so comparing a
//! handle with a slot is one shift. The 17-bit failure code lives in the word too, so
//! the transition to FAILED and the code it carries are one CAS: there is no window in
//! which a reader sees FAILED with another completer's code, and no second write that
//! could be lost.

use core::fmt;

use static_assertions::const_assert;

use super::handle::{GENERATION_BITS, INDEX_BITS};

pub(crate) const STATE_BITS: u32 = 3;
pub(crate) const CODE_BITS: u32 = INDEX_BITS - STATE_BITS;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;
const CODE_MASK: u64 = (1 << CODE_BITS) - 1;

const_assert!(STATE_BITS + CODE_BITS + GENERATION_BITS == u64::BITS);

// The eight states. FREE(g) is waiting in the free list to be acquired at g.
pub(crate) const FREE: u64 = 0;
pub(crate) const RESERVED: u64 = 1;
pub(crate) const POSTED: u64 = 2;
/// POSTED, and the owner has released its handle: the completion frees the slot.
pub(crate) const DETACHED: u64 = 3;
pub(crate) const DONE: u64 = 4;
pub(crate) const FAILED: u64 = 5;
pub(crate) const CANCELLED: u64 = 6;
/// Released at the last generation: out of service for good.
pub(crate) const RETIRED: u64 = 7;

#[inline]
pub(crate) const fn pack(generation: u64, code: u32, state: u64) -> u64 {
    generation << INDEX_BITS | (code as u64) << STATE_BITS | state
}

#[inline]
pub(crate) const fn generation(word: u64) -> u64 {
    word >> INDEX_BITS
}

#[inline]
pub(crate) const fn state(word: u64) -> u64 {
    word & STATE_MASK
}

#[inline]
pub(crate) const fn code(word: u64) -> u32 {
    ((word >> STATE_BITS) & CODE_MASK) as u32
}

/// The state's name, for error messages.
pub(crate) const fn state_name(state: u64) -> &'static str {
    match state {
        FREE => "free",
        RESERVED => "reserved (prepared, not posted)",
        POSTED => "posted (in flight)",
        DETACHED => "released while in flight",
        DONE => "done",
        FAILED => "failed",
        CANCELLED => "cancelled",
        _ => "retired",
    }
}

/// Where a [`FailCode`] comes from, so the number inside it can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FailSource {
    /// The engine itself: see the `FailCode` constants (timeout, peer lost, …).
    Engine = 0,
    /// A POSIX `errno` (file I/O, shared memory).
    Errno = 1,
    /// A libfabric error number (`FI_E*`, positive).
    Fabric = 2,
    /// A CUDA driver `CUresult`.
    Cuda = 3,
    /// A transport-specific code not covered above.
    Transport = 4,
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

const VALUE_BITS: u32 = CODE_BITS - 3;
const VALUE_MAX: u32 = (1 << VALUE_BITS) - 1;

impl FailCode {
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

    /// A code from `source` with number `value` (saturated to 16383).
    pub const fn new(source: FailSource, value: u32) -> FailCode {
        let value = if value > VALUE_MAX { VALUE_MAX } else { value };
        FailCode((source as u32) << VALUE_BITS | value)
    }

    /// Where the code comes from.
    pub const fn source(self) -> FailSource {
        match self.0 >> VALUE_BITS {
            0 => FailSource::Engine,
            1 => FailSource::Errno,
            2 => FailSource::Fabric,
            3 => FailSource::Cuda,
            _ => FailSource::Transport,
        }
    }

    /// The number within its source.
    pub const fn value(self) -> u32 {
        self.0 & VALUE_MAX
    }

    /// The packed 17-bit form (as stored in the state word and passed over FFI).
    pub const fn to_bits(self) -> u32 {
        self.0
    }

    /// Unpacks the 17-bit form; bits above 17 are ignored and an unknown source
    /// reads as [`FailSource::Transport`].
    pub const fn from_bits(bits: u32) -> FailCode {
        let bits = bits & CODE_MASK as u32;
        FailCode::new(
            match bits >> VALUE_BITS {
                0 => FailSource::Engine,
                1 => FailSource::Errno,
                2 => FailSource::Fabric,
                3 => FailSource::Cuda,
                _ => FailSource::Transport,
            },
            bits & VALUE_MAX,
        )
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
            (FailSource::Engine, c) => write!(f, "engine code {}", c.value()),
            (FailSource::Errno, c) => write!(f, "errno {}", c.value()),
            (FailSource::Fabric, c) => write!(f, "libfabric error {}", c.value()),
            (FailSource::Cuda, c) => write!(f, "CUDA error {}", c.value()),
            (FailSource::Transport, c) => write!(f, "transport code {}", c.value()),
        }
    }
}

impl fmt::Debug for FailCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FailCode({self})")
    }
}

/// How a posted transfer ended: what a backend reports to
/// [`SlotRing::complete`](super::SlotRing::complete).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Every byte moved (and the notification, if any, was delivered).
    Done,
    /// The transfer failed; the code says why.
    Failed(FailCode),
    /// The transport proved the transfer stopped before completing.
    Cancelled,
}

impl Outcome {
    pub(crate) const fn terminal_word(self, generation: u64) -> u64 {
        match self {
            Outcome::Done => pack(generation, 0, DONE),
            Outcome::Failed(code) => pack(generation, code.to_bits(), FAILED),
            Outcome::Cancelled => pack(generation, 0, CANCELLED),
        }
    }
}

/// Where a live transfer is in its life, as [`SlotRing::status`](super::SlotRing::status) sees it.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_saturate() {
        for source in [
            FailSource::Engine,
            FailSource::Errno,
            FailSource::Fabric,
            FailSource::Cuda,
            FailSource::Transport,
        ] {
            for value in [0, 1, 999, VALUE_MAX] {
                let c = FailCode::new(source, value);
                assert_eq!((c.source(), c.value()), (source, value));
                assert_eq!(FailCode::from_bits(c.to_bits()), c);
            }
        }
        assert_eq!(FailCode::new(FailSource::Cuda, u32::MAX).value(), VALUE_MAX);
    }

    #[test]
    fn word_fields_do_not_overlap() {
        let code = FailCode::new(FailSource::Transport, VALUE_MAX).to_bits();
        let w = pack(super::super::handle::MAX_GENERATION, code, FAILED);
        assert_eq!(generation(w), super::super::handle::MAX_GENERATION);
        assert_eq!(self::code(w), code);
        assert_eq!(state(w), FAILED);
    }
}
