//! The hot path: prepare, post, progress, status, wait, cancel, release, notify and
//! pop a notification. Nothing here allocates (`tests/alloc_free.rs` counts).

use std::time::Duration;

use super::{Engine, reclaim, timeout_nanos, xfer};
use crate::backend::Transfer;
use crate::backend::{Recall, Started, Via};
use crate::error::{Error, Result};
use crate::mem::{Allowed, Holder, Resolved};
use crate::notify::Notification;
use crate::ring::{CancelResult, FailCode, Handle, Released, Status};
use crate::types::{Desc, Op, PeerId};

impl Engine {
    /// Validates a transfer and takes a slot for it: every local descriptor against
    /// this engine's registrations (and holds its region), every remote one against the
    /// peer's metadata, the two lists pairwise equal in length, the notification within
    /// both engines' limits. Nothing moves until [`post`](Engine::post).
    pub fn prepare(
        &self,
        op: Op,
        local: &[Desc],
        peer: PeerId,
        remote: &[Desc],
        notif: Option<&[u8]>,
    ) -> Result<Handle> {
        let (allowed, via) = self.validate(self.config.max_descs_per_xfer, local, peer, remote, notif)?;
        self.core.ring.acquire_try(|t: &mut Transfer| {
            let sides = (&mut t.local[..], &mut t.own[..]);
            t.via = self.hold_sides(local, (allowed, via), remote, sides, Holder::Slot(t.slot))?;
            t.op = op;
            t.peer = peer.0;
            t.count = local.len();
            // Only a peer's transfer reads them (one to the engine itself has them
            // resolved in `own`). Element by element: a transfer has few descriptors,
            // and `copy_from_slice` is a call to `memcpy`.
            if allowed != Allowed::Anything {
                for (to, from) in t.remote.iter_mut().zip(remote) {
                    *to = *from;
                }
            }
            t.stage_notif(notif);
            Ok(())
        })
    }

    /// Every check of [`prepare`](Engine::prepare) that does not touch the registry
    /// (at most `max` descriptors); says what the local descriptors may name and which
    /// transport moves a transfer to a peer (one to the engine itself is routed when
    /// resolved).
    #[inline(always)]
    pub(super) fn validate(
        &self,
        max: usize,
        local: &[Desc],
        peer: PeerId,
        remote: &[Desc],
        notif: Option<&[u8]>,
    ) -> Result<(Allowed, Via)> {
        if local.len() > max {
            return Err(Error::TooManyDescriptors {
                count: local.len(),
                max,
            });
        }
        if local.len() != remote.len() {
            return Err(Error::LengthMismatch {
                what: "descriptor count",
                local: local.len() as u64,
                remote: remote.len() as u64,
            });
        }
        if local.is_empty() && notif.is_none() {
            return Err(Error::InvalidDescriptor {
                reason: "a transfer needs descriptors or a notification",
            });
        }
        if let Some((l, r)) = local.iter().zip(remote).find(|(l, r)| l.len != r.len) {
            return Err(Error::LengthMismatch {
                what: "length of a descriptor pair",
                local: l.len,
                remote: r.len,
            });
        }
        self.route(peer, remote, notif)
    }

