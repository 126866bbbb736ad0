//! Notifications: a bounded inbox in shared memory, one lane per sender, and the
//! per-sender table that rejects duplicates and stale arrivals.
//!
//! An engine's inbox is a shared-memory segment (so senders in other processes can
//! map it) laid out as a header, `max_peers` lane headers and `max_peers ×
//! inbox_capacity` fixed-size records:
//!
//! | part | size | contents |
//! |---|---|---|
//! | header | 64 B | magic, lanes, lane capacity, max payload bytes, record size |
//! | lane header × lanes | 512 B each | `owner` (sender engine id; 0 free), `tail` (sender), sender name, `head` (receiver, own cache line) |
//! | records × lanes × capacity | 24 B + payload, 8-aligned | owner, handle, length, payload |
//!
//! A sender claims a free lane once, when it loads the receiver (control path), and
//! is then the lane's only producer: a sender dying mid-write cannot wedge anyone
//! else's notifications, and a lane whose owner process is gone is reclaimed by the
//! next sender that needs one. Records are published by the sender's `tail` store
//! (Release) and consumed by the receiver's `head` store (Release); neither side ever
//! waits for the other. A full lane is backpressure for that sender (`InboxFull`),
//! never a silent drop.
//!
//! Each record carries the sender's engine id and transfer handle. The receiver keeps,
//! per lane, a fixed table indexed by the sender's slot index holding the newest
//! generation seen from that sender; a record whose generation is not newer is a
//! duplicate or a late arrival and is dropped and counted. No set grows, and a
//! generation is never reused, so nothing wraps into a false match.

// Unsafe code: records in a shared-memory inbox (the crate root denies it elsewhere).
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::ring::Handle;
use crate::sys::shm::Segment;

const MAGIC: u64 = u64::from_le_bytes(*b"RXINBOX1");
const HEADER_BYTES: usize = 64;
const LANE_BYTES: usize = 512;
const RECORD_HEADER_BYTES: usize = 24;
const MAX_NAME_BYTES: usize = 255;
/// The low 32 bits of `owner` while a sender (whose pid is in the high 32 bits) is
/// writing its name into a lane it just claimed. Engine ids never end so (their low
/// half is never all ones), so a claim by a process that died mid-claim is recognised
/// and reclaimed like any dead owner's.
const CLAIMING_MARK: u64 = 0xFFFF_FFFF;

fn claiming(owner: u64) -> bool {
    owner & CLAIMING_MARK == CLAIMING_MARK
}

/// Marks a lane claimed on behalf of a sender on another host (a fabric peer): its pid
/// says nothing about this host, so the lane is never reclaimed by a pid check; it is
/// handed back when its receiver drops the sender.
pub(crate) const REMOTE_OWNER: u64 = 1 << 63;

/// One lane's header, at a 64-byte-aligned offset of the segment.
#[repr(C, align(64))]
struct Lane {
    owner: AtomicU64,
    tail: AtomicU64,
    name_len: AtomicU64,
    name: [AtomicU8; MAX_NAME_BYTES + 1],
    _pad: [u8; 320 - 24 - (MAX_NAME_BYTES + 1)],
    /// Written by the receiver only; on its own cache line.
    head: AtomicU64,
    _tail_pad: [u8; LANE_BYTES - 320 - 8],
}

const _: () = assert!(size_of::<Lane>() == LANE_BYTES);
const _: () = assert!(std::mem::offset_of!(Lane, head) % 64 == 0);

/// The geometry of an inbox segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) lanes: usize,
    pub(crate) lane_capacity: usize,
    pub(crate) max_bytes: usize,
}

impl Geometry {
    fn record_bytes(self) -> usize {
        (RECORD_HEADER_BYTES + self.max_bytes).next_multiple_of(8)
    }

    pub(crate) fn segment_bytes(self) -> usize {
        self.checked_segment_bytes()
            .expect("inbox geometry validated before use")
    }

