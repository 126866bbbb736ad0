//! Regions and descriptors: what a transfer names on each side.

use core::fmt;

const INDEX_BITS: u32 = 20;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;

/// The name of one registered region: `generation << 20 | index`; 0 is never issued.
///
/// A peer's region ids arrive in its metadata and are used as they are in remote
/// descriptors.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct RegionId(u64);

impl RegionId {
    /// Reinterprets a raw id (from metadata, C, or the wire); validated when used.
    pub const fn from_raw(raw: u64) -> RegionId {
        RegionId(raw)
    }
    /// The raw `u64` form.
    pub const fn to_raw(self) -> u64 {
        self.0
    }
    pub(crate) const fn index(self) -> usize {
        (self.0 & INDEX_MASK) as usize
    }
    pub(crate) const fn generation(self) -> u64 {
        self.0 >> INDEX_BITS
    }
}

impl fmt::Debug for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RegionId({}@{})", self.index(), self.generation())
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "region {}@{}", self.index(), self.generation())
    }
}

/// A contiguous piece of a region: `len` bytes from `offset`. Used for both local and
/// remote descriptors (a remote descriptor names a region id from the peer's metadata).
///
/// `#[repr(C)]`: the C API's `rx_desc` has this exact layout, so descriptor arrays
/// from C are used in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Desc {
    /// The region.
    pub region: RegionId,
    /// Byte offset into the region.
    pub offset: u64,
    /// Length in bytes (non-zero).
    pub len: u64,
}

impl Desc {
    /// `len` bytes at `offset` of `region`.
    pub const fn new(region: RegionId, offset: u64, len: u64) -> Desc {
        Desc { region, offset, len }
    }
}
