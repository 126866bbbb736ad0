//! How the fabric reaches one peer: its address in our address vector, our tag at
//! the peer, and the remote key of each of its regions.

use super::{Fabric, FabricInfo};
use crate::backend::Sink;
use crate::error::{Error, Result};
use crate::shared::Shared;
use crate::types::Desc;
use crate::wire::metadata::{Metadata, RegionInfo};

/// A peer reached through the fabric transport.
pub(crate) struct FabricLink {
    /// Its endpoint in our address vector.
    pub(crate) addr: u64,
    /// Our tag at the peer (its WELCOME), carried in every write and message.
    pub(crate) tag: u16,
    /// The peer's regions (sorted by id) and the remote key of each (`None`: not
    /// registered with the peer's fabric).
    regions: Vec<(RegionInfo, Option<u64>)>,
    /// Remote addresses are virtual addresses (else offsets in the region).
    virt_addr: bool,
}

impl FabricLink {
    /// Reaches the engine `md` describes (whose fabric part is `conn`) through our
    /// endpoint (control path): inserts its address and introduces us with a HELLO.
    /// Returns the link and the peer's largest notification.
    pub(crate) fn connect(
        md: &Metadata,
        conn: &[u8],
        us: &Shared,
        fabric: &Fabric,
        sink: Sink<'_>,
    ) -> Result<(FabricLink, usize)> {
        let unreachable = |reason: String| Error::PeerUnreachable {
            name: md.engine_name.clone(),
            reason,
        };
        let info = FabricInfo::decode(conn).ok_or_else(|| unreachable("its fabric info is malformed".into()))?;
        if info.provider != fabric.provider() {
            return Err(unreachable(format!(
                "it uses the libfabric provider {:?}, this engine {:?} (set the same RINGXFER_FI_PROVIDER)",
                info.provider,
                fabric.provider()
            )));
        }
        if info.virt_addr != fabric.virt_addr() || info.max_notif_bytes > 1 << 16 {
            return Err(unreachable("its fabric info is out of range".into()));
        }
        if us.capacity > info.capacity as usize {
            return Err(unreachable(
                "this engine has more slots than the peer tracks per sender (give both the same capacity)".into(),
            ));
        }
        let mut regions: Vec<_> = md
            .regions
            .iter()
            .map(|r| (*r, info.keys.iter().find(|(id, _)| *id == r.id).map(|(_, key)| *key)))
            .collect();
        regions.sort_by_key(|(r, _)| r.id);
        let (addr, _) = fabric.address(&info.address, md.engine_id)?;
        let tag = fabric.hello(addr, md.engine_id, us.capacity, std::time::Duration::from_secs(5), sink)?;
        let link = FabricLink {
            addr,
            tag,
            regions,
            virt_addr: info.virt_addr,
        };
        Ok((link, info.max_notif_bytes as usize))
    }

    /// A remote descriptor's (address, key) on the fabric (its bounds were checked
    /// at prepare). `None` if the region is not registered with the peer's fabric.
    #[inline]
    pub(crate) fn target(&self, d: &Desc) -> Option<(u64, u64)> {
        let i = self
            .regions
            .binary_search_by_key(&d.region.to_raw(), |(r, _)| r.id)
            .ok()?;
        let (region, key) = &self.regions[i];
        let addr = if self.virt_addr {
            region.addr.checked_add(d.offset)?
        } else {
            d.offset
        };
        Some((addr, (*key)?))
    }
}