    /// The segment's size, or `None` if it overflows (a malformed peer blob).
    pub(crate) fn checked_segment_bytes(self) -> Option<usize> {
        let records = self
            .lanes
            .checked_mul(self.lane_capacity)?
            .checked_mul(self.record_bytes())?;
        self.lanes
            .checked_mul(LANE_BYTES)?
            .checked_add(HEADER_BYTES)?
            .checked_add(records)
    }
}

/// A mapped inbox segment, as its owner or a sender sees it.
pub(crate) struct InboxMap {
    segment: Segment,
    geometry: Geometry,
}

// SAFETY: the mapping is shared memory accessed through atomics (lane headers) and
// through raw byte copies of records, which the lane protocol gives to one side at a
// time (the sender before its `tail` store, the receiver after its `tail` load and
// before its `head` store).
unsafe impl Send for InboxMap {}
// SAFETY: as above.
unsafe impl Sync for InboxMap {}

impl InboxMap {
    /// Creates an inbox segment (receiver side).
    pub(crate) fn create(dir: &std::path::Path, name: &str, geometry: Geometry) -> Result<InboxMap> {
        let segment = Segment::create(dir, name, geometry.segment_bytes())?;
        let base = segment.as_ptr();
        let header = [
            MAGIC,
            geometry.lanes as u64,
            geometry.lane_capacity as u64,
            geometry.max_bytes as u64,
        ];
        // SAFETY: the segment is at least HEADER_BYTES long, page-aligned, and not yet
        // shared with anyone.
        unsafe { std::ptr::copy_nonoverlapping(header.as_ptr().cast::<u8>(), base, 32) };
        Ok(InboxMap { segment, geometry })
    }

    /// Maps a peer's inbox segment (sender side) and checks its header.
    pub(crate) fn open(path: &std::path::Path, geometry: Geometry) -> Result<InboxMap> {
        let segment = Segment::open(path, geometry.segment_bytes())?;
        let mut header = [0u64; 4];
        // SAFETY: the segment is at least segment_bytes() ≥ 32 bytes long; the header
        // was written once at creation, before the peer published its metadata.
        unsafe { std::ptr::copy_nonoverlapping(segment.as_ptr(), header.as_mut_ptr().cast::<u8>(), 32) };
        let expected = [
            MAGIC,
            geometry.lanes as u64,
            geometry.lane_capacity as u64,
            geometry.max_bytes as u64,
        ];
        if header != expected {
            return Err(Error::InvalidDescriptor {
                reason: "a peer's inbox segment does not match its metadata",
            });
        }
        Ok(InboxMap { segment, geometry })
    }

    fn lane(&self, lane: usize) -> &Lane {
        assert!(lane < self.geometry.lanes);
        // SAFETY: the segment holds `lanes` lane headers from HEADER_BYTES, each
        // LANE_BYTES long; the base is page-aligned and both sizes are multiples of 64,
        // so the pointer is aligned for `Lane`. All fields are atomics or bytes, valid
        // for any bit pattern (zeroed at creation).
        unsafe {
            &*self
                .segment
                .as_ptr()
                .add(HEADER_BYTES + lane * LANE_BYTES)
                .cast::<Lane>()
        }
    }

    fn record(&self, lane: usize, position: u64) -> *mut u8 {
        let g = self.geometry;
        let index = lane * g.lane_capacity + (position % g.lane_capacity as u64) as usize;
        debug_assert!(index < g.lanes * g.lane_capacity);
        // SAFETY: `index` is within the lanes × capacity records that follow the lane
        // headers, so the offset stays inside the segment.
        unsafe {
            self.segment
                .as_ptr()
                .add(HEADER_BYTES + g.lanes * LANE_BYTES + index * g.record_bytes())
        }
    }
}

/// Which lane of this engine's inbox a notification came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SenderId(pub u32);

