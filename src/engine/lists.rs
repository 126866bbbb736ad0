//! Prepared descriptor lists: validated, and their regions held, once; posted many
//! times ([`Engine::prepare_list`], [`Engine::post_list`]).

use std::sync::atomic::Ordering;

use super::Engine;
use crate::backend::{Transfer, Via};
use crate::error::{Error, Result};
use crate::mem::{Holder, Resolved};
use crate::ring::Handle;
use crate::types::{Desc, Op, PeerId};

/// A prepared descriptor list: validated and its regions held once, posted many times.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListId(u64);

impl ListId {
    /// Reinterprets a raw id (from C); validated when used.
    pub const fn from_raw(raw: u64) -> ListId {
        ListId(raw)
    }

    /// The raw `u64` form (`generation << 20 | index`).
    pub const fn to_raw(self) -> u64 {
        self.0
    }

    /// Its index in the engine's list table.
    const fn index(self) -> usize {
        (self.0 & 0xfffff) as usize
    }
}

impl std::fmt::Debug for ListId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ListId({}@{})", self.index(), self.0 >> 20)
    }
}

pub(super) struct PreparedList {
    op: Op,
    peer: u32,
    via: Via,
    local: Box<[Resolved]>,
    remote: Box<[Desc]>,
    /// For a list to [`PeerId::SELF`]: the remote side, resolved (and held).
    own: Box<[Resolved]>,
}

pub(super) struct ListEntry {
    generation: u64,
    pub(super) list: Option<PreparedList>,
}

impl Default for ListEntry {
    /// An empty entry; its first list has generation 1 (an id is never 0).
    fn default() -> ListEntry {
        ListEntry {
            generation: 1,
            list: None,
        }
    }
}

impl Engine {
    /// Validates a descriptor list and holds its regions once (control path), for
    /// [`post_list`](Engine::post_list) to post many times without re-validating.
    /// Its regions stay held until [`release_list`](Engine::release_list).
    pub fn prepare_list(&self, op: Op, local: &[Desc], peer: PeerId, remote: &[Desc]) -> Result<ListId> {
        if local.is_empty() {
            return Err(Error::InvalidDescriptor {
                reason: "a prepared list needs descriptors",
            });
        }
        let (allowed, via) = self.validate(self.config.max_list_descs, local, peer, remote, None)?;
        let mut resolved = vec![Resolved::default(); local.len()].into_boxed_slice();
        let mut own = vec![Resolved::default(); if peer == PeerId::SELF { local.len() } else { 0 }].into_boxed_slice();
        // The list table's lock, then the registry's (as in `post_list`), held until
        // the list is in place: its index names its row of the registry's holds.
        let _poison = self.poison_on_unwind();
        let mut lists = self.unpoison(self.lists.write());
        let Some(index) = lists.iter().position(|e| e.list.is_none()) else {
            return Err(Error::ListTableFull {
                capacity: self.config.max_prepared_lists,
            });
        };
        let via = self.hold_sides(
            local,
            (allowed, via),
            remote,
            (&mut resolved, &mut own),
            Holder::List(index),
        )?;
        let entry = &mut lists[index];
        entry.list = Some(PreparedList {
            op,
            peer: peer.0,
            via,
            local: resolved,
            remote: remote.into(),
            own,
        });
        let id = ListId(entry.generation << 20 | index as u64);
        let alive = lists.iter().filter(|e| e.list.is_some()).count();
        self.core.census.lists.store(alive, Ordering::Relaxed);
        Ok(id)
    }

    /// Posts a prepared list as a new transfer (a fresh slot and generation each time)
    /// with an optional notification; the handle is released like any other. If the
    /// post fails the slot is given back and nothing moved. A list longer than
    /// `max_descs_per_xfer` is posted by parts with
    /// [`post_list_indices`](Engine::post_list_indices).
    pub fn post_list(&self, list: ListId, notif: Option<&[u8]>) -> Result<Handle> {
        self.post_from_list(list, None, notif)
    }

    /// Posts the entries `indices` of a prepared list (each a descriptor pair, by its
    /// position in the list; in any order, repeats allowed) as one new transfer with an
    /// optional notification, without validating them again: NIXL's `makeXferReq`
    /// with indices, for a list prepared once over a whole KV cache and posted a
    /// request's blocks at a time. At most `max_descs_per_xfer` indices; an index past
    /// the list's end is an error and nothing is posted. The transfer holds every
    /// region the list holds until it is released.
    pub fn post_list_indices(&self, list: ListId, indices: &[u32], notif: Option<&[u8]>) -> Result<Handle> {
        self.post_from_list(list, Some(indices), notif)
    }

    fn post_from_list(&self, list: ListId, pick: Option<&[u32]>, notif: Option<&[u8]>) -> Result<Handle> {
        let h = {
            let lists = self.unpoison(self.lists.read());
            let l = lookup_list(&lists, list)?;
            let n = pick.map_or(l.local.len(), <[u32]>::len);
            let max = self.config.max_descs_per_xfer;
            if n > max {
                return Err(Error::TooManyDescriptors { count: n, max });
            }
            if let Some(pick) = pick {
                if pick.is_empty() {
                    return Err(Error::InvalidDescriptor {
                        reason: "no list entries given",
                    });
                }
                if pick.iter().any(|&i| i as usize >= l.local.len()) {
                    return Err(Error::InvalidDescriptor {
                        reason: "a list index is past the end of the list",
                    });
                }
            }
            if let Some(n) = notif {
                self.validate(0, &[], PeerId(l.peer), &[], Some(n))?;
            }
            let registry = &self.core.shared.registry;
            self.core.ring.acquire_try(|t: &mut Transfer| {
                match pick {
                    None => {
                        t.local[..n].copy_from_slice(&l.local);
                        t.own[..l.own.len()].copy_from_slice(&l.own);
                        t.remote[..n].copy_from_slice(&l.remote);
                    }
                    Some(pick) => {
                        for (k, &i) in pick.iter().enumerate() {
                            let i = i as usize;
                            t.local[k] = l.local[i];
                            t.remote[k] = l.remote[i];
                            if !l.own.is_empty() {
                                t.own[k] = l.own[i];
                            }
                        }
                    }
                }
                // The list is alive until `lists` is dropped (see `copy_holds`).
                registry.copy_holds(Holder::List(list.index()), Holder::Slot(t.slot));
                t.op = l.op;
                t.via = l.via;
                t.peer = l.peer;
                t.count = n;
                t.stage_notif(notif);
                Ok::<(), Error>(())
            })?
        };
        if let Err(e) = self.post(h) {
            self.release(h)?;
            return Err(e);
        }
        Ok(h)
    }

    /// Drops a prepared list and lets go of its regions. Transfers posted from it keep
    /// holding theirs until they are released.
    pub fn release_list(&self, list: ListId) -> Result<()> {
        let _poison = self.poison_on_unwind();
        let mut lists = self.unpoison(self.lists.write());
        lookup_list(&lists, list)?;
        let entry = &mut lists[list.index()];
        if entry.list.take().is_some() {
            self.core.shared.registry.let_go(Holder::List(list.index()));
        }
        entry.generation += 1;
        let alive = lists.iter().filter(|e| e.list.is_some()).count();
        self.core.census.lists.store(alive, Ordering::Relaxed);
        Ok(())
    }
}

fn lookup_list(lists: &[ListEntry], id: ListId) -> Result<&PreparedList> {
    match lists.get(id.index()) {
        Some(ListEntry {
            generation,
            list: Some(l),
        }) if *generation == id.0 >> 20 => Ok(l),
        _ => Err(Error::UnknownList { list: id.0 }),
    }
}
