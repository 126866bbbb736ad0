//! The engine's completion queue: [`Engine::report_completion`],
//! [`Engine::poll_completions`], [`Engine::wait_any`] and [`Engine::completion_fd`].
//!
//! The queue itself is the ring's (`ring::Completion`): fed by the slot state
//! machine, so every way a transfer ends — a transport's completion, a deadline,
//! a lost peer, a cancel, shutdown — reports it, once. This file adds what the
//! engine owns: an eventfd the queue raises (made at `Engine::new`, written only
//! once a caller asked for it, so a caller that only polls pays no system call),
//! and waiting.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{Engine, Transfer};
use crate::error::{Error, Result};
use crate::ring::{Completion, Handle, Signal, SlotRing};
use crate::sys::eventfd::EventFd;

/// The eventfd of the completion queue, and whether a caller holds it.
#[derive(Debug)]
pub(crate) struct CompletionSignal {
    fd: EventFd,
    /// Set once `completion_fd` gave the descriptor out; until then nothing is
    /// written to it.
    wanted: AtomicBool,
}

/// The ring's view of the signal.
struct Raiser(Arc<CompletionSignal>);

impl Signal for Raiser {
    fn raise(&self) {
        if self.0.wanted.load(Ordering::Acquire) {
            self.0.fd.raise();
        }
    }

    fn clear(&self) {
        if self.0.wanted.load(Ordering::Acquire) {
            self.0.fd.clear();
        }
    }
}

/// Gives the ring a completion queue of `entries` entries and its eventfd (none
/// for 0).
pub(super) fn attach(
    ring: SlotRing<Transfer>,
    entries: usize,
) -> Result<(SlotRing<Transfer>, Option<Arc<CompletionSignal>>)> {
    if entries == 0 {
        return Ok((ring, None));
    }
    let signal = Arc::new(CompletionSignal {
        fd: EventFd::new()?,
        wanted: AtomicBool::new(false),
    });
    let raiser = Box::new(Raiser(Arc::clone(&signal)));
    Ok((ring.with_completions(entries, Some(raiser)), Some(signal)))
}

impl Engine {
    /// Asks for the end of the prepared transfer `handle` in the completion queue,
    /// with the caller's `tag`: once it ends — done, failed (a deadline, a lost peer
    /// and shutdown included), or cancelled — a [`Completion`] waits for
    /// [`poll_completions`](Engine::poll_completions), exactly once. Call it
    /// between `prepare` and `post`; again, to change the tag.
    ///
    /// The queue's entry is taken now: a full queue is
    /// [`Error::CompletionQueueFull`] here, before
    /// anything is posted (back-pressure), never a completion dropped later. A
    /// transfer released before it ends gives its entry back unreported. Transfers
    /// not asked about cost nothing more than before.
    #[inline]
    pub fn report_completion(&self, handle: Handle, tag: u64) -> Result<()> {
        self.core.ring.report_completion(handle, tag)
    }

    /// Drives progress once, then moves up to `out.len()` completions into `out`, in
    /// the order the transfers ended; how many. Each handle is still the caller's:
    /// release it (its status stays readable until then).
    #[inline]
    pub fn poll_completions(&self, out: &mut [Completion]) -> usize {
        self.core.progress();
        self.core.ring.poll_completions(out)
    }

    /// Waits up to `timeout` until a completion can be polled; true if one can.
    /// It drives progress while it waits, as [`wait`](Engine::wait) does (see there
    /// for what it costs in CPU).
    pub fn wait_any(&self, timeout: Duration) -> Result<bool> {
        let ready = || Ok((self.core.ring.completions_ready() > 0).then_some(()));
        Ok(self.look_until(timeout, ready)?.is_some())
    }

    /// A Linux eventfd that is readable while completions wait to be polled, for a
    /// serving binary to `epoll` with its sockets; then call
    /// [`poll_completions`](Engine::poll_completions), which makes it unreadable
    /// again when it drains the queue. The engine owns the descriptor (do not close
    /// it); it is valid until the engine is dropped. Nothing is written to it
    /// until this is first called; the first call makes it readable once, so a
    /// completion already waiting is not missed. Without a completion queue
    /// (`Config::completion_queue` 0): `Unsupported`.
    pub fn completion_fd(&self) -> Result<RawFd> {
        let Some(signal) = &self.core.completion_signal else {
            return Err(Error::InvalidConfig {
                field: "completion_queue",
                reason: "is 0: the engine has no completion queue, so no completion eventfd",
            });
        };
        if !signal.wanted.swap(true, Ordering::AcqRel) {
            // Reports before now wrote nothing: one wake-up, which the first poll
            // clears, puts the descriptor in step with the queue.
            signal.fd.raise();
        }
        Ok(signal.fd.fd())
    }
}
