//! Notifications: the bounded inbox of fixed-size records, and the per-sender table
//! that rejects duplicates and stale arrivals.
//!
//! The inbox is two lock-free FIFOs of record indices over one preallocated array of
//! records: `empty` (records free to fill) and `ready` (filled, in arrival order). A
//! sender pops an empty record (none: `InboxFull`, and nothing is sent), fills it, and
//! pushes it to `ready`; the receiver pops from `ready`, copies the payload out and
//! pushes the record back to `empty`. Popping an index from either FIFO gives the
//! popper sole use of that record until it pushes the index on, which is what makes
//! the record cells' `unsafe` access sound.
//!
//! Each record carries the sender's slot index and generation. The receiver keeps, per
//! sender, a fixed table indexed by slot index holding the newest generation seen; a
//! record whose generation is not newer is a duplicate or a late arrival and is dropped
//! and counted. No set grows, and a generation is never reused, so nothing wraps into a
//! false match.

use std::cell::UnsafeCell;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::ring::{FreeList, Handle};

struct Record {
    sender: u32,
    handle: Handle,
    len: usize,
    payload: Box<[u8]>,
}

/// A sender known to this engine (it loaded our metadata and introduced itself).
struct Sender {
    engine_id: u64,
    name: String,
    /// Newest generation seen per sender slot index.
    newest: Box<[AtomicU64]>,
}

/// Which engine sent a notification: an index into this engine's sender table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SenderId(pub u32);

/// A notification taken from the inbox by [`Engine::pop_notification`](crate::Engine::pop_notification).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notification {
    /// Who sent it ([`Engine::sender_name`](crate::Engine::sender_name) names it).
    pub sender: SenderId,
    /// The sender's transfer handle it travelled with.
    pub handle: Handle,
    /// Payload bytes written to the caller's buffer.
    pub len: usize,
}

pub(crate) struct Inbox {
    records: Box<[UnsafeCell<Record>]>,
    empty: FreeList,
    ready: FreeList,
    max_bytes: usize,
    senders: RwLock<Vec<Sender>>,
    max_senders: usize,
    stale: AtomicU64,
    delivered: AtomicU64,
}

// SAFETY: a record is touched only by the thread that popped its index from `empty`
// (to fill it) or from `ready` (to read it); the FIFOs' Release pushes and Acquire
// pops order those accesses. Everything else is atomics or behind the RwLock.
unsafe impl Sync for Inbox {}

impl Inbox {
    pub(crate) fn new(capacity: usize, max_bytes: usize, max_senders: usize) -> Inbox {
        let records = (0..capacity)
            .map(|_| {
                UnsafeCell::new(Record {
                    sender: 0,
                    handle: Handle::NULL,
                    len: 0,
                    payload: vec![0; max_bytes].into_boxed_slice(),
                })
            })
            .collect();
        Inbox {
            records,
            empty: FreeList::full(capacity),
            ready: FreeList::with_capacity(capacity),
            max_bytes,
            senders: RwLock::new(Vec::with_capacity(max_senders)),
            max_senders,
            stale: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        }
    }

    /// Registers a sender (control path): its slot table is allocated here, once.
    /// Loading the same engine twice returns the existing id.
    pub(crate) fn accept_sender(&self, engine_id: u64, name: &str, sender_capacity: usize) -> Result<SenderId> {
        let mut senders = self.senders.write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = senders.iter().position(|s| s.engine_id == engine_id) {
            return Ok(SenderId(i as u32));
        }
        if senders.len() >= self.max_senders {
            return Err(Error::PeerTableFull {
                capacity: self.max_senders,
            });
        }
        senders.push(Sender {
            engine_id,
            name: name.to_owned(),
            newest: (0..sender_capacity).map(|_| AtomicU64::new(0)).collect(),
        });
        Ok(SenderId(senders.len() as u32 - 1))
    }

    pub(crate) fn sender_name(&self, id: SenderId) -> Option<String> {
        let senders = self.senders.read().unwrap_or_else(|e| e.into_inner());
        senders.get(id.0 as usize).map(|s| s.name.clone())
    }

    /// Takes an empty record for a notification to come, or `None` if the inbox is full.
    pub(crate) fn reserve(&self) -> Option<u32> {
        self.empty.pop()
    }

    /// Gives back a record reserved but not used.
    pub(crate) fn unreserve(&self, record: u32) {
        while !self.empty.push(record) {
            std::hint::spin_loop();
        }
    }

