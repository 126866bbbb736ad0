//! Progress and the receiver side: reading the completion queue and routing each
//! entry (our own operations, received control messages, remote writes), expiring
//! overdue transfers, the per-sender tables that match writes to their NOTIFY, and
//! the duplicate and stale arrivals they drop.

use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::send::{TxSlot, fail, fail_code};
use super::wire::{self, ABORT, HEADER, HELLO, Header, NOTIFY, WELCOME};
use super::{Fabric, Sink, api, sys};
use crate::error::{Error, Result};
use crate::notify::{Outbox, REMOTE_OWNER};
use crate::ring::{FailCode, Handle};

/// Completions read per `fi_cq_read` call, and the most one progress call handles.
const CQ_BATCH: usize = 16;
const CQ_BUDGET: usize = 1024;

/// How long a sender must have been silent before a full table gives its place to a
/// new one.
const IDLE_SENDER: Duration = Duration::from_secs(60);

/// No receive buffer.
const NONE: u32 = u32::MAX;

/// A receiver's table entry for one sender slot.
#[derive(Clone, Copy)]
struct RxEntry {
    /// The generation (as carried on the wire) the entry describes.
    generation: u64,
    seen: u64,
    /// Writes the NOTIFY announced; `u64::MAX` before it arrived.
    want: u64,
    /// The receive buffer holding the NOTIFY until the writes are all seen.
    held: u32,
    /// Whether this generation's NOTIFY (or ABORT) arrived: a second is a duplicate.
    notified: bool,
}

impl RxEntry {
    const EMPTY: RxEntry = RxEntry {
        generation: 0,
        seen: 0,
        want: u64::MAX,
        held: NONE,
        notified: false,
    };
}

/// A sender that introduced itself with a HELLO. Its index in `RxState::peers` is
/// its *tag*, which the WELCOME reply tells it and which it puts in the immediate
/// data of its writes and the header of its messages.
struct RxPeer {
    engine_id: u64,
    addr: u64,
    outbox: Outbox,
    table: Box<[RxEntry]>,
    /// The WELCOME to this sender is in flight (its buffer is busy).
    welcoming: bool,
    /// A WELCOME is owed (the last attempt met EAGAIN or a busy buffer).
    welcome_owed: bool,
    /// When it last sent anything (its place may go to a new sender after a long
    /// silence when the table is full).
    last_active: Instant,
}

/// Receiver state, touched only by whoever holds the progress lock.
pub(super) struct RxState {
    /// `max_peers` places, indexed by tag.
    peers: Vec<Option<RxPeer>>,
    /// (sender, receive buffer) of notifications whose writes are all seen but whose
    /// inbox lane was full; retried on every progress.
    blocked: Vec<(u32, u32)>,
    /// Receive buffers the provider refused to take back (EAGAIN); retried.
    pub(super) unposted: Vec<u32>,
    /// Some sender place owes a WELCOME.
    welcomes_owed: bool,
}

impl RxState {
    /// `max_peers` empty sender places, room for `rx_count` receive buffers.
    pub(super) fn new(max_peers: usize, rx_count: usize) -> RxState {
        RxState {
            peers: (0..max_peers).map(|_| None).collect(),
            blocked: Vec::with_capacity(rx_count),
            unposted: Vec::with_capacity(rx_count),
            welcomes_owed: false,
        }
    }

    /// Senders it keeps a table for.
    pub(super) fn senders(&self) -> usize {
        self.peers.iter().filter(|p| p.is_some()).count()
    }
}

impl Fabric {
    // ----- hot path: progress -----

