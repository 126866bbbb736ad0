//! The engine's peer table: the peers loaded, each named by a [`PeerId`] that
//! carries its entry's index and generation, so an id kept past `unload_peer` names
//! nothing instead of the next peer loaded in its place.
//!
//! - A reload of the same engine (same engine id) replaces its entry: same id.
//! - An engine that restarted (same name, the previous process gone) takes the entry
//!   of its previous incarnation under the next generation: a new id (the new process
//!   hands out the same region ids as the dead one, so descriptors and prepared lists
//!   made for the dead one must not reach it), and the old link (its mappings, its
//!   inbox lane) is dropped.
//! - `unload_peer` empties an entry; a later load may reuse it under the next
//!   generation.
//!
//! At most `max_peers` entries (≤ 4096 = 2^INDEX_BITS), allocated at `Engine::new`.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::peer::Peer;
use crate::types::PeerId;

/// Bits of a `PeerId` that index the table (`Config::max_peers` ≤ 4096).
const INDEX_BITS: u32 = 12;
const INDEX_MASK: u32 = (1 << INDEX_BITS) - 1;
/// Generations wrap within the id's other 20 bits.
const GENERATIONS: u32 = 1 << (32 - INDEX_BITS);

struct Entry {
    generation: u32,
    name: String,
    peer: Option<Arc<Peer>>,
}

pub(crate) struct PeerTable {
    entries: Vec<Entry>,
    capacity: usize,
}

impl PeerTable {
    pub(crate) fn new(capacity: usize) -> PeerTable {
        debug_assert!(capacity <= 1 << INDEX_BITS);
        PeerTable {
            entries: Vec::with_capacity(capacity),
            capacity,
        }
    }

    fn id(&self, index: usize) -> PeerId {
        PeerId(self.entries[index].generation << INDEX_BITS | index as u32)
    }

    /// The peer `id` names, if it is loaded (and `id` is not stale).
    #[inline]
    pub(crate) fn get(&self, id: u32) -> Option<&Arc<Peer>> {
        let e = self.entries.get((id & INDEX_MASK) as usize)?;
        if e.generation != id >> INDEX_BITS {
            return None;
        }
        e.peer.as_ref()
    }

    /// The loaded peer that is the engine `engine_id`.
    pub(crate) fn by_engine(&self, engine_id: u64) -> Option<&Arc<Peer>> {
        self.entries
            .iter()
            .filter_map(|e| e.peer.as_ref())
            .find(|p| p.engine_id == engine_id)
    }

    /// Peers loaded.
    pub(crate) fn len(&self) -> usize {
        self.entries.iter().filter(|e| e.peer.is_some()).count()
    }

    /// Puts `peer` in the table; returns its id and the peer it replaced (to drop
    /// outside the table's lock: dropping it may unmap memory).
    pub(crate) fn insert(&mut self, peer: Arc<Peer>) -> Result<(PeerId, Option<Arc<Peer>>)> {
        let same_engine = |e: &Entry| e.peer.as_ref().is_some_and(|p| p.engine_id == peer.engine_id);
        if let Some(i) = self.entries.iter().position(same_engine) {
            let old = self.entries[i].peer.replace(peer);
            return Ok((self.id(i), old));
        }
        let restarted = |e: &Entry| e.name == peer.name && e.peer.as_ref().is_some_and(|p| p.link.gone());
        let i = match self.entries.iter().position(restarted) {
            Some(i) => {
                let old = self.entries[i].peer.take();
                self.next_generation(i);
                self.entries[i].peer = Some(peer);
                return Ok((self.id(i), old));
            }
            None => self.entries.iter().position(|e| e.peer.is_none()),
        };
        let i = match i {
            Some(i) => {
                self.next_generation(i);
                i
            }
            None if self.entries.len() < self.capacity => {
                self.entries.push(Entry {
                    generation: 0,
                    name: String::new(),
                    peer: None,
                });
                self.entries.len() - 1
            }
            None => {
                return Err(Error::PeerTableFull {
                    capacity: self.capacity,
                });
            }
        };
        self.entries[i].name.clone_from(&peer.name);
        self.entries[i].peer = Some(peer);
        Ok((self.id(i), None))
    }

    /// Moves entry `i` to its next generation: ids of the previous one are stale.
    fn next_generation(&mut self, i: usize) {
        let e = &mut self.entries[i];
        e.generation = (e.generation + 1) % GENERATIONS;
        if e.generation << INDEX_BITS | i as u32 == PeerId::SELF.0 {
            e.generation = 0;
        }
    }

    /// Takes the peer `id` out of the table.
    pub(crate) fn remove(&mut self, id: u32) -> Result<Arc<Peer>> {
        if self.get(id).is_none() {
            return Err(Error::UnknownPeer { peer: id });
        }
        self.entries[(id & INDEX_MASK) as usize]
            .peer
            .take()
            .ok_or(Error::UnknownPeer { peer: id })
    }
}