/// A notification taken from the inbox by [`Engine::pop_notification`](crate::Engine::pop_notification).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notification {
    /// The lane it came through ([`Engine::sender_name`](crate::Engine::sender_name)
    /// names the lane's current sender).
    pub sender: SenderId,
    /// The sending engine's id (unique per engine instance).
    pub sender_engine: u64,
    /// The sender's transfer handle it travelled with.
    pub handle: Handle,
    /// Payload bytes written to the caller's buffer.
    pub len: usize,
}

/// The receiving side of an engine's inbox.
pub(crate) struct Inbox {
    map: Arc<InboxMap>,
    /// Sender slot indices tracked per lane: senders with more slots are refused.
    sender_capacity: usize,
    /// Per lane: the sender engine the `newest` row currently describes.
    known_owner: Box<[AtomicU64]>,
    /// lanes × sender_capacity newest generations.
    newest: Box<[AtomicU64]>,
    /// Pops are serialised (a short copy of one record, never across I/O).
    pop: Mutex<usize>,
    stale: AtomicU64,
    delivered: AtomicU64,
}

impl Inbox {
    pub(crate) fn new(map: InboxMap, sender_capacity: usize) -> Inbox {
        let lanes = map.geometry.lanes;
        Inbox {
            map: Arc::new(map),
            sender_capacity,
            known_owner: (0..lanes).map(|_| AtomicU64::new(0)).collect(),
            newest: (0..lanes * sender_capacity).map(|_| AtomicU64::new(0)).collect(),
            pop: Mutex::new(0),
            stale: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        }
    }

    pub(crate) fn map(&self) -> &Arc<InboxMap> {
        &self.map
    }

