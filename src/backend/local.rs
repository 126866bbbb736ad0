//! The `local` transport: engines in one process, reached through a process-wide
//! directory, moving bytes with `memcpy`.
//!
//! An engine publishes its shared half (registry and notification inbox) in the
//! directory at construction and withdraws it when dropped. A peer whose metadata names
//! this process is looked up there at `load_peer` (control path). A transfer's remote
//! descriptors are resolved against the peer's own registry at post time, under its
//! read lock, so a region the peer deregistered (or an engine that was dropped) fails
//! the transfer instead of being written after it is gone.

use std::sync::{Arc, Mutex, Weak};

use crate::Op;
use crate::engine::Shared;
use crate::mem::Resolved;

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

/// Moves the bytes of one transfer between resolved local and remote pieces.
///
/// # Safety
/// Every `Resolved` lies inside a registration that stays registered for the whole
/// call (local ones pinned by the transfer, remote ones under the peer registry's read
/// lock), and `local[i].len == remote[i].len` for every `i`.
pub(crate) unsafe fn copy(op: Op, local: &[Resolved], remote: &[Resolved]) {
    for (l, r) in local.iter().zip(remote) {
        debug_assert_eq!(l.len, r.len);
        let (src, dst) = match op {
            Op::Write => (l.addr, r.addr),
            Op::Read => (r.addr, l.addr),
        };
        // SAFETY: both ranges are inside live registrations (the caller's promise);
        // `copy` (memmove) is used because a process may register overlapping memory
        // in two engines and move it onto itself.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, l.len) };
    }
}
