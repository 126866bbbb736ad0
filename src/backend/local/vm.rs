//! Copies to and from another process's memory (`process_vm_writev`/`readv`) for
//! many runs at once: a transfer's runs into memory its peer registered itself are
//! gathered into `iovec` arrays on the stack and moved up to [`BATCH`] per system
//! call, where a KV transfer of scattered pages made one call per page.
//!
//! Each run's region is pinned in the peer's registration table when it is gathered
//! and unpinned once its call returned (or when the batch is dropped unflushed, on an
//! error path), so the owner cannot deregister and free the memory under a copy.

// Unsafe code: `process_vm_readv`/`writev` (the crate root denies it elsewhere).
#![allow(unsafe_code)]

use crate::ring::PinLane;
use crate::sys::regtable::RegTable;
use crate::types::Op;

/// Runs per system call (the kernel takes up to `IOV_MAX`, 1024).
pub(super) const BATCH: usize = 64;

const EMPTY: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

/// Runs gathered for one call: each side's `iovec`s and the entries they pinned.
pub(super) struct VmBatch<'a> {
    op: Op,
    pid: u32,
    regs: &'a RegTable,
    lane: PinLane,
    local: [libc::iovec; BATCH],
    remote: [libc::iovec; BATCH],
    entries: [usize; BATCH],
    n: usize,
}

impl<'a> VmBatch<'a> {
    pub(super) fn new(op: Op, pid: u32, regs: &'a RegTable, lane: PinLane) -> VmBatch<'a> {
        VmBatch {
            op,
            pid,
            regs,
            lane,
            local: [EMPTY; BATCH],
            remote: [EMPTY; BATCH],
            entries: [0; BATCH],
            n: 0,
        }
    }

    /// Gathers a run of `len` bytes between `local` (held by the transfer) and
    /// `remote` in the peer, whose region `entry` the caller pinned (the batch unpins
    /// it); moves the batch when it is full. The errno of a failed call.
    pub(super) fn push(&mut self, local: usize, remote: usize, len: usize, entry: usize) -> Result<(), i32> {
        let i = self.n;
        self.local[i] = libc::iovec {
            iov_base: local as *mut libc::c_void,
            iov_len: len,
        };
        self.remote[i] = libc::iovec {
            iov_base: remote as *mut libc::c_void,
            iov_len: len,
        };
        self.entries[i] = entry;
        self.n += 1;
        if self.n == BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Moves the gathered runs and unpins their regions.
    pub(super) fn flush(&mut self) -> Result<(), i32> {
        let n = std::mem::take(&mut self.n);
        if n == 0 {
            return Ok(());
        }
        let moved = self.move_all(n);
        for &entry in &self.entries[..n] {
            self.regs.unpin(self.lane, entry);
        }
        moved
    }

    /// One call for the `n` runs; where the kernel moved less (it stops at an
    /// address it cannot reach, or early on a signal), the rest run by single calls.
    fn move_all(&self, n: usize) -> Result<(), i32> {
        let mut done = match self.call(&self.local[..n], &self.remote[..n]) {
            Ok(bytes) => bytes,
            Err(libc::EINTR) => 0,
            Err(errno) => return Err(errno),
        };
        for i in 0..n {
            let len = self.local[i].iov_len;
            if done >= len {
                done -= len;
                continue;
            }
            let mut at = std::mem::take(&mut done);
            while at < len {
                let (l, r) = (self.local[i], self.remote[i]);
                let piece = |v: libc::iovec| libc::iovec {
                    iov_base: (v.iov_base as usize + at) as *mut libc::c_void,
                    iov_len: len - at,
                };
                match self.call(&[piece(l)], &[piece(r)]) {
                    Ok(0) => return Err(libc::EIO),
                    Ok(bytes) => at += bytes,
                    Err(libc::EINTR) => {}
                    Err(errno) => return Err(errno),
                }
            }
        }
        Ok(())
    }

    /// `process_vm_writev` (WRITE) or `process_vm_readv` (READ): bytes moved.
    fn call(&self, local: &[libc::iovec], remote: &[libc::iovec]) -> Result<usize, i32> {
        let (pid, nl, nr) = (
            self.pid as libc::pid_t,
            local.len() as libc::c_ulong,
            remote.len() as libc::c_ulong,
        );
        // SAFETY: every local iovec lies in a region held by the transfer; the kernel
        // checks the remote ones against the peer's address space and fails rather
        // than fault.
        let n = unsafe {
            match self.op {
                Op::Write => libc::process_vm_writev(pid, local.as_ptr(), nl, remote.as_ptr(), nr, 0),
                Op::Read => libc::process_vm_readv(pid, local.as_ptr(), nl, remote.as_ptr(), nr, 0),
            }
        };
        match n {
            n if n >= 0 => Ok(n as usize),
            _ => Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)),
        }
    }
}

impl Drop for VmBatch<'_> {
    /// A batch left unflushed (its transfer failed on another run) unpins what it
    /// gathered.
    fn drop(&mut self) {
        for &entry in &self.entries[..self.n] {
            self.regs.unpin(self.lane, entry);
        }
    }
}
