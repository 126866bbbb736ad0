//! The sender side: posting a transfer's operations (`post`, `launch`), moving a
//! slot through its phases (data, then its NOTIFY or ABORT) as they complete, and
//! the control path's own sends (the HELLO and the `inject_write` test hook).

use std::ffi::c_void;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::wire::{self, ABORT, HELLO, NOTIFY};
use super::{Fabric, Sink, api, sys};
use crate::backend::Recall;
use crate::backend::runs::Runs;
use crate::error::{Error, Result};
use crate::ring::{FailCode, FailSource, Handle, Outcome, TransportId};
use crate::types::Op;

/// Data operations in flight (or being posted).
const PHASE_DATA: u32 = 0;
/// The NOTIFY message in flight.
const PHASE_NOTIFY: u32 = 1;
/// The ABORT message in flight after a failure.
const PHASE_ABORT: u32 = 2;

/// How long a post keeps retrying a provider that says EAGAIN (driving progress in
/// between) before the transfer fails.
const EAGAIN_PATIENCE: Duration = Duration::from_secs(2);

/// One slot's fabric state; its address is the `op_context` of the slot's operations.
#[repr(align(64))]
pub(super) struct TxSlot {
    pub(super) handle: AtomicU64,
    /// Operations in flight, plus one held by the poster while it posts.
    pub(super) pending: AtomicU32,
    /// The first failure's `FailCode` bits; 0 while none.
    pub(super) error: AtomicU32,
    pub(super) phase: AtomicU32,
    /// Length of the control message in the slot's buffer; 0 if no notification.
    pub(super) message_len: AtomicU32,
    pub(super) dest: AtomicU64,
    /// When the transfer expires (nanoseconds since `Fabric::epoch`, `u64::MAX`:
    /// never); 0 while it is not armed (being posted, or finished).
    pub(super) deadline: AtomicU64,
    /// How long each phase of the transfer may take (nanoseconds, `u64::MAX`: no
    /// deadline): the transfer's own timeout, set at post.
    pub(super) timeout: AtomicU64,
}

impl TxSlot {
    /// A slot with nothing in flight.
    pub(super) fn idle() -> TxSlot {
        TxSlot {
            handle: AtomicU64::new(0),
            pending: AtomicU32::new(0),
            error: AtomicU32::new(0),
            phase: AtomicU32::new(PHASE_DATA),
            message_len: AtomicU32::new(0),
            dest: AtomicU64::new(0),
            deadline: AtomicU64::new(0),
            timeout: AtomicU64::new(u64::MAX),
        }
    }
}

/// One fabric operation of a transfer: a piece of a local buffer (at most the
/// provider's `max_msg_size`) and the remote range it goes to or comes from.
struct Piece {
    buf: *mut c_void,
    len: usize,
    desc: *mut c_void,
    raddr: u64,
    key: u64,
}

impl Fabric {
    // ----- control path -----