    /// Reads completions and reports finished transfers to `sink`; with `expire`,
    /// also fails overdue transfers through it (see `FabricConfig::deadline`).
    /// Returns how many completion entries it handled. Another thread already
    /// progressing makes this a no-op.
    pub(crate) fn progress(&self, sink: Sink<'_>, expire: Option<&dyn Fn(Handle, FailCode) -> bool>) -> usize {
        let Ok(mut rx) = self.rx.try_lock() else {
            return 0;
        };
        if let Some(expire) = expire {
            self.expire_overdue(expire);
        }
        self.retry_deferred(sink);
        self.retry_blocked(&mut rx);
        self.retry_welcomes(&mut rx);
        let mut handled = 0;
        // SAFETY: plain-old-data structs; all-zero is a valid value.
        let mut entries: [sys::fi_cq_data_entry; CQ_BATCH] = unsafe { std::mem::zeroed() };
        let mut sources = [api::FI_ADDR_NOTAVAIL; CQ_BATCH];
        while handled < CQ_BUDGET {
            // SAFETY: live CQ; the arrays hold CQ_BATCH entries of the CQ's format.
            let n = unsafe { api::cq_readfrom(self.ep.cq, entries.as_mut_ptr(), CQ_BATCH, sources.as_mut_ptr()) };
            if n > 0 {
                for i in 0..n as usize {
                    self.on_completion(&mut rx, &entries[i], sources[i], sink);
                }
                handled += n as usize;
                continue;
            }
            if n == -(sys::FI_EAVAIL as isize) {
                // SAFETY: as above.
                let mut err: sys::fi_cq_err_entry = unsafe { std::mem::zeroed() };
                // SAFETY: live CQ; `err` is a zeroed entry (err_data_size 0: no
                // provider-specific error data is asked for).
                if unsafe { api::cq_readerr(self.ep.cq, &mut err) } > 0 {
                    self.on_error(&mut rx, &err, sink);
                    handled += 1;
                    continue;
                }
            }
            break;
        }
        handled
    }

    /// As `progress`, but when nothing has completed, waits up to `timeout` (rounded
    /// up to a millisecond) for the CQ's wait descriptor to become readable — the
    /// provider has something to progress: a socket with data, a signal — and then
    /// progresses. Returns (entries handled, whether the descriptor woke it). Waits
    /// only where the CQ has a wait descriptor, `fi_trywait` allows it, and no retry
    /// is owed (deferred posts, blocked notifications, receive buffers to repost);
    /// otherwise it is `progress`. `wake` ends the wait early.
    pub(crate) fn progress_blocking(
        &self,
        sink: Sink<'_>,
        expire: Option<&dyn Fn(Handle, FailCode) -> bool>,
        timeout: Duration,
    ) -> (usize, bool) {
        let handled = self.progress(sink, expire);
        let Some(fd) = self.ep.wait_fd else {
            return (handled, false);
        };
        if handled > 0 || self.owes_retry() || !self.ep.domain.trywait(self.ep.cq) {
            return (handled, false);
        }
        let ms = i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        self.sleeps.fetch_add(1, Ordering::Relaxed);
        // SAFETY: one valid pollfd; the descriptor is the CQ's, open as long as `self`.
        let woke = unsafe { libc::poll(&mut p, 1, ms) } > 0;
        (self.progress(sink, expire), woke)
    }

    /// Wakes a thread waiting in `progress_blocking` (shutdown).
    pub(crate) fn wake(&self) {
        if self.ep.wait_fd.is_some() {
            // SAFETY: live CQ; signalling is thread-safe.
            unsafe { api::cq_signal(self.ep.cq) };
        }
    }

    /// Whether the CQ has a wait descriptor (`progress_blocking` can wait).
    pub(crate) fn waitable(&self) -> bool {
        self.ep.wait_fd.is_some()
    }

    /// Whether progress has work of its own to retry (so a thread must not block).
    fn owes_retry(&self) -> bool {
        if self.deferred_count.load(Ordering::Acquire) != 0 {
            return true;
        }
        match self.rx.try_lock() {
            Ok(rx) => !rx.blocked.is_empty() || !rx.unposted.is_empty() || rx.welcomes_owed,
            // Another thread is progressing: nothing to retry for this one.
            Err(_) => false,
        }
    }

    // ----- deadlines -----