    /// The checks against the peer: the notification within both engines' limits and
    /// every remote descriptor against the peer's metadata; says what the local side
    /// may name and which transport moves the transfer.
    #[inline(always)]
    pub(super) fn route(&self, peer: PeerId, remote: &[Desc], notif: Option<&[u8]>) -> Result<(Allowed, Via)> {
        self.usable()?;
        if peer == PeerId::SELF {
            // Checked when resolved, against this engine's own registrations.
            return match notif {
                Some(_) => Err(Error::InvalidDescriptor {
                    reason: "a transfer to this engine itself has no peer to notify",
                }),
                None => Ok((Allowed::Anything, Via::Memory)),
            };
        }
        let peers = self.unpoison(self.peers.read());
        let Some(p) = peers.get(peer.0) else {
            return Err(Error::UnknownPeer { peer: peer.0 });
        };
        if p.lost.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::PeerLost { peer: peer.0 });
        }
        if let Some(n) = notif {
            let max = self.config.max_notif_bytes.min(p.max_notif_bytes);
            if n.len() > max {
                return Err(Error::NotificationTooLarge { len: n.len(), max });
            }
        }
        let mut remote_device = false;
        for d in remote {
            remote_device |= p.check(d)?;
        }
        // GPU memory moves to a peer only through a transport that registered it.
        let (via, keyed) = p.link.route();
        if p.link.moves_device_memory() {
            // GPU memory on either side goes to the cuda transport (the local side
            // is seen when it is resolved, in `hold_sides`).
            return Ok((Allowed::Device, via.with_device_memory(remote_device)));
        }
        Ok((if keyed { Allowed::Keyed } else { Allowed::Memory }, via))
    }

    /// Resolves a transfer's local descriptors, and for a transfer to [`PeerId::SELF`]
    /// its "remote" ones too (files allowed on either side, never on both of a pair),
    /// and records their regions as held by `holder`; says which transport moves the
    /// transfer (for one to [`PeerId::SELF`], decided from what its pairs name). On
    /// error it holds nothing.
    #[inline(always)]
    pub(super) fn hold_sides(
        &self,
        local: &[Desc],
        (allowed, via): (Allowed, Via),
        remote: &[Desc],
        (local_out, own_out): (&mut [Resolved], &mut [Resolved]),
        holder: Holder,
    ) -> Result<Via> {
        let registry = &self.core.shared.registry;
        let pinner = registry.pinner();
        if allowed != Allowed::Anything {
            pinner.hold_all(local, local_out, allowed, holder)?;
            if allowed == Allowed::Device && local_out[..local.len()].iter().any(|r| r.vram) {
                return Ok(via.with_device_memory(true));
            }
            return Ok(via);
        }
        let pairs = pinner.hold_pairs(local, remote, (local_out, own_out), holder)?;
        Via::own(pairs).ok_or_else(|| {
            registry.let_go(holder);
            Error::InvalidDescriptor {
                reason: "a file moves to or from host memory, not to another file or GPU memory",
            }
        })
    }

    /// Starts a prepared transfer. With the `local` transport the bytes move before
    /// `post` returns, and the notification, if any, is queued at the peer after the
    /// last byte landed.
    ///
    /// If the peer's inbox is full the call fails with [`Error::InboxFull`] and the
    /// transfer stays prepared: retry later, or release it.
    pub fn post(&self, handle: Handle) -> Result<()> {
        // RESERVED → POSTED first: from here until the transfer's completion the slot
        // cannot be freed (a concurrent release only detaches it), and `posted` grants
        // reading its context until it is dropped.
        self.usable()?;
        let posted = self.core.ring.start(handle)?;
        let timeout = self.core.ring.timeout_of(handle).unwrap_or(self.timeout);
        let mut sink = |h, o| self.core.complete(h, o);
        let t = posted.context();
        let via = t.via;
        let started = if t.peer == PeerId::SELF.0 {
            self.core
                .transports
                .start(via, xfer(t, handle, None, timeout), &mut sink)
        } else {
            // The peer table's read lock (a shard of it: this thread's own line) is
            // held while the transport starts the transfer, so the peer's link cannot
            // be dropped under it; no reference count is taken, which would be a
            // cache line every posting thread writes. Loading or unloading a peer
            // waits for the posts in progress.
            let peers = self.unpoison(self.peers.read());
            match peers.get(t.peer) {
                Some(peer) => self
                    .core
                    .transports
                    .start(via, xfer(t, handle, Some(&peer.link), timeout), &mut sink),
                None => Err(Error::UnknownPeer { peer: t.peer }),
            }
        };
        // Only a transfer still in flight has a deadline (one that ended in `start`
        // costs no clock read); armed before anything can end it.
        if let (Ok(Started::Handed(_) | Started::Job), Some(timeout)) = (&started, timeout) {
            self.core
                .ring
                .arm_deadline(handle, self.core.now().saturating_add(timeout));
        }
        // The transfer is handed on (to its transport, or to the exit function) only
        // after this: until then nothing can complete it and reclaim the context.
        let handle = posted.hand_on();
        match started {
            Ok(Started::Ended(outcome)) => {
                sink(handle, outcome);
                Ok(())
            }
            Ok(Started::Handed(word)) => {
                self.core.transports.launch(via, handle, word, &mut sink);
                Ok(())
            }
            Ok(Started::Job) => {
                self.core.transports.queue_job(handle);
                Ok(())
            }
            Err(e) => {
                // Nothing moved and no transport kept it: prepared again (or, if
                // released meanwhile, cancelled and freed).
                let registry = &self.core.shared.registry;
                self.core.ring.unpost_with(handle, |t| reclaim(registry, t));
                Err(e)
            }
        }
    }

    /// Drives the transports that need it (the fabric's data progress is manual with
    /// the providers ringxfer uses): reads completions and ends finished transfers.
    /// Returns the number of completion entries handled. `status`, `wait` and
    /// `pop_notification` call it too; call it yourself when the engine only serves
    /// others (or configure `FabricConfig::progress_thread`). Never allocates.
    pub fn progress(&self) -> usize {
        self.core.progress()
    }

    /// Where a transfer is (after driving progress once). One in flight past its
    /// deadline reads `Failed(FailCode::TIMEOUT)` from then on.
    pub fn status(&self, handle: Handle) -> Result<Status> {
        self.core.progress();
        self.core.status(handle)
    }

    /// Chooses the deadline of one prepared (not yet posted) transfer: once posted
    /// it may stay in flight for `timeout` (`None`: for ever) instead of
    /// [`Config::deadline`](crate::Config::deadline). A zero timeout fails the
    /// transfer with `TIMEOUT` at the first look after posting, unless it ended in
    /// `post`. A deadline shorter than the engine's is the caller's budget for this
    /// transfer: passing it says nothing of the peer (the fabric declares a peer
    /// lost only past the engine's deadline).
    pub fn set_deadline(&self, handle: Handle, timeout: Option<Duration>) -> Result<()> {
        self.core.ring.set_timeout(handle, timeout.map(timeout_nanos))
    }

    /// Waits until the transfer ends or `timeout` passes ([`Error::Timeout`]; the
    /// transfer goes on), driving progress meanwhile. Spins for
    /// [`Config::wait_spin`](crate::Config::wait_spin), then yields until
    /// [`Config::wait_yield`](crate::Config::wait_yield), then sleeps in growing
    /// steps (up to 0.5 ms), so a long wait does not hold a core — except where
    /// transfers end only under progress (the fabric with no progress thread): there
    /// it keeps driving progress, yielding between looks, and holds at most one core.
    pub fn wait(&self, handle: Handle, timeout: Duration) -> Result<Status> {
        // A file transfer still queued runs here, on the waiting thread (a released
        // handle's is left to the workers: the status check refuses it first).
        self.core.ring.status(handle)?;
        if let Some((job, cancelled)) = self.core.transports.steal_job(handle) {
            self.core.run_job(job, cancelled);
            // Ended here (unless released meanwhile by another thread: then the status
            // check below refuses the handle).
            let status = self.core.ring.status(handle)?;
            if status.is_terminal() {
                return Ok(status);
            }
        }
        // A quick transfer ends at the first look, without a clock read.
        let found = self.look_until(timeout, || {
            let status = self.core.status(handle)?;
            Ok(status.is_terminal().then_some(status))
        })?;
        match found {
            Some(status) => Ok(status),
            None => Err(Error::Timeout { handle }),
        }
    }

    /// Cancels a transfer. One not yet posted ends CANCELLED at once
    /// ([`CancelResult::Cancelled`]). One in flight is asked of its transport:
    /// - a queued file transfer, or one to the sim, ends CANCELLED at the next
    ///   progress ([`CancelResult::InFlight`]); a file transfer already running and a
    ///   GPU copy cannot be recalled: they end with their own outcome (`InFlight` too);
    /// - a fabric transfer cannot be recalled either (no provider ringxfer uses can
    ///   cancel an RMA operation), but it is abandoned: it reads
    ///   `Failed(FailCode::CANCELLED)` at once, its notification is not sent, and its
    ///   slot stays held until the operations let go ([`CancelResult::Abandoned`]).
    pub fn cancel(&self, handle: Handle) -> Result<CancelResult> {
        let result = self.core.ring.cancel(handle)?;
        if result == CancelResult::InFlight && self.core.transports.cancel(handle) == Recall::Abandon {
            return Ok(match self.core.ring.expire(handle, FailCode::CANCELLED) {
                true => CancelResult::Abandoned,
                // It ended (or its deadline passed) meanwhile.
                false => CancelResult::AlreadyComplete,
            });
        }
        Ok(result)
    }

    /// Gives the handle up. An ended or never-posted transfer frees its slot and
    /// lets go of its regions now; one in flight is detached and freed by its completion.
    pub fn release(&self, handle: Handle) -> Result<Released> {
        let registry = &self.core.shared.registry;
        self.core.ring.release_with(handle, |t| reclaim(registry, t))
    }

    /// Sends a notification on its own (it still takes a slot, so it has a generation
    /// and the peer can tell a duplicate from a new one).
    pub fn notify(&self, peer: PeerId, payload: &[u8]) -> Result<()> {
        let h = self.prepare(Op::Write, &[], peer, &[], Some(payload))?;
        let posted = self.post(h);
        self.release(h)?;
        posted
    }

    /// Pops the oldest notification into `buf` (which must hold `max_notif_bytes`).
    pub fn pop_notification(&self, buf: &mut [u8]) -> Result<Option<Notification>> {
        self.core.progress();
        self.core.shared.inbox.pop(buf)
    }
}
