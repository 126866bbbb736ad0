//! What a transport moves: a transfer's contiguous runs.
//!
//! A descriptor transfer's runs are its descriptor pairs. A block transfer
//! (`Engine::prepare_blocks`) stores, per pair of block sets, the two sides' spans
//! (resolved and held like descriptors), the block length, both strides and, for an
//! indexed side, where its block ids sit in the slot's id arrays; its runs are made
//! here, while the transport moves them: blocks contiguous on both sides with the
//! block before them are merged into one run. Nothing is allocated.

use crate::mem::Resolved;

/// One pair of block sets' shape (the spans are the transfer's descriptors).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Shape {
    pub(crate) block_len: u64,
    pub(crate) count: u32,
    pub(crate) local: Side,
    pub(crate) remote: Side,
}

/// One side of a pair of block sets: its stride, and where its ids start in the
/// slot's id array for that side (`None`: blocks `0..count`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Side {
    pub(crate) stride: u64,
    pub(crate) ids: Option<u32>,
}

impl Side {
    /// Block `k`'s offset in its span.
    #[inline(always)]
    fn offset(&self, ids: &[u32], k: u32) -> u64 {
        let id = match self.ids {
            Some(start) => ids[(start + k) as usize],
            None => k,
        };
        u64::from(id) * self.stride
    }
}

/// A block transfer's shapes and ids, as stored in its slot.
#[derive(Clone, Copy)]
pub(crate) struct Plan<'a> {
    pub(crate) shapes: &'a [Shape],
    pub(crate) local_ids: &'a [u32],
    pub(crate) remote_ids: &'a [u32],
}

/// One run: pair `pair`'s local side from `local.addr` for `local.len` bytes, and its
/// other side from `at` bytes into that pair's other span.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Run {
    pub(crate) pair: usize,
    pub(crate) local: Resolved,
    pub(crate) at: u64,
}

impl Run {
    /// The other side's piece of `span` (the pair's other descriptor, resolved or
    /// not).
    #[inline(always)]
    pub(crate) fn other<P: Piece>(&self, span: &P) -> P {
        span.piece(self.at, self.local.len)
    }
}

/// Something a run can take a piece of.
pub(crate) trait Piece: Copy {
    /// `len` bytes from `at` bytes in.
    fn piece(&self, at: u64, len: usize) -> Self;
}

impl Piece for Resolved {
    #[inline(always)]
    fn piece(&self, at: u64, len: usize) -> Resolved {
        Resolved {
            addr: self.addr + at as usize,
            len,
            ..*self
        }
    }
}

impl Piece for crate::types::Desc {
    #[inline(always)]
    fn piece(&self, at: u64, len: usize) -> crate::types::Desc {
        crate::types::Desc::new(self.region, self.offset + at, len as u64)
    }
}

/// The runs of a transfer, in order.
#[derive(Clone)]
pub(crate) struct Runs<'a> {
    local: &'a [Resolved],
    blocks: Option<Plan<'a>>,
    /// The pair, and the block within it (block transfers).
    pair: usize,
    block: u32,
}

impl<'a> Runs<'a> {
    #[inline(always)]
    pub(crate) fn new(local: &'a [Resolved], blocks: Option<Plan<'a>>) -> Runs<'a> {
        Runs {
            local,
            blocks,
            pair: 0,
            block: 0,
        }
    }
}

impl Runs<'_> {
    /// The local side of a one-descriptor transfer (the common case, told apart
    /// without walking): its one run, paired with the other side's one descriptor.
    #[inline(always)]
    pub(crate) fn single(&self) -> Option<&Resolved> {
        match (self.local, &self.blocks) {
            ([only], None) => Some(only),
            _ => None,
        }
    }
}

impl Iterator for Runs<'_> {
    type Item = Run;

    #[inline(always)]
    fn next(&mut self) -> Option<Run> {
        let pair = self.pair;
        let span = self.local.get(pair)?;
        let Some(b) = &self.blocks else {
            self.pair += 1;
            return Some(Run {
                pair,
                local: *span,
                at: 0,
            });
        };
        let s = &b.shapes[pair];
        let first = self.block;
        let (l, r) = (s.local.offset(b.local_ids, first), s.remote.offset(b.remote_ids, first));
        let mut len = s.block_len;
        let mut k = first + 1;
        while k < s.count && s.local.offset(b.local_ids, k) == l + len && s.remote.offset(b.remote_ids, k) == r + len {
            len += s.block_len;
            k += 1;
        }
        if k < s.count {
            self.block = k;
        } else {
            self.pair += 1;
            self.block = 0;
        }
        Some(Run {
            pair,
            local: span.piece(l, len as usize),
            at: r,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(addr: usize, len: usize) -> Resolved {
        Resolved {
            addr,
            len,
            ..Resolved::default()
        }
    }

    /// (local address, other offset, length) of every run.
    fn runs(local: &[Resolved], blocks: Option<Plan<'_>>) -> Vec<(usize, u64, usize)> {
        Runs::new(local, blocks)
            .map(|r| (r.local.addr, r.at, r.local.len))
            .collect()
    }

    #[test]
    fn descriptors_are_their_own_runs() {
        let local = [span(100, 8), span(500, 4)];
        assert_eq!(runs(&local, None), [(100, 0, 8), (500, 0, 4)]);
    }

    #[test]
    fn blocks_contiguous_on_both_sides_merge() {
        let ids_l = [3, 4, 5, 9, 1, 2];
        let ids_r = [0, 1, 2, 3, 7, 9];
        let shapes = [
            Shape {
                block_len: 16,
                count: 6,
                local: Side {
                    stride: 16,
                    ids: Some(0),
                },
                remote: Side {
                    stride: 16,
                    ids: Some(0),
                },
            },
            // Strided on both sides, no ids: one run when the stride is the length.
            Shape {
                block_len: 8,
                count: 4,
                local: Side { stride: 8, ids: None },
                remote: Side { stride: 8, ids: None },
            },
            // A gap on one side keeps the blocks apart.
            Shape {
                block_len: 8,
                count: 2,
                local: Side { stride: 8, ids: None },
                remote: Side { stride: 32, ids: None },
            },
        ];
        let b = Plan {
            shapes: &shapes,
            local_ids: &ids_l,
            remote_ids: &ids_r,
        };
        let local = [span(1000, 160), span(5000, 32), span(9000, 16)];
        assert_eq!(
            runs(&local, Some(b)),
            [
                // Ids 3,4,5 against 0,1,2: one run of three blocks.
                (1000 + 48, 0, 48),
                (1000 + 144, 48, 16),
                // 1 → 7, then 2 → 9: not contiguous on the remote side.
                (1000 + 16, 112, 16),
                (1000 + 32, 144, 16),
                (5000, 0, 32),
                (9000, 0, 8),
                (9008, 32, 8),
            ]
        );
    }
}
