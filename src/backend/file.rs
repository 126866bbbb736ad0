//! The `file` transport: transfers between registered memory and registered files,
//! run by a fixed pool of I/O worker threads created with the engine.
//!
//! A file is opened once, when it is registered, and its descriptor lives in the
//! registration (closed at deregistration or engine drop, never per transfer). `post`
//! puts the transfer's slot index on a bounded lock-free queue (sized to the ring, so
//! it cannot overflow) and returns; a worker takes it, reads the transfer's context,
//! moves the bytes with `pread`/`pwrite` (continuing short transfers, retrying EINTR)
//! and ends the transfer through the ring's one exit function. Any I/O error ends it
//! FAILED with the errno; reading past the end of a file ends it FAILED
//! (`END_OF_FILE`). A cancel of a queued transfer ends it CANCELLED before any I/O.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Condvar, Mutex};

use crate::Op;
use crate::mem::Resolved;
use crate::ring::{FailCode, FailSource, FreeList, Handle, Outcome};

/// How long an idle worker keeps looking for work before it sleeps.
const SPIN_BEFORE_SLEEP: std::time::Duration = std::time::Duration::from_micros(100);

/// The queue between `post` and the workers, and the per-slot words they share.
pub(crate) struct FileQueue {
    /// Slot indices of posted file transfers, oldest first.
    queue: FreeList,
    /// Per slot: the handle of the file transfer posted in it and not yet taken (written
    /// before its index is queued); whoever takes the job (a worker, or the transfer's
    /// own waiter, see `steal`) swaps it to 0, so a job runs once.
    handles: Box<[AtomicU64]>,
    /// Per slot: the handle whose cancellation was asked for.
    cancels: Box<[AtomicU64]>,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
}

impl FileQueue {
    pub(crate) fn new(capacity: usize) -> FileQueue {
        FileQueue {
            // Room for a stolen job's stale entry besides a new one per slot.
            queue: FreeList::with_capacity(capacity * 2),
            handles: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            cancels: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        }
    }

