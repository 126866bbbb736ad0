//! The `local` transport: engines in one process, reached through a process-wide
//! directory, moving bytes with `memcpy`; and engines in other processes on this host,
//! through shared memory ([`LocalLink`], in `link.rs`).
//!
//! An engine publishes its shared half (registry and notification inbox) in the
//! directory at construction and withdraws it when dropped. A peer whose metadata names
//! this process is looked up there at `load_peer` (control path). A transfer's remote
//! descriptors are resolved against the peer's own registry at post time, under its
//! read lock, so a region the peer deregistered (or an engine that was dropped) fails
//! the transfer instead of being written after it is gone.

// Unsafe code: `memcpy` between registered regions (the crate root denies it elsewhere).
#![allow(unsafe_code)]

mod link;
mod vm;

use std::sync::{Arc, Mutex, Weak};

pub(crate) use self::link::LocalLink;
use super::{Link, Sink, Started, Transport, Xfer};
use crate::error::{Error, Result};
use crate::mem::Registry;
use crate::shared::Shared;
use crate::types::Op;
use crate::wire::metadata::{BackendInfo, BackendKind};

static DIRECTORY: Mutex<Vec<(u64, Weak<Shared>)>> = Mutex::new(Vec::new());

fn directory() -> std::sync::MutexGuard<'static, Vec<(u64, Weak<Shared>)>> {
    DIRECTORY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes an engine reachable by engines of this process.
pub(crate) fn publish(engine_id: u64, shared: &Arc<Shared>) {
    let mut dir = directory();
    dir.retain(|(_, weak)| weak.strong_count() > 0);
    dir.push((engine_id, Arc::downgrade(shared)));
}

/// Removes an engine from the directory.
pub(crate) fn withdraw(engine_id: u64) {
    directory().retain(|(id, weak)| *id != engine_id && weak.strong_count() > 0);
}

/// The engine with this id in this process, if it is still alive.
pub(crate) fn lookup(engine_id: u64) -> Option<Arc<Shared>> {
    directory()
        .iter()
        .find(|(id, _)| *id == engine_id)
        .and_then(|(_, weak)| weak.upgrade())
}

/// Moves `len` bytes between a local and a remote address, in the direction of `op`.
///
/// # Safety
/// Both ranges lie inside memory that stays mapped and registered for the whole call
/// (the local one pinned by the transfer, the remote one under the peer registry's
/// read lock or inside a segment mapped here).
pub(crate) unsafe fn copy(op: Op, local: usize, remote: usize, len: usize) {
    let (src, dst) = match op {
        Op::Write => (local, remote),
        Op::Read => (remote, local),
    };
    // SAFETY: both ranges are valid (the caller's promise); `copy` (memmove) because
    // a process may register overlapping memory in two engines and move it onto itself.
    unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, len) };
}

/// What the `local` transport puts in an engine's metadata (`BackendInfo::conn`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LocalInfo {
    /// The engine's slot capacity (a receiver tracks that many sender slots).
    pub capacity: u32,
    /// The engine's `max_notif_bytes`.
    pub max_notif_bytes: u32,
    /// Its inbox geometry.
    pub lanes: u32,
    pub lane_capacity: u32,
    /// Entries of its registration table segment.
    pub max_registrations: u32,
    /// Where its segments live, and their name prefix.
    pub dir: std::path::PathBuf,
    pub prefix: String,
}

impl LocalInfo {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let dir = self.dir.to_string_lossy();
        let mut out = Vec::with_capacity(22 + dir.len() + self.prefix.len());
        for v in [
            self.capacity,
            self.max_notif_bytes,
            self.lanes,
            self.lane_capacity,
            self.max_registrations,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.prefix.len() as u16).to_le_bytes());
        out.extend_from_slice(self.prefix.as_bytes());
        out.extend_from_slice(dir.as_bytes());
        out
    }

    /// Parses `conn`; `None` if it is malformed.
    pub(crate) fn decode(conn: &[u8]) -> Option<LocalInfo> {
        let u32_at = |i: usize| conn.get(i..i + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let prefix_len = conn.get(20..22).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)?;
        let prefix = std::str::from_utf8(conn.get(22..22 + prefix_len)?).ok()?;
        let dir = std::str::from_utf8(conn.get(22 + prefix_len..)?).ok()?;
        Some(LocalInfo {
            capacity: u32_at(0)?,
            max_notif_bytes: u32_at(4)?,
            lanes: u32_at(8)?,
            lane_capacity: u32_at(12)?,
            max_registrations: u32_at(16)?,
            dir: dir.into(),
            prefix: prefix.to_owned(),
        })
    }

    /// The path of the engine's inbox segment.
    pub(crate) fn inbox_path(&self) -> std::path::PathBuf {
        self.dir.join(crate::notify::inbox_name(&self.prefix))
    }
}

/// The local transport of one engine: what it publishes, and its place in the
/// process-wide directory (left when the engine shuts down).
pub(crate) struct Local {
    info: LocalInfo,
    engine_id: u64,
}

impl Local {
    /// Describes the engine for peers and publishes it in this process's directory.
    pub(crate) fn new(shared: &Arc<Shared>, info: LocalInfo) -> Local {
        publish(shared.engine_id, shared);
        Local {
            info,
            engine_id: shared.engine_id,
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        withdraw(self.engine_id);
    }
}

impl Transport for Local {
    /// Moves the bytes now, then queues the notification at the peer.
    #[inline(always)]
    fn start(&self, x: Xfer<'_>, _sink: Sink<'_>) -> Result<Started> {
        let Some(Link::Local(link, _)) = x.link else {
            return Err(Error::UnknownPeer { peer: x.peer() });
        };
        let outbox = link.outbox();
        if x.notif().is_some() && !outbox.reserve() {
            return Err(if link.alive() {
                Error::InboxFull { peer: x.peer() }
            } else {
                Error::PeerLost { peer: x.peer() }
            });
        }
        let outcome = link.transfer(x.op(), x.runs(), x.remote());
        if let Some(notif) = x.notif() {
            if outcome == crate::ring::Outcome::Done {
                outbox.deliver(x.handle, notif);
            } else {
                outbox.unreserve();
            }
        }
        Ok(Started::Ended(outcome))
    }

    fn publish(&self, _registry: &Registry) -> Option<BackendInfo> {
        Some(BackendInfo {
            kind: BackendKind::Local,
            conn: self.info.encode(),
        })
    }

    /// Peers in this process no longer find the engine.
    fn quiesce(&self) {
        withdraw(self.engine_id);
    }
}
