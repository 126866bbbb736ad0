//! Which regions each transfer and prepared list holds: a row of plain words per
//! holder, filled without read-modify-writes and scanned by `deregister`.

use std::sync::atomic::{AtomicU32, Ordering};

/// Who holds regions: a ring slot (its transfer, from `prepare` until the slot is
/// freed) or a prepared list (until it is released).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Holder {
    /// The transfer in ring slot `index`.
    Slot(usize),
    /// The prepared list at index `index` of the engine's list table.
    List(usize),
}

/// What the descriptor pairs of a transfer between the engine's own regions hold
/// ([`Pinner::hold_pairs`]).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Pairs {
    /// A pair of two sides that are not host memory, other than GPU ↔ GPU.
    pub mixed: bool,
    /// GPU memory on either side of a pair.
    pub vram: bool,
    /// A file on either side of a pair.
    pub file: bool,
}

/// Per holder and side, a row of the table entries its descriptors name (a run of
/// descriptors into one region is one record) and how many there are.
///
/// A row is written only by its holder: filled under the table's read lock when its
/// descriptors are resolved (so deregistration, which scans the rows under the write
/// lock, sees it), or copied from a prepared list's row without that lock (see
/// [`Registry::copy_holds`]); emptied without the lock by a Release store of its count,
/// once the holder is done with the regions. Holding and letting go are plain stores:
/// per-entry pin counters cost two atomic read-modify-writes per descriptor per
/// transfer. The price is on the control path: `deregister` reads every row's count.
///
/// Layout: one block of whole cache lines per holder (slots first, then lists), laid
/// out `[count local, count own, local 0, own 0, local 1, own 1, …]`, so a transfer
/// whose sides each name a few regions touches one line.
pub(super) struct Holds {
    /// The blocks, from `start` (the first word on a cache-line boundary).
    words: Box<[AtomicU32]>,
    start: usize,
    /// Words per holder: a whole number of cache lines.
    block: usize,
    /// Records per row (`max_descs_per_xfer`).
    per_side: usize,
    slots: usize,
    lists: usize,
}

impl Holds {
    pub(super) fn new(slots: usize, lists: usize, per_side: usize) -> Holds {
        let block = (2 + 2 * per_side).next_multiple_of(16);
        let words: Box<[AtomicU32]> = (0..(slots + lists) * block + 15).map(|_| AtomicU32::new(0)).collect();
        let start = (64 - words.as_ptr() as usize % 64) % 64 / 4;
        Holds {
            words,
            start,
            block,
            per_side,
            slots,
            lists,
        }
    }

    /// `holder`'s block: `[count local, count own, local 0, own 0, …]`.
    #[inline]
    pub(super) fn cells(&self, holder: Holder) -> &[AtomicU32] {
        let h = match holder {
            Holder::Slot(i) => i,
            Holder::List(i) => self.slots + i,
        };
        let base = self.start + h * self.block;
        &self.words[base..base + self.block]
    }