    /// Hands a posted transfer to the workers.
    pub(crate) fn submit(&self, handle: Handle) {
        let index = handle.index();
        self.handles[index as usize].store(handle.to_raw(), Ordering::Release);
        // Room is guaranteed: one entry per slot, and a slot is queued at most once.
        while !self.queue.push(index) {
            std::hint::spin_loop();
        }
        // Pairs with the fence in `next`: either the sleeper sees the job, or we see
        // the sleeper and wake it.
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::Relaxed) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_one();
        }
    }

    /// Bytes it allocated: the queue and the per-slot words.
    pub(crate) fn bytes(&self) -> usize {
        self.queue.capacity() * 16 + std::mem::size_of_val(&*self.handles) + std::mem::size_of_val(&*self.cancels)
    }

    /// Asks that a queued transfer end CANCELLED instead of running.
    pub(crate) fn cancel(&self, handle: Handle) {
        if let Some(c) = self.cancels.get(handle.index() as usize) {
            c.store(handle.to_raw(), Ordering::Release);
        }
    }

    /// The next job for a worker, blocking while there is none; `None` at shutdown
    /// once the queue is empty.
    pub(crate) fn next(&self) -> Option<(Handle, bool)> {
        loop {
            // Stay awake a little before sleeping: waking a sleeping thread costs tens
            // of microseconds, longer than many a transfer, and transfers come in runs.
            let awake_until = std::time::Instant::now() + SPIN_BEFORE_SLEEP;
            let backoff = crossbeam_utils::Backoff::new();
            while std::time::Instant::now() < awake_until {
                if let Some(index) = self.queue.pop() {
                    match self.job(index) {
                        Some(job) => return Some(job),
                        None => continue, // taken by its waiter already
                    }
                }
                backoff.snooze();
            }
            if let Some(index) = self.queue.pop() {
                if let Some(job) = self.job(index) {
                    return Some(job);
                }
                continue;
            }
            let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.sleepers.fetch_add(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if self.queue.is_empty() {
                if self.shutdown.load(Ordering::Acquire) {
                    self.sleepers.fetch_sub(1, Ordering::Relaxed);
                    return None;
                }
                drop(self.wake.wait(guard).unwrap_or_else(|e| e.into_inner()));
            } else {
                drop(guard);
            }
            self.sleepers.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Takes the job queued for slot `index`, if nobody took it yet.
    fn job(&self, index: u32) -> Option<(Handle, bool)> {
        let raw = self.handles[index as usize].swap(0, Ordering::AcqRel);
        if raw == 0 {
            return None;
        }
        let handle = Handle::from_raw(raw);
        let cancelled = self.cancels[index as usize].swap(0, Ordering::AcqRel) == raw;
        Some((handle, cancelled))
    }

    /// Takes `handle`'s job if it is still queued, for its waiter to run on its own
    /// thread: a transfer waited for right after `post` then costs no hand-off to a
    /// worker and back. `Some(cancelled)` if taken (its stale queue entry is skipped).
    pub(crate) fn steal(&self, handle: Handle) -> Option<bool> {
        let index = handle.index() as usize;
        let slot = self.handles.get(index)?;
        slot.compare_exchange(handle.to_raw(), 0, Ordering::AcqRel, Ordering::Relaxed)
            .ok()?;
        Some(self.cancels[index].swap(0, Ordering::AcqRel) == handle.to_raw())
    }

    /// Tells the workers to finish the queue and stop.
    pub(crate) fn shut_down(&self) {
        self.shutdown.store(true, Ordering::Release);
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }
}

/// Moves the bytes of one transfer whose pieces may be files; says how it ended.
pub(crate) fn run(op: Op, local: &[Resolved], remote: &[Resolved]) -> Outcome {
    for (l, r) in local.iter().zip(remote) {
        let (src, dst) = match op {
            Op::Write => (l, r),
            Op::Read => (r, l),
        };
        // A read-only mapping must not be written (it would fault): the same EBADF a
        // pwrite into a read-only descriptor gives.
        if dst.mapped && !dst.writable {
            return Outcome::Failed(FailCode::new(FailSource::Errno, libc::EBADF as u32));
        }
        // A mapped file is memory to copy to or from (its writes then synced if asked).
        let fd = |r: &Resolved| if r.mapped { None } else { r.fd };
        let result = match (fd(src), fd(dst)) {
            // SAFETY: both ranges are pinned registrations of `len` bytes: memory, or
            // a mapped file's mapping (which lives as long as the registration).
            (None, None) => unsafe {
                std::ptr::copy(src.addr as *const u8, dst.addr as *mut u8, src.len);
                match dst.fd {
                    // SAFETY: a pinned file registration's descriptor.
                    Some(f) if dst.sync && libc::fdatasync(f) != 0 => Err(errno()),
                    _ => Ok(()),
                }
            },
            (None, Some(fd)) => write_all(fd, src.addr, src.len, dst.addr as u64, dst.sync),
            (Some(fd), None) => read_all(fd, dst.addr, dst.len, src.addr as u64),
            (Some(_), Some(_)) => return Outcome::Failed(FailCode::TRANSPORT),
        };
        if let Err(code) = result {
            return Outcome::Failed(code);
        }
    }
    Outcome::Done
}

fn errno() -> FailCode {
    let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
    FailCode::new(FailSource::Errno, e as u32)
}

/// Which way a file system call moves bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToFile,
    FromFile,
}

/// `pwrite` until all `len` bytes from memory at `addr` are in the file at `offset`.
fn write_all(fd: i32, addr: usize, len: usize, offset: u64, sync: bool) -> Result<(), FailCode> {
    all(Direction::ToFile, fd, addr, len, offset)?;
    // SAFETY: a pinned file registration's descriptor, open until it is deregistered.
    if sync && unsafe { libc::fdatasync(fd) } != 0 {
        return Err(errno());
    }
    Ok(())
}

/// `pread` until all `len` bytes of the file at `offset` are in memory at `addr`.
fn read_all(fd: i32, addr: usize, len: usize, offset: u64) -> Result<(), FailCode> {
    all(Direction::FromFile, fd, addr, len, offset)
}

/// Repeats `pwrite`/`pread` until `len` bytes moved: short transfers are continued,
/// EINTR retried; a read that reaches the end of the file is `END_OF_FILE`.
fn all(direction: Direction, fd: i32, addr: usize, len: usize, offset: u64) -> Result<(), FailCode> {
    let mut done = 0;
    while done < len {
        let (buf, rest, at) = (addr + done, len - done, (offset + done as u64) as libc::off_t);
        // SAFETY: [addr, addr + len) is a pinned memory registration (or a pinned
        // mapping), written only for a read; the fd is a pinned file registration's,
        // open until it is deregistered.
        let n = unsafe {
            match direction {
                Direction::ToFile => libc::pwrite(fd, buf as *const libc::c_void, rest, at),
                Direction::FromFile => libc::pread(fd, buf as *mut libc::c_void, rest, at),
            }
        };
        match n {
            n if n > 0 => done += n as usize,
            0 if direction == Direction::FromFile => return Err(FailCode::END_OF_FILE),
            0 => return Err(FailCode::new(FailSource::Errno, libc::EIO as u32)),
            _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            _ => return Err(errno()),
        }
    }
    Ok(())
}
