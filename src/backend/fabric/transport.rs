//! The fabric behind the transport interface.

use super::{Fabric, FabricInfo, FabricStats};
use crate::backend::{Expire, Link, Recall, Sink, Started, Transport, TransportStats, Xfer};
use crate::error::{Error, Result};
use crate::mem::Registry;
use crate::wire::metadata::{BackendInfo, BackendKind};

/// The kind of the fabric's part of an engine's metadata.
pub(crate) const KIND: BackendKind = BackendKind::Fabric;

impl Transport for Fabric {
    /// Posts the transfer's operations; the poster's reference is handed over with
    /// `launch`.
    #[inline]
    fn start(&self, x: Xfer<'_>, sink: Sink<'_>) -> Result<Started> {
        let Some(Link::Fabric(link)) = x.link else {
            return Err(Error::UnknownPeer { peer: x.peer() });
        };
        if self.is_lost(link.addr) {
            return Err(Error::PeerLost { peer: x.peer() });
        }
        if let Some(d) = x.remote().iter().find(|d| link.target(d).is_none()) {
            return Err(Error::UnknownRegion {
                region: d.region.to_raw(),
            });
        }
        let target = |i: usize| link.target(&x.remote()[i]).unwrap_or_default();
        self.post(
            x.handle,
            x.timeout,
            x.op(),
            x.runs(),
            target,
            link.addr,
            link.tag,
            x.notif(),
            sink,
        )?;
        Ok(Started::Handed(0))
    }

    #[inline]
    fn launch(&self, handle: crate::ring::Handle, _word: u32, sink: Sink<'_>) {
        Fabric::launch(self, handle, sink);
    }

    /// Abandons a transfer it holds (RMA operations cannot be recalled).
    fn cancel(&self, handle: crate::ring::Handle) -> Recall {
        Fabric::abandon(self, handle)
    }

    #[inline]
    fn progress(&self, sink: Sink<'_>, expire: Expire<'_>) -> usize {
        Fabric::progress(self, sink, Some(expire))
    }

    fn publish(&self, registry: &Registry) -> Option<BackendInfo> {
        let info: FabricInfo = self.info(registry.keys());
        Some(BackendInfo {
            kind: KIND,
            conn: info.encode(),
        })
    }

    fn bytes(&self) -> usize {
        Fabric::bytes(self)
    }

    fn stats(&self, stats: &mut TransportStats) {
        let s: FabricStats = Fabric::stats(self);
        stats.fabric = s;
        stats.held += self.held();
    }
}
