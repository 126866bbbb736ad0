//! `Handle`: the name of one transfer, `generation << 20 | index`.

use core::fmt;

use static_assertions::const_assert_eq;

/// Bits of a handle that hold the slot index.
pub const INDEX_BITS: u32 = 20;
/// Bits of a handle that hold the slot's generation.
pub const GENERATION_BITS: u32 = 44;
/// The largest ring a handle can address: 2^20 slots.
pub const MAX_CAPACITY: usize = 1 << INDEX_BITS;
/// The last generation a slot may carry. A slot released at this generation is
/// retired for good rather than wrapped, so no (index, generation) pair is ever
/// issued twice.
pub const MAX_GENERATION: u64 = (1 << GENERATION_BITS) - 1;
/// The first generation of every slot; 0 is never used, so the all-zero handle is null.
pub const FIRST_GENERATION: u64 = 1;

const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;

// The split must cover the whole word, exactly.
const_assert_eq!(INDEX_BITS + GENERATION_BITS, u64::BITS);

/// The handle of one transfer: a slot index and the generation the slot had when the
/// transfer took it.
///
/// A handle is a plain `u64` (`generation << 20 | index`) so it crosses the C FFI and
/// the wire as is. Generations start at 1, so the value 0 is [`Handle::NULL`]. Every
/// ring operation compares the handle's generation with the slot's current one: a
/// handle whose transfer was released, or one forged with a generation the slot has
/// not reached, is rejected rather than matched to another transfer.
///
/// ```
/// use ringxfer::ring::Handle;
///
/// let h = Handle::new(7, 3).unwrap();
/// assert_eq!(h.index(), 7);
/// assert_eq!(h.generation(), 3);
/// assert_eq!(Handle::from_raw(h.to_raw()), h);
/// assert_eq!(h.to_string(), "7@3");
/// assert!(Handle::new(0, 0).is_none()); // generation 0 is never issued
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct Handle(u64);

impl Handle {
    /// The null handle (raw value 0): never issued, never valid.
    pub const NULL: Handle = Handle(0);

    /// Builds a handle from its parts, or `None` if the index does not fit in 20 bits
    /// or the generation is 0 or does not fit in 44 bits.
    #[inline]
    pub const fn new(index: u32, generation: u64) -> Option<Handle> {
        if (index as u64) > INDEX_MASK || generation < FIRST_GENERATION || generation > MAX_GENERATION {
            return None;
        }
        Some(Handle(generation << INDEX_BITS | index as u64))
    }

    /// Reinterprets a raw `u64` (from C or from the wire). Any value is accepted here;
    /// the ring validates it when it is used.
    #[inline]
    pub const fn from_raw(raw: u64) -> Handle {
        Handle(raw)
    }

    /// The raw `u64` form.
    #[inline]
    pub const fn to_raw(self) -> u64 {
        self.0
    }

    /// The slot index (low 20 bits).
    #[inline]
    pub const fn index(self) -> u32 {
        (self.0 & INDEX_MASK) as u32
    }

    /// The generation (high 44 bits).
    #[inline]
    pub const fn generation(self) -> u64 {
        self.0 >> INDEX_BITS
    }

    /// Whether this is the null handle.
    #[inline]
    pub const fn is_null(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Handle {
    /// `index@generation`, e.g. `7@3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.index(), self.generation())
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_null() {
            f.write_str("Handle(null)")
        } else {
            write!(f, "Handle(index {}, generation {})", self.index(), self.generation())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_at_the_edges() {
        for (index, generation) in [(0, 1), (INDEX_MASK as u32, MAX_GENERATION), (12345, 1 << 40)] {
            let h = Handle::new(index, generation).unwrap();
            assert_eq!((h.index(), h.generation()), (index, generation));
            assert!(!h.is_null());
        }
    }

    #[test]
    fn out_of_range_parts_are_refused() {
        assert!(Handle::new(1 << INDEX_BITS, 1).is_none());
        assert!(Handle::new(0, 0).is_none());
        assert!(Handle::new(0, MAX_GENERATION + 1).is_none());
    }

    #[test]
    fn debug_and_display_show_both_parts() {
        let h = Handle::new(5, 9).unwrap();
        assert_eq!(format!("{h:?}"), "Handle(index 5, generation 9)");
        assert_eq!(format!("{h}"), "5@9");
        assert_eq!(format!("{:?}", Handle::NULL), "Handle(null)");
    }
}
