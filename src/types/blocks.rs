//! Block sets: many equal blocks of one region named without a descriptor each.

use super::RegionId;

/// `count` blocks of `block_len` bytes in one region: block `k` starts at
/// `offset + id(k) × stride`, where `id(k)` is `ids[k]` for an indexed set and `k`
/// for a strided one. A KV cache's pages of one layer (K or V) at scattered block ids
/// are one indexed set; a block transfer pairs sets of equal `block_len` and count
/// (`Engine::prepare_blocks`), block `k` with block `k`.
///
/// Bounds are checked once per set (the highest id), not per block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocks<'a> {
    /// The region.
    pub region: RegionId,
    /// Where block id 0 starts in the region.
    pub offset: u64,
    /// Each block's length in bytes (non-zero).
    pub block_len: u64,
    /// Bytes from one block id to the next.
    pub stride: u64,
    /// The block ids, or `None` for ids `0..count`.
    pub ids: Option<&'a [u32]>,
    /// How many blocks (`ids.len()` for an indexed set).
    pub count: u32,
}

impl<'a> Blocks<'a> {
    /// Blocks `0..count`: `count` blocks of `block_len` bytes, `stride` bytes apart,
    /// from `offset`.
    pub const fn strided(region: RegionId, offset: u64, block_len: u64, stride: u64, count: u32) -> Blocks<'a> {
        Blocks {
            region,
            offset,
            block_len,
            stride,
            ids: None,
            count,
        }
    }

    /// The blocks `ids` names: block `ids[k]` at `offset + ids[k] × stride`. More
    /// than `u32::MAX` ids is refused at prepare.
    pub const fn indexed(region: RegionId, offset: u64, block_len: u64, stride: u64, ids: &'a [u32]) -> Blocks<'a> {
        Blocks {
            region,
            offset,
            block_len,
            stride,
            ids: Some(ids),
            count: if ids.len() > u32::MAX as usize {
                u32::MAX
            } else {
                ids.len() as u32
            },
        }
    }
}