    /// Introduces this engine to the peer `peer_engine` at `dest`: a HELLO, then its
    /// WELCOME, waited for (up to `timeout`). Returns our tag at the peer.
    pub(crate) fn hello(
        &self,
        dest: u64,
        peer_engine: u64,
        capacity: usize,
        timeout: Duration,
        sink: Sink<'_>,
    ) -> Result<u16> {
        let _one = self.hello.lock().unwrap_or_else(|e| e.into_inner());
        self.wait_for_earlier_hello(timeout, sink)?;
        self.welcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(engine, _)| *engine != peer_engine);
        let payload = wire::hello_payload(self.engine_id, capacity, &self.name, &self.ep.name);
        let buf = self.buffer(self.capacity);
        let len = wire::write_message(buf, self.msg_size, HELLO, 0, 0, 0, &payload);
        self.hello_state.store(0, Ordering::Release);
        let context = (&raw const self.hello_state).cast_mut().cast::<c_void>();
        let start = Instant::now();
        // SAFETY: the HELLO buffer is ours under the `hello` lock and stays untouched
        // until the send completes (this or the next HELLO waits for it); the endpoint
        // is live.
        let ret = self.retry_eagain(timeout, sink, || unsafe {
            api::send(self.ep.ep, buf.cast(), len, self.desc(), dest, context)
        });
        if ret != 0 {
            return Err(self.ep.domain.api.error("fi_send(hello)", ret));
        }
        self.hello_in_flight.store(true, Ordering::Release);
        self.await_welcome(peer_engine, start, timeout, sink)
    }

    /// Waits (up to `timeout`) for an earlier HELLO that timed out but may still be in
    /// flight: its buffer and completion state are the provider's until it completes.
    /// Called under the `hello` lock.
    fn wait_for_earlier_hello(&self, timeout: Duration, sink: Sink<'_>) -> Result<()> {
        let start = Instant::now();
        while self.hello_in_flight.load(Ordering::Acquire) {
            if self.hello_state.load(Ordering::Acquire) != 0 {
                self.hello_in_flight.store(false, Ordering::Release);
                break;
            }
            if start.elapsed() > timeout {
                return Err(Error::PeerUnreachable {
                    name: String::from("(fabric peer)"),
                    reason: String::from("an earlier HELLO (to another peer) is still in flight"),
                });
            }
            self.progress(sink, None);
            std::thread::yield_now();
        }
        Ok(())
    }

    /// Drives progress until the HELLO posted at `start` completed and `peer_engine`'s
    /// WELCOME arrived (our tag there), the HELLO failed, or `timeout` passed.
    fn await_welcome(&self, peer_engine: u64, start: Instant, timeout: Duration, sink: Sink<'_>) -> Result<u16> {
        loop {
            let welcome = self
                .welcomes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|(engine, _)| *engine == peer_engine)
                .map(|(_, tag)| *tag);
            let state = self.hello_state.load(Ordering::Acquire);
            if state != 0 {
                self.hello_in_flight.store(false, Ordering::Release);
            }
            match state {
                0 => {}
                1 => {
                    if let Some(tag) = welcome {
                        return Ok(tag);
                    }
                }
                code => {
                    return Err(Error::PeerUnreachable {
                        name: String::from("(fabric peer)"),
                        reason: format!("the HELLO failed: {}", self.ep.domain.api.strerror(code as i32 - 1)),
                    });
                }
            }
            if start.elapsed() > timeout {
                // A send still in flight keeps its buffer: the next HELLO waits for it
                // (`hello_in_flight`).
                return Err(Error::PeerUnreachable {
                    name: String::from("(fabric peer)"),
                    reason: format!("no WELCOME reply to the HELLO within {timeout:?}"),
                });
            }
            self.progress(sink, None);
            std::thread::yield_now();
        }
    }

    /// Test hook: one raw `fi_writedata` of `local` to (`raddr`, `key`) at `dest`,
    /// carrying `handle` as if it were one of ours — a late or forged arrival for the
    /// receiver to judge. Waits for its completion (control path; serialised with
    /// HELLOs).
    #[cfg(feature = "testing")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn inject_write(
        &self,
        dest: u64,
        tag: u16,
        local: &crate::mem::Resolved,
        raddr: u64,
        key: u64,
        handle: Handle,
        sink: Sink<'_>,
    ) -> Result<()> {
        let _one = self.hello.lock().unwrap_or_else(|e| e.into_inner());
        self.inject_state.store(0, Ordering::Release);
        let context = (&raw const self.inject_state).cast_mut().cast::<c_void>();
        // SAFETY: `local` is pinned by the caller until this returns, and we wait for
        // the operation's completion below; the endpoint is live.
        let ret = self.retry_eagain(EAGAIN_PATIENCE, sink, || unsafe {
            api::writedata(
                self.ep.ep,
                local.addr as *const c_void,
                local.len,
                local.key_desc as *mut c_void,
                self.immediate(handle, tag),
                dest,
                raddr,
                key,
                context,
            )
        });
        if ret != 0 {
            return Err(self.ep.domain.api.error("fi_writedata", ret));
        }
        loop {
            match self.inject_state.load(Ordering::Acquire) {
                0 => {}
                1 => return Ok(()),
                code => return Err(self.ep.domain.api.error("fi_writedata", -(code as isize - 1))),
            }
            self.progress(sink, None);
            std::thread::yield_now();
        }
    }

    // ----- hot path: post -----

    /// Starts a transfer in slot `handle`: every local buffer with its remote address
    /// and key (`remote(i)`), then, once they complete, the notification if any.
    ///
    /// `Err` means nothing was posted (the engine makes the transfer prepared again).
    /// `Ok`: the caller must call [`launch`](Fabric::launch) once it no longer borrows
    /// the transfer's context; the transfer is then reported to a sink exactly once.
    /// `sink` receives other transfers that progress ends meanwhile, never this one.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn post(
        &self,
        handle: Handle,
        timeout: Option<u64>,
        op: Op,
        runs: Runs<'_>,
        remote: impl Fn(usize) -> (u64, u64),
        dest: u64,
        tag: u16,
        notif: Option<&[u8]>,
        sink: Sink<'_>,
    ) -> Result<()> {
        let index = handle.index() as usize;
        let slot = &self.slots[index];
        let context = (slot as *const TxSlot).cast_mut().cast::<c_void>();
        slot.handle.store(handle.to_raw(), Ordering::Relaxed);
        slot.error.store(0, Ordering::Relaxed);
        slot.phase.store(PHASE_DATA, Ordering::Relaxed);
        slot.dest.store(dest, Ordering::Relaxed);
        slot.timeout.store(timeout.unwrap_or(u64::MAX), Ordering::Relaxed);
        let max = self.ep.domain.max_msg_size;
        let ops: u64 = runs.clone().map(|r| r.local.len.div_ceil(max).max(1) as u64).sum();
        let message_len = self.stage_notify(handle, op, ops, tag, notif);
        slot.message_len.store(message_len, Ordering::Relaxed);
        // The poster's reference: completions cannot finish the slot while we post.
        slot.pending.store(1, Ordering::Release);
        let imm = self.immediate(handle, tag);
        let mut posted = false;
        'descs: for run in runs {
            let (l, (raddr, key)) = (&run.local, remote(run.pair));
            let raddr = raddr + run.at;
            let mut done = 0;
            while done < l.len {
                let len = (l.len - done).min(max);
                let piece = Piece {
                    buf: (l.addr + done) as *mut c_void,
                    len,
                    desc: l.key_desc as *mut c_void,
                    raddr: raddr + done as u64,
                    key,
                };
                slot.pending.fetch_add(1, Ordering::AcqRel);
                let ret = self.retry_eagain(EAGAIN_PATIENCE, sink, || {
                    // SAFETY: `l` is pinned by the transfer (its region cannot go before
                    // the slot is freed, which waits for this completion); the remote
                    // range was checked against the peer's metadata; `context` is the
                    // slot's state, alive as long as the engine.
                    unsafe { self.post_piece(op, &piece, imm, dest, context) }
                });
                if ret != 0 {
                    slot.pending.fetch_sub(1, Ordering::AcqRel);
                    if !posted {
                        slot.pending.store(0, Ordering::Release);
                        return Err(self.ep.domain.api.error(
                            match op {
                                Op::Write => "fi_writedata",
                                Op::Read => "fi_read",
                            },
                            ret,
                        ));
                    }
                    fail(slot, fail_code(ret.unsigned_abs() as i32));
                    break 'descs;
                }
                posted = true;
                done += len;
            }
        }
        self.arm(slot);
        // The poster's reference stays until `launch`, which the engine calls once it
        // no longer borrows the transfer's context: until then no completion can end
        // the slot (and reclaim that context).
        Ok(())
    }

    /// Writes the transfer's NOTIFY (if it has a notification) into its slot's buffer,
    /// announcing its `ops` writes (none for a READ); the message's length, 0 if none.
    fn stage_notify(&self, handle: Handle, op: Op, ops: u64, tag: u16, notif: Option<&[u8]>) -> u32 {
        let Some(payload) = notif else { return 0 };
        let writes = if op == Op::Write { ops } else { 0 };
        wire::write_message(
            self.buffer(handle.index() as usize),
            self.msg_size,
            NOTIFY,
            tag,
            handle.to_raw(),
            writes,
            payload,
        ) as u32
    }

    /// Posts one piece of a transfer to the provider: an `fi_writedata` carrying `imm`
    /// for a WRITE, an `fi_read` for a READ. Returns the provider's result.
    ///
    /// # Safety
    ///
    /// `piece.buf` must stay valid (pinned, registered as `piece.desc` says) until the
    /// operation completes, the remote range must be the peer's, and `context` must be
    /// the slot's state.
    unsafe fn post_piece(&self, op: Op, piece: &Piece, imm: u64, dest: u64, context: *mut c_void) -> isize {
        // SAFETY: the caller's contract; the endpoint is live.
        unsafe {
            match op {
                Op::Write => api::writedata(
                    self.ep.ep,
                    piece.buf,
                    piece.len,
                    piece.desc,
                    imm,
                    dest,
                    piece.raddr,
                    piece.key,
                    context,
                ),
                Op::Read => api::read(
                    self.ep.ep,
                    piece.buf,
                    piece.len,
                    piece.desc,
                    dest,
                    piece.raddr,
                    piece.key,
                    context,
                ),
            }
        }
    }

    /// Test hook: one raw NOTIFY carrying `handle` and `payload` to `dest` (as if a
    /// transfer of ours had sent it: a late or duplicate one of an old generation,
    /// say), from the HELLO buffer under the `hello` lock; waits for it to complete.
    #[cfg(feature = "testing")]
    pub(crate) fn inject_notify(
        &self,
        dest: u64,
        tag: u16,
        handle: Handle,
        payload: &[u8],
        sink: Sink<'_>,
    ) -> Result<()> {
        let _one = self.hello.lock().unwrap_or_else(|e| e.into_inner());
        self.wait_for_earlier_hello(Duration::from_secs(10), sink)?;
        let buf = self.buffer(self.capacity);
        let len = wire::write_message(buf, self.msg_size, NOTIFY, tag, handle.to_raw(), 0, payload);
        self.inject_state.store(0, Ordering::Release);
        let context = (&raw const self.inject_state).cast_mut().cast::<c_void>();
        // SAFETY: the HELLO buffer is ours under the `hello` lock (an earlier HELLO's
        // send completed above) and untouched until this send completes, waited for
        // below; the endpoint is live.
        let ret = self.retry_eagain(EAGAIN_PATIENCE, sink, || unsafe {
            api::send(self.ep.ep, buf.cast(), len, self.desc(), dest, context)
        });
        if ret != 0 {
            return Err(self.ep.domain.api.error("fi_send(notify)", ret));
        }
        loop {
            match self.inject_state.load(Ordering::Acquire) {
                0 => {}
                1 => return Ok(()),
                code => return Err(self.ep.domain.api.error("fi_send(notify)", -(code as isize - 1))),
            }
            self.progress(sink, None);
            std::thread::yield_now();
        }
    }

    /// Sets the slot's deadline: the transfer's timeout from now.
    fn arm(&self, slot: &TxSlot) {
        let timeout = slot.timeout.load(Ordering::Relaxed);
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        slot.deadline
            .store(now.saturating_add(timeout).max(1), Ordering::Release);
    }

    /// The owner cancelled `handle`: if this slot holds it, its operations cannot be
    /// recalled, but it will not be reported done and its NOTIFY becomes an ABORT
    /// (unless the NOTIFY is already on its way). The engine fails it for its owner.
    pub(crate) fn abandon(&self, handle: Handle) -> Recall {
        let Some(slot) = self.slots.get(handle.index() as usize) else {
            return Recall::Asked;
        };
        if slot.handle.load(Ordering::Acquire) != handle.to_raw() || slot.deadline.load(Ordering::Acquire) == 0 {
            return Recall::Asked;
        }
        fail(slot, FailCode::CANCELLED);
        Recall::Abandon
    }

    /// Drops the poster's reference taken by a successful `post`; if every operation
    /// already completed, moves the slot on (its notification, or its end).
    pub(crate) fn launch(&self, handle: Handle, sink: Sink<'_>) {
        self.release_ref(handle.index() as usize, sink);
    }

    /// The immediate data a WRITE carries: our tag at the receiver, the low 32 bits
    /// of the generation and the index; with 4-byte CQ data the index and the low 12
    /// generation bits only. The receiver compares generations serially, so the bits
    /// that are cut never make an old generation look new.
    pub(super) fn immediate(&self, handle: Handle, tag: u16) -> u64 {
        wire::pack_immediate(handle, tag, self.gen_bits, self.tagged)
    }

    // ----- completions of the slot's operations -----

    /// Drops one reference to the slot's current phase; the last one moves it on.
    pub(super) fn release_ref(&self, index: usize, sink: Sink<'_>) {
        if self.slots[index].pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.finish_phase(index, sink);
        }
    }

    /// Every operation of the slot's phase completed.
    fn finish_phase(&self, index: usize, sink: Sink<'_>) {
        let slot = &self.slots[index];
        let handle = Handle::from_raw(slot.handle.load(Ordering::Relaxed));
        let error = slot.error.load(Ordering::Acquire);
        match slot.phase.load(Ordering::Relaxed) {
            PHASE_DATA if slot.message_len.load(Ordering::Relaxed) != 0 => {
                if error != 0 {
                    // Tell the receiver not to wait for writes that will not all come.
                    let tag = wire::read_header(self.buffer(index), self.msg_size).map_or(0, |h| h.tag);
                    let len =
                        wire::write_message(self.buffer(index), self.msg_size, ABORT, tag, handle.to_raw(), 0, &[]);
                    slot.message_len.store(len as u32, Ordering::Relaxed);
                    slot.phase.store(PHASE_ABORT, Ordering::Relaxed);
                } else {
                    slot.phase.store(PHASE_NOTIFY, Ordering::Relaxed);
                }
                slot.pending.store(1, Ordering::Release);
                // The control message has a deadline of its own.
                self.arm(slot);
                self.send_control(index, sink);
            }
            PHASE_ABORT => {
                // The ABORT's own outcome does not change the transfer's.
                slot.deadline.store(0, Ordering::Release);
                sink(handle, outcome(error));
            }
            _ => {
                slot.deadline.store(0, Ordering::Release);
                sink(handle, outcome(error));
            }
        }
    }

    /// Sends slot `index`'s control message (its pending count is 1); false if the
    /// provider said EAGAIN and the send was deferred.
    fn send_control(&self, index: usize, sink: Sink<'_>) -> bool {
        let slot = &self.slots[index];
        let context = (slot as *const TxSlot).cast_mut().cast::<c_void>();
        let len = slot.message_len.load(Ordering::Relaxed) as usize;
        // SAFETY: the slot's buffer is written only by the slot's owner, before this
        // send and not again until it completes; the endpoint is live.
        let ret = unsafe {
            api::send(
                self.ep.ep,
                self.buffer(index).cast(),
                len,
                self.desc(),
                slot.dest.load(Ordering::Relaxed),
                context,
            )
        };
        if ret == 0 {
            return true;
        }
        if ret == api::EAGAIN {
            // Capacity is reserved: at most one entry per slot.
            let mut deferred = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
            deferred.push(index as u32);
            self.deferred_count.store(deferred.len(), Ordering::Release);
            return false;
        }
        fail(slot, fail_code(ret.unsigned_abs() as i32));
        self.release_ref(index, sink);
        true
    }

    /// Sends again the control messages that met EAGAIN (called by progress).
    pub(super) fn retry_deferred(&self, sink: Sink<'_>) {
        if self.deferred_count.load(Ordering::Acquire) == 0 {
            return;
        }
        for _ in 0..self.capacity {
            let next = {
                let mut deferred = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
                let next = deferred.pop();
                self.deferred_count.store(deferred.len(), Ordering::Release);
                next
            };
            let Some(index) = next else { break };
            if !self.send_control(index as usize, sink) {
                break; // EAGAIN again: try on the next progress.
            }
        }
    }

    /// Calls `op` (a post to the provider) until it says anything but `-FI_EAGAIN`, or
    /// `patience` runs out, driving progress in between so the provider's queues
    /// drain. Returns `op`'s last result.
    fn retry_eagain(&self, patience: Duration, sink: Sink<'_>, mut op: impl FnMut() -> isize) -> isize {
        let start = Instant::now();
        loop {
            let ret = op();
            if ret != api::EAGAIN || start.elapsed() > patience {
                return ret;
            }
            self.progress(sink, None);
        }
    }
}

/// Records the slot's first failure.
pub(super) fn fail(slot: &TxSlot, code: FailCode) {
    let _ = slot
        .error
        .compare_exchange(0, code.to_bits().max(1), Ordering::AcqRel, Ordering::Relaxed);
}

fn outcome(error: u32) -> Outcome {
    match error {
        0 => Outcome::Done,
        bits => Outcome::Failed(FailCode::from_bits(bits)),
    }
}

/// A libfabric error number as a transfer's failure: lost connections are `PEER_LOST`.
pub(super) fn fail_code(err: i32) -> FailCode {
    let err = err.unsigned_abs();
    let lost = [
        sys::FI_ECONNRESET,
        sys::FI_ENOTCONN,
        sys::FI_ECONNREFUSED,
        sys::FI_EHOSTUNREACH,
        sys::FI_ECONNABORTED,
        sys::FI_ENETUNREACH,
        sys::FI_ENETDOWN,
        sys::FI_ESHUTDOWN,
        sys::FI_ETIMEDOUT,
    ];
    if lost.contains(&err) {
        FailCode::PEER_LOST
    } else {
        FailCode::new(FailSource::Transport(TransportId::FABRIC), err.min(0x3fff))
    }
}
