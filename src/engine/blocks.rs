//! Block transfers: many equal blocks named by a few block sets
//! ([`Engine::prepare_blocks`]).

use super::Engine;
use crate::backend::Transfer;
use crate::backend::runs::{Shape, Side};
use crate::error::{Error, Result};
use crate::mem::Holder;
use crate::ring::Handle;
use crate::types::{Blocks, Desc, Op, PeerId};

impl Engine {
    /// Prepares a transfer of blocks: block `k` of `local[i]` moves to or from block
    /// `k` of `remote[i]` (sets of a pair have equal block length and count). A KV
    /// cache's pages at scattered block ids, one pair of sets per layer and K or V,
    /// is one transfer, stored in the slot as a few set descriptors and the ids
    /// (`Config::max_blocks_per_xfer` a side over the indexed sets; pairs count
    /// against `max_descs_per_xfer`). Each set's bounds are checked once, from its
    /// highest id; its region is held as a descriptor's is. The transport moves
    /// blocks that are contiguous on both sides as one run.
    ///
    /// Posted, waited for and released like any transfer. Nothing is allocated.
    pub fn prepare_blocks(
        &self,
        op: Op,
        local: &[Blocks<'_>],
        peer: PeerId,
        remote: &[Blocks<'_>],
        notif: Option<&[u8]>,
    ) -> Result<Handle> {
        if local.len() != remote.len() {
            return Err(Error::LengthMismatch {
                what: "block set count",
                local: local.len() as u64,
                remote: remote.len() as u64,
            });
        }
        self.prepare_blocks_with(op, local.len(), |i| (local[i], remote[i]), peer, notif)
    }

    /// [`prepare_blocks`](Engine::prepare_blocks) for `n` pairs of block sets that
    /// `pair_at(i)` reads from the caller's own layout (the C API's `rx_blocks`
    /// arrays), without gathering them first.
    pub fn prepare_blocks_with<'a>(
        &self,
        op: Op,
        n: usize,
        pair_at: impl Fn(usize) -> (Blocks<'a>, Blocks<'a>),
        peer: PeerId,
        notif: Option<&[u8]>,
    ) -> Result<Handle> {
        let max = self.config.max_descs_per_xfer;
        if n > max {
            return Err(Error::TooManyDescriptors { count: n, max });
        }
        if n == 0 {
            return Err(Error::InvalidDescriptor {
                reason: "a block transfer needs block sets",
            });
        }
        self.core.ring.acquire_try(|t: &mut Transfer| {
            let (mut used_local, mut used_remote) = (0, 0);
            for i in 0..n {
                let (l, r) = &pair_at(i);
                pair(l, r)?;
                let (local_side, local_span) = stash(l, &mut t.local_ids, &mut used_local)?;
                let (remote_side, remote_span) = stash(r, &mut t.remote_ids, &mut used_remote)?;
                t.spans[i] = Desc::new(l.region, l.offset, local_span);
                t.remote[i] = Desc::new(r.region, r.offset, remote_span);
                t.shapes[i] = Shape {
                    block_len: l.block_len,
                    count: l.count,
                    local: local_side,
                    remote: remote_side,
                };
            }
            // For a transfer to the engine itself, `remote` is resolved in
            // `hold_sides` (and `route` refuses a notification).
            let routed = self.route(peer, &t.remote[..n], notif)?;
            let sides = (&mut t.local[..], &mut t.own[..]);
            t.via = self.hold_sides(&t.spans[..n], routed, &t.remote[..n], sides, Holder::Slot(t.slot))?;
            t.op = op;
            t.peer = peer.0;
            t.count = n;
            t.stage_notif(notif);
            t.blocks = true;
            Ok(())
        })
    }
}

/// The checks of one pair of sets.
fn pair(l: &Blocks<'_>, r: &Blocks<'_>) -> Result<()> {
    if l.block_len != r.block_len {
        return Err(Error::LengthMismatch {
            what: "block length of a pair of block sets",
            local: l.block_len,
            remote: r.block_len,
        });
    }
    if l.count != r.count {
        return Err(Error::LengthMismatch {
            what: "block count of a pair of block sets",
            local: l.count.into(),
            remote: r.count.into(),
        });
    }
    if l.block_len == 0 || l.count == 0 {
        return Err(Error::InvalidDescriptor {
            reason: "a block set needs blocks of a non-zero length",
        });
    }
    Ok(())
}

/// Copies an indexed set's ids into `ids` from `*used` on, and says the set's side of
/// the shape and its span: the bytes from its offset to its highest block's end.
#[inline(always)]
fn stash(b: &Blocks<'_>, ids: &mut [u32], used: &mut usize) -> Result<(Side, u64)> {
    let (at, top) = match b.ids {
        None => (None, b.count - 1),
        Some(given) => {
            if given.len() != b.count as usize {
                return Err(Error::InvalidDescriptor {
                    reason: "an indexed block set's count must be its number of ids",
                });
            }
            let (start, end) = (*used, *used + given.len());
            if end > ids.len() {
                return Err(Error::TooManyBlocks {
                    count: end,
                    max: ids.len(),
                });
            }
            let top = crate::sys::ids::copy_max(&mut ids[start..end], given);
            *used = end;
            (Some(start as u32), top)
        }
    };
    let span = u64::from(top)
        .checked_mul(b.stride)
        .and_then(|o| o.checked_add(b.block_len))
        .ok_or(Error::InvalidDescriptor {
            reason: "a block set's highest block lies beyond 2^64",
        })?;
    Ok((
        Side {
            stride: b.stride,
            ids: at,
        },
        span,
    ))
}