    /// At most once a millisecond: fails (for their owners) the transfers whose
    /// deadline passed, with `TIMEOUT`. A peer that let the engine's deadline pass
    /// (`liveness`: a transfer whose own timeout is at least that) is taken as lost:
    /// its other transfers in flight fail too (`PEER_LOST`) and its address is
    /// forgotten (a restarted peer is loaded again). A shorter deadline a caller chose
    /// for one transfer fails that transfer only. Slots stay posted until the
    /// provider completes them.
    fn expire_overdue(&self, expire: &dyn Fn(Handle, FailCode) -> bool) {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let last = self.scanned_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1_000_000 {
            return;
        }
        self.scanned_at.store(now, Ordering::Relaxed);
        let mut lost = [u64::MAX; 8];
        let mut lost_count = 0;
        for slot in self.slots.iter() {
            let deadline = slot.deadline.load(Ordering::Acquire);
            if deadline == 0 || deadline > now {
                continue;
            }
            if self.expire_slot(slot, deadline, FailCode::TIMEOUT, expire)
                && slot.timeout.load(Ordering::Relaxed) >= self.liveness
            {
                let dest = slot.dest.load(Ordering::Relaxed);
                if !lost[..lost_count].contains(&dest) && lost_count < lost.len() {
                    lost[lost_count] = dest;
                    lost_count += 1;
                }
            }
        }
        if lost_count == 0 {
            return;
        }
        let lost = &lost[..lost_count];
        for slot in self.slots.iter() {
            let deadline = slot.deadline.load(Ordering::Acquire);
            if deadline != 0 && lost.contains(&slot.dest.load(Ordering::Relaxed)) {
                self.expire_slot(slot, deadline, FailCode::PEER_LOST, expire);
            }
        }
        for &dest in lost {
            self.mark_lost(dest);
        }
    }

    /// Declares the peer at `dest` lost from outside (`Engine::lose_peer`): its
    /// transfers in flight fail for their owners with `PEER_LOST` now (their slots
    /// stay posted until the provider completes them), new ones fail at `post`.
    pub(crate) fn lose(&self, dest: u64, expire: &dyn Fn(Handle, FailCode) -> bool) {
        for slot in self.slots.iter() {
            let deadline = slot.deadline.load(Ordering::Acquire);
            if deadline != 0 && slot.dest.load(Ordering::Relaxed) == dest {
                self.expire_slot(slot, deadline, FailCode::PEER_LOST, expire);
            }
        }
        self.mark_lost(dest);
    }

