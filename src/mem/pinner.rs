//! Resolving a transfer's descriptors under the registry's read lock and recording
//! the regions they name as held.

use std::sync::atomic::{AtomicU32, Ordering};

use super::holds::{Holder, Holds, Pairs};
use super::{Allowed, Resolved, Table, memory_only, resolve};
use crate::error::{Error, Result};
use crate::types::Desc;

/// The table's read lock, held while a transfer's descriptors are resolved and
/// recorded as held (see [`Registry::pinner`]).
pub(crate) struct Pinner<'a> {
    pub(super) table: crate::sys::sharded::ReadGuard<'a, Table>,
    pub(super) pins: &'a [AtomicU32],
    pub(super) holds: &'a Holds,
}

impl Pinner<'_> {
    /// Checks `desc` against its region, and the region against what the transfer
    /// allows.
    #[inline(always)]
    pub(super) fn check(&self, desc: &Desc, allowed: Allowed) -> Result<Resolved> {
        let mut resolved = resolve(&self.table, desc)?;
        resolved = match allowed {
            Allowed::Anything => resolved,
            Allowed::Keyed if resolved.vram => match self.table.entries[resolved.entry as usize].region.as_ref() {
                Some(r) if r.key.is_some() => resolved,
                r => {
                    return Err(Error::NotOnFabric {
                        region: desc.region.to_raw(),
                        reason: r
                            .and_then(|r| r.unkeyed.as_deref())
                            .unwrap_or("it is not registered with the transport")
                            .into(),
                    });
                }
            },
            Allowed::Device if resolved.vram => resolved,
            Allowed::Keyed | Allowed::Memory | Allowed::Device => memory_only(resolved)?,
        };
        Ok(resolved)
    }

    /// Checks `desc` as [`check`](Pinner::check) does and pins its region for a
    /// control-path copy: the pin is taken under the read lock, so deregistration
    /// (write lock) sees it. Dropped with [`Registry::unpin`].
    pub(super) fn pin(&self, desc: &Desc, allowed: Allowed) -> Result<Resolved> {
        let resolved = self.check(desc, allowed)?;
        self.pins[resolved.entry as usize].fetch_add(1, Ordering::Relaxed);
        Ok(resolved)
    }

    /// Resolves a transfer's local descriptors into `out` and records their regions as
    /// held by `holder` (its local row, empty until now). On error nothing is recorded.
    #[inline(always)]
    pub(crate) fn hold_all(
        &self,
        descs: &[Desc],
        out: &mut [Resolved],
        allowed: Allowed,
        holder: Holder,
    ) -> Result<()> {
        let mut row = self.holds.record(holder, 0);
        let out = &mut out[..descs.len()];
        for (i, d) in descs.iter().enumerate() {
            let r = self.check(d, allowed)?;
            row.note(r.entry)?;
            out[i] = r;
        }
        row.finish();
        Ok(())
    }

    /// For a transfer between the engine's own regions: resolves each pair of
    /// descriptors (anything allowed on either side) into `out`, records both sides'
    /// regions as held by `holder` (its rows, empty until now), and says what the pairs
    /// hold. On error nothing is recorded.
    #[inline(always)]
    pub(crate) fn hold_pairs(
        &self,
        local: &[Desc],
        own: &[Desc],
        (local_out, own_out): (&mut [Resolved], &mut [Resolved]),
        holder: Holder,
    ) -> Result<Pairs> {
        let (mut local_row, mut own_row) = (self.holds.record(holder, 0), self.holds.record(holder, 1));
        let n = local.len().min(own.len());
        let (local_out, own_out) = (&mut local_out[..n], &mut own_out[..n]);
        let (mut mixed, mut vram, mut file) = (false, false, false);
        for i in 0..n {
            let (l, o) = (
                self.check(&local[i], Allowed::Anything)?,
                self.check(&own[i], Allowed::Anything)?,
            );
            local_row.note(l.entry)?;
            own_row.note(o.entry)?;
            let (lf, of) = (l.fd.is_some(), o.fd.is_some());
            mixed |= (lf || l.vram) && (of || o.vram) && !(l.vram && o.vram);
            vram |= l.vram || o.vram;
            file |= lf || of;
            (local_out[i], own_out[i]) = (l, o);
        }
        local_row.finish();
        own_row.finish();
        Ok(Pairs { mixed, vram, file })
    }
}
