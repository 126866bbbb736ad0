//! The slot's state word, and the outcomes and statuses it encodes.
//!
//! One `AtomicU64` per slot: `generation << 20 | fail_code << 3 | state`. The top 44
//! bits are the generation, exactly as in a [`Handle`](super::Handle), so comparing a
//! handle with a slot is one shift. The 17-bit failure code lives in the word too, so
//! the transition to FAILED and the code it carries are one CAS: there is no window in
//! which a reader sees FAILED with another completer's code, and no second write that
//! could be lost.

use static_assertions::const_assert;

use crate::types::{FailCode, GENERATION_BITS, INDEX_BITS, Outcome, Status};

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

/// The word of a slot that ended with `outcome` at `generation`.
#[inline]
pub(crate) const fn terminal_word(outcome: Outcome, generation: u64) -> u64 {
    match outcome {
        Outcome::Done => pack(generation, 0, DONE),
        Outcome::Failed(code) => pack(generation, code.to_bits(), FAILED),
        Outcome::Cancelled => pack(generation, 0, CANCELLED),
    }
}

/// What a slot's owner reads in `word`: `None` for states no owner holds (free,
/// detached, retired). A POSTED word with a code was expired: its owner reads the
/// failure.
#[inline]
pub(crate) const fn status(word: u64) -> Option<Status> {
    Some(match state(word) {
        RESERVED => Status::Reserved,
        POSTED if code(word) != 0 => Status::Failed(FailCode::from_bits(code(word))),
        POSTED => Status::Posted,
        DONE => Status::Done,
        FAILED => Status::Failed(FailCode::from_bits(code(word))),
        CANCELLED => Status::Cancelled,
        _ => return None,
    })
}

const_assert!(CODE_BITS == FailCode::BITS);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{FailSource, MAX_GENERATION, TransportId};

    #[test]
    fn word_fields_do_not_overlap() {
        let code = FailCode::new(FailSource::Transport(TransportId::OTHER), 16383).to_bits();
        let w = pack(MAX_GENERATION, code, FAILED);
        assert_eq!(generation(w), MAX_GENERATION);
        assert_eq!(self::code(w), code);
        assert_eq!(state(w), FAILED);
    }
}