    /// Disarms `slot` (if its deadline is still `deadline`) and fails its transfer
    /// for its owner.
    fn expire_slot(
        &self,
        slot: &TxSlot,
        deadline: u64,
        code: FailCode,
        expire: &dyn Fn(Handle, FailCode) -> bool,
    ) -> bool {
        // The CAS fails if the slot finished or moved on meanwhile.
        if slot
            .deadline
            .compare_exchange(deadline, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        // The provider held it past its deadline: counted (and its peer taken as
        // lost) even if the engine's own check failed it for its owner first.
        let handle = Handle::from_raw(slot.handle.load(Ordering::Acquire));
        expire(handle, code);
        self.expired.fetch_add(1, Ordering::Relaxed);
        true
    }

    // ----- retries -----

    fn retry_blocked(&self, rx: &mut RxState) {
        for i in (0..rx.unposted.len()).rev() {
            let buf = rx.unposted.swap_remove(i);
            self.repost(rx, buf);
        }
        let mut i = 0;
        while i < rx.blocked.len() {
            let (peer, buf) = rx.blocked[i];
            if self.deliver(rx, peer as usize, buf) {
                rx.blocked.remove(i);
            } else {
                i += 1;
            }
        }
    }

    fn retry_welcomes(&self, rx: &mut RxState) {
        if !rx.welcomes_owed {
            return;
        }
        rx.welcomes_owed = false;
        for tag in 0..rx.peers.len() {
            if rx.peers[tag].as_ref().is_some_and(|p| p.welcome_owed && !p.welcoming) {
                self.welcome(rx, tag);
            }
        }
    }

    /// Sends (or owes) the WELCOME that tells sender `tag` its tag.
    fn welcome(&self, rx: &mut RxState, tag: usize) {
        let Some(p) = rx.peers[tag].as_mut() else { return };
        if p.welcoming {
            p.welcome_owed = true;
            rx.welcomes_owed = true;
            return;
        }
        let buf = self.welcome_buffer(tag);
        let payload = wire::welcome_payload(self.engine_id, tag as u16);
        let len = wire::write_message(buf, self.msg_size, WELCOME, 0, 0, 0, &payload);
        // SAFETY: the sender place's WELCOME buffer is not in flight (`welcoming` is
        // false) and is touched only under the progress lock; the endpoint is live.
        let ret = unsafe { api::send(self.ep.ep, buf.cast(), len, self.desc(), p.addr, buf.cast()) };
        p.welcoming = ret == 0;
        p.welcome_owed = ret == api::EAGAIN;
        rx.welcomes_owed |= ret == api::EAGAIN;
    }

    // ----- routing completions -----

    /// Which sender place a WELCOME buffer context is, if any.
    fn welcome_of(&self, context: *mut c_void) -> Option<usize> {
        element_of(context, self.welcome_buffer(0) as usize, self.msg_size, self.max_peers)
    }

    /// Which slot a context points at, if any.
    fn slot_of(&self, context: *mut c_void) -> Option<usize> {
        element_of(
            context,
            self.slots.as_ptr() as usize,
            std::mem::size_of::<TxSlot>(),
            self.capacity,
        )
    }

    /// Which receive buffer a context points at, if any.
    fn rx_of(&self, context: *mut c_void) -> Option<u32> {
        element_of(context, self.rx_buffer(0) as usize, self.msg_size, self.rx_count).map(|i| i as u32)
    }

    fn on_completion(&self, rx: &mut RxState, e: &sys::fi_cq_data_entry, source: u64, sink: Sink<'_>) {
        if let Some(index) = self.slot_of(e.op_context) {
            self.release_ref(index, sink);
        } else if let Some(buf) = self.rx_of(e.op_context) {
            self.on_message(rx, buf, e.len, source);
        } else if e.op_context == (&raw const self.hello_state).cast_mut().cast() {
            self.hello_state.store(1, Ordering::Release);
        } else if e.op_context == (&raw const self.inject_state).cast_mut().cast() {
            self.inject_state.store(1, Ordering::Release);
        } else if let Some(tag) = self.welcome_of(e.op_context) {
            if let Some(p) = rx.peers[tag].as_mut() {
                p.welcoming = false;
            }
        } else if e.flags & u64::from(sys::FI_REMOTE_WRITE) != 0 && e.flags & u64::from(sys::FI_REMOTE_CQ_DATA) != 0 {
            self.on_remote_write(rx, e.data, source);
        } else {
            self.unattributed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_error(&self, rx: &mut RxState, e: &sys::fi_cq_err_entry, sink: Sink<'_>) {
        if let Some(index) = self.slot_of(e.op_context) {
            let code = fail_code(e.err);
            if code == FailCode::PEER_LOST {
                self.mark_lost(self.slots[index].dest.load(Ordering::Relaxed));
            }
            fail(&self.slots[index], code);
            self.release_ref(index, sink);
        } else if let Some(buf) = self.rx_of(e.op_context) {
            // A receive cancelled or truncated: the buffer goes back.
            self.malformed.fetch_add(1, Ordering::Relaxed);
            self.repost(rx, buf);
        } else if e.op_context == (&raw const self.hello_state).cast_mut().cast() {
            self.hello_state.store(e.err.unsigned_abs() + 1, Ordering::Release);
        } else if e.op_context == (&raw const self.inject_state).cast_mut().cast() {
            self.inject_state.store(e.err.unsigned_abs() + 1, Ordering::Release);
        } else if let Some(tag) = self.welcome_of(e.op_context) {
            // The sender's hello() times out and reports it.
            if let Some(p) = rx.peers[tag].as_mut() {
                p.welcoming = false;
            }
        } else {
            self.unattributed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Gives receive buffer `buf` back to the provider (or keeps it for a retry).
    pub(super) fn repost(&self, rx: &mut RxState, buf: u32) {
        let ptr = self.rx_buffer(buf);
        // SAFETY: receive buffer `buf` is not posted (it just completed, or was held)
        // and is touched only under the progress lock; the endpoint is live.
        let ret = unsafe { api::recv(self.ep.ep, ptr.cast(), self.msg_size, self.desc(), ptr.cast()) };
        if ret != 0 {
            rx.unposted.push(buf);
        }
    }

    // ----- sender tables: matching, stale and duplicate arrivals -----

    /// The sender place of an arrival: by the tag it carries, or (without room for
    /// tags) by its source address.
    fn sender(&self, rx: &RxState, tag: u64, source: u64) -> Option<usize> {
        if self.tagged {
            let tag = tag as usize;
            return rx.peers.get(tag)?.as_ref().map(|_| tag);
        }
        rx.peers
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.addr == source))
    }

    /// The table of sender place `peer` (found by `sender`).
    fn table(rx: &mut RxState, peer: usize) -> &mut [RxEntry] {
        match rx.peers[peer].as_mut() {
            Some(p) => &mut p.table,
            None => &mut [],
        }
    }

    /// Compares two generations of `bits` bits (serial arithmetic).
    fn newer(a: u64, b: u64, bits: u32) -> std::cmp::Ordering {
        if a == b {
            return std::cmp::Ordering::Equal;
        }
        let mask = (1u64 << bits) - 1;
        if a.wrapping_sub(b) & mask < 1 << (bits - 1) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Less
        }
    }

    /// The entry for (peer, slot `index`) after moving it to `generation` (of `bits`
    /// bits); `None` (counted) if the arrival is stale or names no slot.
    fn entry(&self, rx: &mut RxState, peer: usize, index: usize, generation: u64, bits: u32) -> Option<usize> {
        let Some(entry) = Self::table(rx, peer).get(index).copied() else {
            self.unattributed.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        match Self::newer(generation, entry.generation, bits) {
            std::cmp::Ordering::Less if entry.generation != 0 => {
                self.stale.fetch_add(1, Ordering::Relaxed);
                None
            }
            std::cmp::Ordering::Equal => Some(index),
            _ => {
                if entry.held != NONE {
                    // A NOTIFY of an older generation never saw its writes: dropped.
                    self.stale.fetch_add(1, Ordering::Relaxed);
                    self.repost(rx, entry.held);
                }
                Self::table(rx, peer)[index] = RxEntry {
                    generation,
                    ..RxEntry::EMPTY
                };
                Some(index)
            }
        }
    }

    fn on_remote_write(&self, rx: &mut RxState, data: u64, source: u64) {
        let Some(peer) = self.sender(rx, wire::immediate_tag(data), source) else {
            self.unattributed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.touch(rx, peer);
        if !self.tagged {
            // Four bytes of immediate data leave 12 generation bits: too few to tell
            // a very late write from a current one. No notification waits for writes
            // here (see `on_notify`), so a write is counted and matched to nothing.
            self.remote_writes.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let (index, generation) = wire::unpack_immediate(data, self.gen_bits);
        let Some(index) = self.entry(rx, peer, index, generation, self.gen_bits) else {
            return;
        };
        self.remote_writes.fetch_add(1, Ordering::Relaxed);
        let e = &mut Self::table(rx, peer)[index];
        e.seen += 1;
        if e.seen >= e.want && e.held != NONE {
            let held = std::mem::replace(&mut e.held, NONE);
            if !self.deliver(rx, peer, held) {
                rx.blocked.push((peer as u32, held));
            }
        }
    }

    // ----- control messages -----

    fn on_message(&self, rx: &mut RxState, buf: u32, len: usize, source: u64) {
        let ptr = self.rx_buffer(buf);
        let Some(h) = wire::read_header(ptr, len.min(self.msg_size)) else {
            self.malformed.fetch_add(1, Ordering::Relaxed);
            self.repost(rx, buf);
            return;
        };
        match h.kind {
            HELLO => {
                // SAFETY: the message is `len` bytes of this receive buffer, which the
                // provider finished writing (its completion was read).
                let payload = unsafe { std::slice::from_raw_parts(ptr.add(HEADER), h.len) };
                if self.on_hello(rx, payload).is_err() {
                    self.malformed.fetch_add(1, Ordering::Relaxed);
                }
                self.repost(rx, buf);
            }
            WELCOME => {
                // SAFETY: as for HELLO.
                let payload = unsafe { std::slice::from_raw_parts(ptr.add(HEADER), h.len) };
                self.on_welcome(payload);
                self.repost(rx, buf);
            }
            NOTIFY | ABORT => self.on_notify(rx, buf, &h, source),
            _ => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
                self.repost(rx, buf);
            }
        }
    }

    /// A receiver told us our tag there.
    fn on_welcome(&self, payload: &[u8]) {
        let Some((engine, tag)) = wire::parse_welcome(payload) else {
            self.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut welcomes = self.welcomes.lock().unwrap_or_else(|e| e.into_inner());
        welcomes.retain(|(e, _)| *e != engine);
        if welcomes.len() < welcomes.capacity() {
            welcomes.push((engine, tag));
        }
    }

    /// A NOTIFY (or ABORT) in receive buffer `buf`, header `h`: delivered once its
    /// writes are all seen, held until then; an ABORT clears the entry's wait.
    fn on_notify(&self, rx: &mut RxState, buf: u32, h: &Header, source: u64) {
        let Some(peer) = self.sender(rx, u64::from(h.tag), source) else {
            self.unattributed.fetch_add(1, Ordering::Relaxed);
            self.repost(rx, buf);
            return;
        };
        self.touch(rx, peer);
        // With 8 bytes of immediate data, writes carry 32 generation bits and the
        // NOTIFY is matched to its writes by them (the bits the writes carry). With 4,
        // the NOTIFY alone decides, by its full handle: the sender sends it only once
        // its writes completed with FI_DELIVERY_COMPLETE (their bytes are in our
        // memory), so it waits for no count, and an old generation can never match.
        let handle = Handle::from_raw(h.handle);
        let found = if self.tagged {
            let (index, generation) = wire::unpack_immediate(self.immediate(handle, h.tag), self.gen_bits);
            self.entry(rx, peer, index, generation, self.gen_bits)
        } else {
            self.entry(
                rx,
                peer,
                handle.index() as usize,
                handle.generation(),
                crate::ring::GENERATION_BITS,
            )
        };
        let Some(index) = found else {
            self.repost(rx, buf);
            return;
        };
        let e = &mut Self::table(rx, peer)[index];
        if e.notified {
            // A second NOTIFY (or ABORT) for the same generation: a duplicate, dropped
            // (the first, held or delivered, stands).
            self.stale.fetch_add(1, Ordering::Relaxed);
            self.repost(rx, buf);
            return;
        }
        e.notified = true;
        if h.kind == ABORT {
            e.want = u64::MAX;
            self.aborts.fetch_add(1, Ordering::Relaxed);
            self.repost(rx, buf);
            return;
        }
        e.want = if self.tagged { h.count } else { 0 };
        if e.seen >= e.want {
            if !self.deliver(rx, peer, buf) {
                rx.blocked.push((peer as u32, buf));
            }
        } else {
            e.held = buf;
        }
    }

    /// Puts the NOTIFY in receive buffer `buf` into the sender's inbox lane and
    /// reposts the buffer; false (nothing done) if the lane is full.
    fn deliver(&self, rx: &mut RxState, peer: usize, buf: u32) -> bool {
        let ptr = self.rx_buffer(buf);
        let Some(h) = wire::read_header(ptr, self.msg_size) else {
            self.repost(rx, buf);
            return true;
        };
        let Some(sender) = rx.peers[peer].as_ref() else {
            self.repost(rx, buf);
            return true;
        };
        let outbox = &sender.outbox;
        if !outbox.reserve() {
            return false;
        }
        // SAFETY: the buffer holds a complete message (checked header, len within it).
        let payload = unsafe { std::slice::from_raw_parts(ptr.add(HEADER), h.len) };
        outbox.deliver(Handle::from_raw(h.handle), payload);
        self.notifications.fetch_add(1, Ordering::Relaxed);
        self.repost(rx, buf);
        true
    }

    // ----- sender places -----

    /// A sender introduced itself: its address goes in the AV, and it gets a table
    /// and a lane of our inbox (control path: allocates).
    fn on_hello(&self, rx: &mut RxState, payload: &[u8]) -> Result<()> {
        let bad = || Error::InvalidDescriptor {
            reason: "malformed HELLO",
        };
        let hello = wire::parse_hello(payload).ok_or_else(bad)?;
        if hello.capacity == 0 || hello.capacity > self.capacity || hello.addr.is_empty() {
            return Err(bad());
        }
        let engine_id = hello.engine_id;
        let (fi_addr, replaced) = self.address(hello.addr, engine_id)?;
        if let Some(tag) = rx
            .peers
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.engine_id == engine_id))
        {
            // A reload: same engine, same table (generations go on); the address may
            // have moved.
            if let Some(p) = rx.peers[tag].as_mut() {
                p.addr = fi_addr;
            }
            self.welcome(rx, tag);
            return Ok(());
        }
        self.make_room(rx, replaced);
        let Some(tag) = rx.peers.iter().position(Option::is_none) else {
            return Err(Error::PeerTableFull {
                capacity: rx.peers.len(),
            });
        };
        // Marked remote: no pid check on this host may take the lane over.
        let outbox = Outbox::claim(Arc::clone(&self.inbox), engine_id | REMOTE_OWNER, &hello.name)?;
        rx.peers[tag] = Some(RxPeer {
            engine_id,
            addr: fi_addr,
            outbox,
            table: vec![RxEntry::EMPTY; hello.capacity].into_boxed_slice(),
            welcoming: false,
            welcome_owed: false,
            last_active: Instant::now(),
        });
        self.welcome(rx, tag);
        Ok(())
    }

    /// Frees places for a new sender: those of the engine that was at the sender's
    /// address (`replaced`, a restarted peer), and, if the table is still full, the
    /// one of the sender idle longest if it has been idle for a while (a restarted
    /// sender's old self). A busy table stays full.
    fn make_room(&self, rx: &mut RxState, replaced: Option<u64>) {
        if let Some(old) = replaced {
            // The engine that was at this address is gone: so are its table and lane.
            for tag in 0..rx.peers.len() {
                if rx.peers[tag].as_ref().is_some_and(|p| p.addr == old && !p.welcoming) {
                    self.free_place(rx, tag);
                }
            }
        }
        if !rx.peers.iter().any(Option::is_none) {
            let idle = rx
                .peers
                .iter()
                .enumerate()
                .filter_map(|(tag, p)| p.as_ref().filter(|p| !p.welcoming).map(|p| (tag, p.last_active)))
                .min_by_key(|(_, at)| *at);
            if let Some((tag, at)) = idle
                && at.elapsed() > IDLE_SENDER
            {
                self.free_place(rx, tag);
            }
        }
    }

    /// Notes that sender place `tag` is alive.
    fn touch(&self, rx: &mut RxState, tag: usize) {
        if let Some(p) = rx.peers[tag].as_mut() {
            p.last_active = Instant::now();
        }
    }

    /// Empties sender place `tag`: the receive buffers its table or the blocked list
    /// hold go back to the provider, and its inbox lane is given up.
    fn free_place(&self, rx: &mut RxState, tag: usize) {
        let Some(p) = rx.peers[tag].take() else { return };
        for e in p.table.iter().filter(|e| e.held != NONE) {
            self.repost(rx, e.held);
        }
        let mut i = 0;
        while i < rx.blocked.len() {
            if rx.blocked[i].0 as usize == tag {
                let (_, buf) = rx.blocked.swap_remove(i);
                self.repost(rx, buf);
            } else {
                i += 1;
            }
        }
    }
}

/// The index of the element `context` points at in an array of `count` elements of
/// `size` bytes at `base`, if it points exactly at one.
fn element_of(context: *mut c_void, base: usize, size: usize, count: usize) -> Option<usize> {
    let offset = (context as usize).checked_sub(base)?;
    (offset % size == 0 && offset / size < count).then_some(offset / size)
}