    /// The name the lane's current sender wrote when it claimed the lane.
    pub(crate) fn sender_name(&self, id: SenderId) -> Option<String> {
        if id.0 as usize >= self.map.geometry.lanes {
            return None;
        }
        let lane = self.map.lane(id.0 as usize);
        let owner = lane.owner.load(Ordering::Acquire);
        if owner == 0 || claiming(owner) {
            return None;
        }
        let len = (lane.name_len.load(Ordering::Relaxed) as usize).min(MAX_NAME_BYTES);
        let bytes: Vec<u8> = lane.name[..len].iter().map(|b| b.load(Ordering::Relaxed)).collect();
        // A new sender may have claimed the lane while we copied: then say nothing
        // rather than a mix of two names.
        (lane.owner.load(Ordering::Acquire) == owner).then(|| String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Pops the oldest fresh notification of the next lane that has one into `buf`
    /// (which must hold `max_notif_bytes`). Lanes are visited round-robin.
    pub(crate) fn pop(&self, buf: &mut [u8]) -> Result<Option<Notification>> {
        let g = self.map.geometry;
        if buf.len() < g.max_bytes {
            return Err(Error::BufferTooSmall {
                needed: g.max_bytes,
                got: buf.len(),
            });
        }
        let mut cursor = self.pop.lock().unwrap_or_else(|e| e.into_inner());
        for step in 0..g.lanes {
            let lane_index = (*cursor + step) % g.lanes;
            let lane = self.map.lane(lane_index);
            loop {
                let head = lane.head.load(Ordering::Relaxed);
                if head == lane.tail.load(Ordering::Acquire) {
                    break;
                }
                let record = self.map.record(lane_index, head);
                let mut fields = [0u64; 3];
                // SAFETY: the sender wrote this record before its `tail` store, which
                // our Acquire load saw; it will not touch it again until our `head`
                // store below. The record is RECORD_HEADER_BYTES + max_bytes long.
                unsafe { std::ptr::copy_nonoverlapping(record, fields.as_mut_ptr().cast::<u8>(), RECORD_HEADER_BYTES) };
                let [owner, raw_handle, len] = fields;
                let len = (len as usize).min(g.max_bytes);
                let handle = Handle::from_raw(raw_handle);
                let fresh = self.is_fresh(lane_index, owner, handle);
                if fresh {
                    // SAFETY: as above; `buf` holds at least max_bytes ≥ len bytes.
                    unsafe { std::ptr::copy_nonoverlapping(record.add(RECORD_HEADER_BYTES), buf.as_mut_ptr(), len) };
                }
                lane.head.store(head + 1, Ordering::Release);
                if fresh {
                    *cursor = (lane_index + 1) % g.lanes;
                    self.delivered.fetch_add(1, Ordering::Relaxed);
                    return Ok(Some(Notification {
                        sender: SenderId(lane_index as u32),
                        sender_engine: owner & !REMOTE_OWNER,
                        handle,
                        len,
                    }));
                }
                self.stale.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(None)
    }

    /// Records `handle` as the newest from its sender slot; false if it is not newer.
    fn is_fresh(&self, lane: usize, owner: u64, handle: Handle) -> bool {
        let index = handle.index() as usize;
        if owner == 0 || claiming(owner) || index >= self.sender_capacity || handle.is_null() {
            return false;
        }
        let row = &self.newest[lane * self.sender_capacity..][..self.sender_capacity];
        if self.known_owner[lane].load(Ordering::Relaxed) != owner {
            // A new sender on this lane: its generations start afresh. Only `pop`
            // (serialised) touches these tables, so plain stores suffice.
            row.iter().for_each(|g| g.store(0, Ordering::Relaxed));
            self.known_owner[lane].store(owner, Ordering::Relaxed);
        }
        let newest = &row[index];
        if newest.load(Ordering::Relaxed) >= handle.generation() {
            return false;
        }
        newest.store(handle.generation(), Ordering::Relaxed);
        true
    }

    /// (queued, delivered, stale dropped).
    pub(crate) fn counts(&self) -> (usize, u64, u64) {
        let queued = (0..self.map.geometry.lanes)
            .map(|i| {
                let lane = self.map.lane(i);
                lane.tail
                    .load(Ordering::Acquire)
                    .saturating_sub(lane.head.load(Ordering::Acquire)) as usize
            })
            .sum();
        (
            queued,
            self.delivered.load(Ordering::Relaxed),
            self.stale.load(Ordering::Relaxed),
        )
    }
}

/// The sending side: one claimed lane of a peer's inbox.
pub(crate) struct Outbox {
    map: Arc<InboxMap>,
    lane: usize,
    owner: u64,
    /// Records reserved (published or about to be) since the lane's start.
    reserved: AtomicU64,
    /// Serialises publication among this engine's threads (a short copy, never across I/O).
    publish: Mutex<()>,
}

impl Outbox {
    /// Claims a lane of `map` for the engine `owner` named `name` (control path). A
    /// lane whose owner process no longer exists is reclaimed.
    /// The index of the lane this outbox holds in the receiver's inbox.
    pub(crate) fn lane(&self) -> usize {
        self.lane
    }

    pub(crate) fn claim(map: Arc<InboxMap>, owner: u64, name: &str) -> Result<Outbox> {
        let lanes = map.geometry.lanes;
        let claim = owner >> 32 << 32 | CLAIMING_MARK;
        // First a free lane, then one held (or being claimed) by a process that is gone.
        let mut claimed = None;
        'search: for pass in 0..2 {
            for i in 0..lanes {
                let current = map.lane(i).owner.load(Ordering::Acquire);
                let takeable = match pass {
                    0 => current == 0,
                    _ => current != 0 && current & REMOTE_OWNER == 0 && !process_alive(current >> 32),
                };
                if takeable
                    && map
                        .lane(i)
                        .owner
                        .compare_exchange(current, claim, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    claimed = Some(i);
                    break 'search;
                }
            }
        }
        let Some(lane_index) = claimed else {
            return Err(Error::PeerTableFull { capacity: lanes });
        };
        let lane = map.lane(lane_index);
        let name = &name.as_bytes()[..name.len().min(MAX_NAME_BYTES)];
        for (cell, byte) in lane.name.iter().zip(name) {
            cell.store(*byte, Ordering::Relaxed);
        }
        lane.name_len.store(name.len() as u64, Ordering::Relaxed);
        let tail = lane.tail.load(Ordering::Acquire);
        // Publishes the name (Release) and opens the lane.
        lane.owner.store(owner, Ordering::Release);
        Ok(Outbox {
            map,
            lane: lane_index,
            owner,
            reserved: AtomicU64::new(tail),
            publish: Mutex::new(()),
        })
    }

    /// Reserves room for one notification; false if the receiver's lane is full.
    pub(crate) fn reserve(&self) -> bool {
        let capacity = self.map.geometry.lane_capacity as u64;
        let lane = self.map.lane(self.lane);
        let mut reserved = self.reserved.load(Ordering::Relaxed);
        loop {
            // `head` may have passed this (older) `reserved` reading meanwhile: saturate.
            if reserved.saturating_sub(lane.head.load(Ordering::Acquire)) >= capacity {
                return false;
            }
            match self
                .reserved
                .compare_exchange_weak(reserved, reserved + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(current) => reserved = current,
            }
        }
    }

    /// Gives back a reservation that will not be used.
    pub(crate) fn unreserve(&self) {
        self.reserved.fetch_sub(1, Ordering::AcqRel);
    }

    /// Publishes a notification into a reserved record.
    pub(crate) fn deliver(&self, handle: Handle, payload: &[u8]) {
        let len = payload.len().min(self.map.geometry.max_bytes);
        let lane = self.map.lane(self.lane);
        let _guard = self.publish.lock().unwrap_or_else(|e| e.into_inner());
        let tail = lane.tail.load(Ordering::Relaxed);
        let record = self.map.record(self.lane, tail);
        let fields = [self.owner, handle.to_raw(), len as u64];
        // SAFETY: a reservation guarantees `tail - head < capacity`, so the receiver is
        // done with this record (its `head` store, which our reserve loaded with
        // Acquire, came after its last read); we are this lane's only writer (the
        // publish lock, and one claim per lane); the record has room for the header
        // and max_bytes ≥ len payload bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(fields.as_ptr().cast::<u8>(), record, RECORD_HEADER_BYTES);
            std::ptr::copy_nonoverlapping(payload.as_ptr(), record.add(RECORD_HEADER_BYTES), len);
        }
        lane.tail.store(tail + 1, Ordering::Release);
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // Hand the lane back; records already published stay readable.
        let _ = self
            .map
            .lane(self.lane)
            .owner
            .compare_exchange(self.owner, 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// Whether a process with this pid exists (a lane's owner id carries it).
fn process_alive(pid: u64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing; it only checks the pid.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The inbox segment's name for an engine's segment prefix.
pub(crate) fn inbox_name(prefix: &str) -> String {
    format!("{prefix}-inbox")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbox(lanes: usize, lane_capacity: usize) -> (Inbox, tempdir::Dir) {
        let dir = tempdir::Dir::new();
        let g = Geometry {
            lanes,
            lane_capacity,
            max_bytes: 16,
        };
        let map = InboxMap::create(&dir.0, "inbox", g).unwrap();
        (Inbox::new(map, 8), dir)
    }

    /// A throwaway directory for one test's segments.
    mod tempdir {
        pub(crate) struct Dir(pub(crate) std::path::PathBuf);
        impl Dir {
            pub(crate) fn new() -> Dir {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = std::env::temp_dir().join(format!("ringxfer-notify-test-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn send(out: &Outbox, h: Handle, payload: &[u8]) {
        assert!(out.reserve());
        out.deliver(h, payload);
    }

    #[test]
    fn duplicates_and_older_generations_are_dropped_and_counted() {
        let (inbox, _dir) = inbox(2, 4);
        let out = Outbox::claim(Arc::clone(inbox.map()), 7, "peer").unwrap();
        let g2 = Handle::new(3, 2).unwrap();
        send(&out, g2, b"new");
        send(&out, g2, b"dup");
        send(&out, Handle::new(3, 1).unwrap(), b"old");
        send(&out, Handle::new(4, 1).unwrap(), b"other slot");
        assert!(!out.reserve(), "a lane of 4 is full");
        let mut buf = [0u8; 16];
        let n = inbox.pop(&mut buf).unwrap().unwrap();
        assert_eq!((&buf[..n.len], n.handle, n.sender_engine), (&b"new"[..], g2, 7));
        assert_eq!(inbox.sender_name(n.sender).as_deref(), Some("peer"));
        let n = inbox.pop(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[..n.len], b"other slot");
        assert_eq!(inbox.pop(&mut buf).unwrap(), None);
        assert_eq!(inbox.counts(), (0, 2, 2));
        assert!(out.reserve(), "popping made room");
    }

    #[test]
    fn out_of_range_slots_are_stale_and_lanes_are_bounded() {
        let (inbox, _dir) = inbox(2, 4);
        let a = Outbox::claim(Arc::clone(inbox.map()), 7, "a").unwrap();
        let b = Outbox::claim(Arc::clone(inbox.map()), 8, "b").unwrap();
        assert_ne!(a.lane(), b.lane());
        assert!(matches!(
            Outbox::claim(Arc::clone(inbox.map()), 9, "c"),
            Err(Error::PeerTableFull { capacity: 2 })
        ));
        send(&a, Handle::new(8, 1).unwrap(), b"?"); // sender capacity is 8
        assert_eq!(inbox.pop(&mut [0u8; 16]).unwrap(), None);
        assert_eq!(inbox.counts().2, 1);
        drop(b);
        let c = Outbox::claim(Arc::clone(inbox.map()), 9, "c").unwrap();
        send(&c, Handle::new(0, 1).unwrap(), b"c1");
        let mut buf = [0u8; 16];
        let n = inbox.pop(&mut buf).unwrap().unwrap();
        assert_eq!(
            (n.sender_engine, inbox.sender_name(n.sender).as_deref()),
            (9, Some("c"))
        );
    }

    #[test]
    fn a_lane_of_a_dead_process_is_reclaimed() {
        let (inbox, _dir) = inbox(1, 4);
        // An owner id whose pid (high 32 bits) cannot exist.
        let ghost = (i32::MAX as u64) << 32 | 1;
        let g = Outbox::claim(Arc::clone(inbox.map()), ghost, "ghost").unwrap();
        std::mem::forget(g); // the process "died" holding the lane
        let live = Outbox::claim(Arc::clone(inbox.map()), u64::from(std::process::id()) << 32 | 5, "live").unwrap();
        send(&live, Handle::new(0, 1).unwrap(), b"hi");
        assert_eq!(inbox.pop(&mut [0u8; 16]).unwrap().unwrap().len, 2);
    }

    #[test]
    fn a_remote_senders_lane_is_never_reclaimed_by_pid() {
        let (inbox, _dir) = inbox(1, 4);
        // A fabric sender on another host: its pid does not exist here.
        let remote = REMOTE_OWNER | (i32::MAX as u64) << 32 | 1;
        let held = Outbox::claim(Arc::clone(inbox.map()), remote, "remote").unwrap();
        let other = Outbox::claim(
            Arc::clone(inbox.map()),
            u64::from(std::process::id()) << 32 | 5,
            "local",
        );
        assert!(
            matches!(other, Err(Error::PeerTableFull { .. })),
            "the lane stays the remote sender's"
        );
        send(&held, Handle::new(0, 1).unwrap(), b"hi");
        let n = inbox.pop(&mut [0u8; 16]).unwrap().unwrap();
        assert_eq!(n.sender_engine, remote & !REMOTE_OWNER, "reported without the mark");
        drop(held);
        assert!(
            Outbox::claim(
                Arc::clone(inbox.map()),
                u64::from(std::process::id()) << 32 | 5,
                "local"
            )
            .is_ok()
        );
    }
}