    /// Starts recording `holder`'s `side` row (0 local, 1 own), empty until now.
    #[inline(always)]
    pub(super) fn record(&self, holder: Holder, side: usize) -> Record<'_> {
        let cells = self.cells(holder);
        debug_assert_eq!(
            cells[side].load(Ordering::Relaxed),
            0,
            "a row recorded into holds nothing"
        );
        Record {
            cells,
            side,
            n: 0,
            room: self.per_side,
            last: u32::MAX,
        }
    }

    /// Makes `to` hold what `from` holds (`to` held nothing).
    ///
    /// The only rows written without the table's lock, so a scan can overlap this
    /// copy: its entries are stored with Release (and read with Acquire in
    /// `holders_of`). A scan that read the slot's count before the slot's last holder
    /// let go, and then reads an entry this copy wrote, misses that holder's region —
    /// but that holder had let go, and through the Release/Acquire pair its accesses
    /// still happen before the scan. (Plain `mov`s on x86.)
    #[inline]
    pub(super) fn copy(&self, from: Holder, to: Holder) {
        let (from, to) = (self.cells(from), self.cells(to));
        for side in 0..2 {
            debug_assert_eq!(to[side].load(Ordering::Relaxed), 0, "a row copied into holds nothing");
            let n = from[side].load(Ordering::Relaxed) as usize;
            for i in 0..n {
                to[2 + 2 * i + side].store(from[2 + 2 * i + side].load(Ordering::Relaxed), Ordering::Release);
            }
            to[side].store(n as u32, Ordering::Release);
        }
    }

    /// Empties `holder`'s rows. Release: the holder's accesses to the regions happen
    /// before a deregistration that finds the rows empty (its loads are Acquire).
    #[inline]
    pub(super) fn clear(&self, holder: Holder) {
        let cells = self.cells(holder);
        cells[0].store(0, Ordering::Release);
        cells[1].store(0, Ordering::Release);
    }

    /// Every holder's block: lists first, then slots (see [`Registry::copy_holds`] for
    /// why a scan needs that order).
    pub(super) fn every(&self) -> impl Iterator<Item = &[AtomicU32]> {
        let lists = (0..self.lists).map(Holder::List);
        lists.chain((0..self.slots).map(Holder::Slot)).map(|h| self.cells(h))
    }

    /// Holders with `entry` in either row.
    pub(super) fn holders_of(&self, entry: u32) -> u32 {
        self.every()
            .filter(|cells| {
                (0..2).any(|side| {
                    let n = cells[side].load(Ordering::Acquire) as usize;
                    // Acquire: see `copy`.
                    (0..n).any(|i| cells[2 + 2 * i + side].load(Ordering::Acquire) == entry)
                })
            })
            .count() as u32
    }

    /// Records over all rows.
    pub(super) fn total(&self) -> u64 {
        self.every()
            .map(|cells| u64::from(cells[0].load(Ordering::Relaxed)) + u64::from(cells[1].load(Ordering::Relaxed)))
            .sum()
    }

    pub(super) fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.words)
    }
}

/// One row being filled as a holder's descriptors are resolved: a run of descriptors
/// into one region is one record. Nothing counts until [`finish`](Record::finish)
/// stores the count, so a batch refused half-way holds nothing.
pub(super) struct Record<'a> {
    cells: &'a [AtomicU32],
    side: usize,
    n: usize,
    room: usize,
    last: u32,
}

impl Record<'_> {
    /// Records `entry` unless it is the last one recorded. A row has room for
    /// `max_descs_per_xfer` records, which a transfer never exceeds; a prepared list
    /// (up to `max_list_descs`) that does gets its region found in the row, or the
    /// error (naming more separate runs of regions than a row holds).
    #[inline(always)]
    pub(super) fn note(&mut self, entry: u32) -> crate::error::Result<()> {
        if entry != self.last {
            self.last = entry;
            if self.n == self.room {
                return self.seen(entry);
            }
            self.cells[2 + 2 * self.n + self.side].store(entry, Ordering::Relaxed);
            self.n += 1;
        }
        Ok(())
    }

    /// For a full row: `Ok` if `entry` is recorded already.
    #[cold]
    fn seen(&self, entry: u32) -> crate::error::Result<()> {
        if (0..self.n).any(|i| self.cells[2 + 2 * i + self.side].load(Ordering::Relaxed) == entry) {
            return Ok(());
        }
        Err(crate::error::Error::InvalidDescriptor {
            reason: "a prepared list names more separate regions than max_descs_per_xfer (descriptors \
                     into one region side by side count once)",
        })
    }

    /// Stores the count. Rows filled here are written under the table's read lock, so
    /// a scan (write lock) sees all of them; Release anyway, like every count store
    /// (free on x86).
    #[inline(always)]
    pub(super) fn finish(self) {
        self.cells[self.side].store(self.n as u32, Ordering::Release);
    }
}