    /// Fills a reserved record and makes it visible to the receiver.
    pub(crate) fn deliver(&self, record: u32, sender: SenderId, handle: Handle, payload: &[u8]) {
        let cell = &self.records[record as usize];
        // SAFETY: `record` was popped from `empty` by this thread (`reserve`) and is not
        // in either FIFO, so no other thread can reach it until the push below.
        let r = unsafe { &mut *cell.get() };
        let len = payload.len().min(self.max_bytes);
        r.payload[..len].copy_from_slice(&payload[..len]);
        r.sender = sender.0;
        r.handle = handle;
        r.len = len;
        while !self.ready.push(record) {
            std::hint::spin_loop();
        }
    }

    /// Pops the oldest notification that is not stale into `buf`.
    pub(crate) fn pop(&self, buf: &mut [u8]) -> Result<Option<Notification>> {
        if buf.len() < self.max_bytes {
            return Err(Error::BufferTooSmall {
                needed: self.max_bytes,
                got: buf.len(),
            });
        }
        while let Some(record) = self.ready.pop() {
            // SAFETY: `record` was popped from `ready` by this thread; the sender's push
            // (Release) happened before our pop (Acquire), and no one else holds it.
            let r = unsafe { &*self.records[record as usize].get() };
            let fresh = self.is_fresh(r.sender, r.handle);
            let note = Notification {
                sender: SenderId(r.sender),
                handle: r.handle,
                len: r.len,
            };
            if fresh {
                buf[..r.len].copy_from_slice(&r.payload[..r.len]);
            }
            self.unreserve(record);
            if fresh {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(note));
            }
            self.stale.fetch_add(1, Ordering::Relaxed);
        }
        Ok(None)
    }

    /// Records `handle` as the newest from its sender slot; false if it is not newer.
    fn is_fresh(&self, sender: u32, handle: Handle) -> bool {
        let senders = self.senders.read().unwrap_or_else(|e| e.into_inner());
        let Some(newest) = senders
            .get(sender as usize)
            .and_then(|s| s.newest.get(handle.index() as usize))
        else {
            return false;
        };
        newest.fetch_max(handle.generation(), Ordering::AcqRel) < handle.generation()
    }

    /// (queued, delivered, stale dropped).
    pub(crate) fn counts(&self) -> (usize, u64, u64) {
        (
            self.ready.len(),
            self.delivered.load(Ordering::Relaxed),
            self.stale.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbox() -> (Inbox, SenderId) {
        let inbox = Inbox::new(4, 16, 2);
        let sender = inbox.accept_sender(7, "peer", 8).unwrap();
        (inbox, sender)
    }

    #[test]
    fn duplicates_and_older_generations_are_dropped_and_counted() {
        let (inbox, s) = inbox();
        let send = |h: Handle, payload: &[u8]| {
            let r = inbox.reserve().unwrap();
            inbox.deliver(r, s, h, payload);
        };
        let g2 = Handle::new(3, 2).unwrap();
        send(g2, b"new");
        send(g2, b"dup"); // the same transfer again
        send(Handle::new(3, 1).unwrap(), b"old"); // an older generation of the slot, late
        send(Handle::new(4, 1).unwrap(), b"other slot");
        let mut buf = [0u8; 16];
        let n = inbox.pop(&mut buf).unwrap().unwrap();
        assert_eq!((&buf[..n.len], n.handle), (&b"new"[..], g2));
        let n = inbox.pop(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[..n.len], b"other slot");
        assert_eq!(inbox.pop(&mut buf).unwrap(), None);
        assert_eq!(inbox.counts(), (0, 2, 2));
        // Every record came back: the inbox holds 4 again.
        let all: Vec<u32> = (0..4).map(|_| inbox.reserve().unwrap()).collect();
        assert_eq!(all.len(), 4);
        assert!(inbox.reserve().is_none());
    }

    #[test]
    fn unknown_senders_and_out_of_range_slots_are_stale() {
        let (inbox, _) = inbox();
        let r = inbox.reserve().unwrap();
        inbox.deliver(r, SenderId(1), Handle::new(0, 1).unwrap(), b"?");
        let r = inbox.reserve().unwrap();
        inbox.deliver(r, SenderId(0), Handle::new(8, 1).unwrap(), b"?"); // sender has 8 slots
        assert_eq!(inbox.pop(&mut [0u8; 16]).unwrap(), None);
        assert_eq!(inbox.counts().2, 2);
    }

    #[test]
    fn the_sender_table_is_bounded_and_idempotent() {
        let (inbox, s) = inbox();
        assert_eq!(inbox.accept_sender(7, "peer", 8).unwrap(), s);
        inbox.accept_sender(8, "second", 8).unwrap();
        assert_eq!(
            inbox.accept_sender(9, "third", 8),
            Err(Error::PeerTableFull { capacity: 2 })
        );
    }
}
