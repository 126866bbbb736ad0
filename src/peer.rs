//! A loaded peer: its name, its regions as its metadata described them, and the
//! [`Link`] of the transport that reaches it.

use crate::backend::Link;
use crate::error::{Error, Result};
use crate::types::Desc;
use crate::wire::metadata::{MemKind, RegionInfo};

pub(crate) struct Peer {
    pub(crate) name: String,
    pub(crate) engine_id: u64,
    /// The peer's regions as its metadata described them, sorted by id.
    regions: Vec<RegionInfo>,
    pub(crate) max_notif_bytes: usize,
    pub(crate) link: Link,
    /// Declared lost from outside ([`Engine::lose_peer`](crate::Engine::lose_peer)):
    /// new transfers to it are refused with `PeerLost`.
    pub(crate) lost: std::sync::atomic::AtomicBool,
}

impl Peer {
    /// A peer described by its metadata (`regions` in any order), reached by `link`.
    pub(crate) fn new(
        name: String,
        engine_id: u64,
        mut regions: Vec<RegionInfo>,
        max_notif_bytes: usize,
        link: Link,
    ) -> Peer {
        regions.sort_by_key(|r| r.id);
        Peer {
            name,
            engine_id,
            regions,
            max_notif_bytes,
            link,
            lost: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Checks a remote descriptor against the peer's metadata; says whether it names
    /// the peer's GPU memory mapped here (which only the cuda transport moves).
    #[inline]
    pub(crate) fn check(&self, d: &Desc) -> Result<bool> {
        if !self.link.checks_regions() {
            // The sim moves no bytes: any remote descriptor will do.
            return Ok(false);
        }
        let Ok(i) = self.regions.binary_search_by_key(&d.region.to_raw(), |r| r.id) else {
            return match self.link.device_region(d.region.to_raw()) {
                Some(len) => in_bounds(d, len).map(|()| true),
                None => Err(Error::UnknownRegion {
                    region: d.region.to_raw(),
                }),
            };
        };
        if self.regions[i].kind == MemKind::Vram && !self.link.reaches_device_memory() {
            // Published only when registered with the peer's keying transport: no
            // memcpy or process_vm_writev reaches GPU memory.
            return Err(Error::InvalidDescriptor {
                reason: "a peer's GPU memory is reached only over the fabric",
            });
        }
        in_bounds(d, self.regions[i].len).map(|()| false)
    }
}

/// Whether `d` lies inside a region of `len` bytes.
#[inline]
fn in_bounds(d: &Desc, len: u64) -> Result<()> {
    if d.len == 0 || d.offset.checked_add(d.len).is_none_or(|end| end > len) {
        return Err(Error::OutOfBounds {
            region: d.region.to_raw(),
            offset: d.offset,
            len: d.len,
            region_len: len,
        });
    }
    Ok(())
}
