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

// Unsafe code: `pread`/`pwrite` system calls on registered memory (the crate root denies it elsewhere).
#![allow(unsafe_code)]

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::runs::Runs;
use super::{Recall, Sink, Started, Transport, Xfer, absent};
use crate::error::Result;
use crate::mem::Resolved;
use crate::ring::{FailCode, FailSource, Handle, Job, JobQueue, Outcome, Popped};
use crate::types::Op;

/// How long a worker stays off the queue after popping its last entry and finding the
/// job taken by its waiter, the first time. The waiters are running their own
/// transfers then, and a worker popping right behind them only pulls the queue's cache
/// lines away from their next `post` (measured: 64 KiB reads went from about 0.85× to
/// 0.93× the raw `pread` loop).
pub(crate) const QUIET_FIRST: Duration = Duration::from_micros(10);

/// The longest a worker stays off the queue: each further time it finds only taken
/// jobs the time doubles up to this, and a job it runs resets it to [`QUIET_FIRST`]. A
/// transfer posted and not waited for, after a long run of transfers that were, starts
/// up to this much later, plus the kernel's timer slack (the worker sleeps).
const QUIET_MAX: Duration = Duration::from_micros(50);

/// The queue between `post` and the workers, and the per-slot words they share.
pub(crate) struct FileQueue {
    /// Posted file transfers, oldest first; a job is taken once, by a worker or by
    /// the transfer's own waiter (see `steal`).
    jobs: JobQueue,
    /// Per slot: the handle whose cancellation was asked for.
    cancels: Box<[AtomicU64]>,
    /// How long an idle worker keeps looking for work before it sleeps
    /// (`Config::file_worker_poll`).
    poll: Duration,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
}

impl FileQueue {
    pub(crate) fn new(capacity: usize, poll: Duration) -> FileQueue {
        FileQueue {
            jobs: JobQueue::new(capacity),
            cancels: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            poll,
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        }
    }

    /// Hands a posted transfer to the workers.
    #[inline]
    pub(crate) fn submit(&self, handle: Handle) {
        self.jobs.push(handle);
        // Either a worker going to sleep sees the job, or the poster that queued its
        // entry sees the sleeper and wakes it. A push that adds an entry does so with a
        // SeqCst CAS on the queue's tail; this load is SeqCst, and so are a sleeper's
        // increment and its reads of the queue (`next`). In the single order of SeqCst
        // operations, if this load comes before the increment, the tail CAS comes
        // before the sleeper's read of the tail, which then sees the entry. A push that
        // found its slot's entry still queued added none: the poster that added that
        // entry made the same check after its CAS, and whoever pops the entry takes
        // this job (module docs of `JobQueue`). No fence: a SeqCst fence is a locked
        // instruction on every post, where a SeqCst load is a plain `mov` on x86.
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_one();
        }
    }

    /// Bytes it allocated: the queue and the per-slot words.
    pub(crate) fn bytes(&self) -> usize {
        self.jobs.bytes() + std::mem::size_of_val(&*self.cancels)
    }

    /// Asks that a queued transfer end CANCELLED instead of running.
    pub(crate) fn cancel(&self, handle: Handle) {
        if let Some(c) = self.cancels.get(handle.index() as usize) {
            c.store(handle.to_raw(), Ordering::Release);
        }
    }

    /// The next job for a worker, blocking while there is none; `None` at shutdown
    /// once the queue is empty. `quiet` is the worker's own: how long it stays off the
    /// queue the next time it finds only jobs their waiters took (see [`QUIET_MAX`]).
    pub(crate) fn next(&self, quiet: &mut Duration) -> Option<(Job, bool)> {
        loop {
            // Stay awake a little before sleeping: waking a sleeping thread costs tens
            // of microseconds, longer than many a transfer, and transfers come in runs.
            let mut awake_until = Instant::now() + self.poll;
            let backoff = crossbeam_utils::Backoff::new();
            while Instant::now() < awake_until {
                match self.jobs.pop() {
                    Popped::Job(handle) => return Some(self.job(handle, quiet)),
                    // Taken by its waiter already: transfers are still coming, so stay
                    // awake (a sleeping worker costs the next `post` a wake); if it was
                    // the last entry, stay off the queue for a while, longer each time.
                    Popped::Taken => {
                        let now = Instant::now();
                        awake_until = now + self.poll;
                        if !self.poll.is_zero() && self.jobs.is_empty() {
                            // Asleep, not spinning: a spinning worker slowed the
                            // waiters' own transfers (64 KiB writes 0.87× → 0.89× the
                            // raw loop once it slept), and spends a core on nothing.
                            // The kernel's timer slack (50 µs by default) adds to it.
                            // `awake_until` is left as it was: after a long sleep the
                            // worker goes back to polling only if it finds work (and
                            // keeping it polling measured no better).
                            std::thread::sleep(*quiet);
                            *quiet = (*quiet * 2).min(QUIET_MAX);
                        }
                    }
                    Popped::Empty => backoff.snooze(),
                }
            }
            match self.jobs.pop() {
                Popped::Job(handle) => return Some(self.job(handle, quiet)),
                Popped::Taken => continue,
                Popped::Empty => {}
            }
            let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            // SeqCst, as the queue's reads in `is_empty`: pairs with `submit`.
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            if self.jobs.is_empty() {
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

    /// A popped job, and whether its cancellation was asked for. The worker runs it, so
    /// its quiet time starts afresh.
    fn job(&self, handle: Handle, quiet: &mut Duration) -> (Job, bool) {
        *quiet = QUIET_FIRST;
        let cancelled = self.take_cancel(handle.index() as usize, handle.to_raw());
        (Job::taken(handle), cancelled)
    }

    /// Whether the cancellation of the transfer `raw` in slot `index` was asked for
    /// (and clears it). A request left for an older generation never matches a newer
    /// handle, so it need not be cleared: the common, uncancelled case costs a load.
    fn take_cancel(&self, index: usize, raw: u64) -> bool {
        let c = &self.cancels[index];
        c.load(Ordering::Acquire) == raw && c.compare_exchange(raw, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Takes `handle`'s job if it is still queued, for its waiter to run on its own
    /// thread: a transfer waited for right after `post` then costs no hand-off to a
    /// worker and back. `Some((job, cancelled))` if taken (its stale queue entry is skipped).
    #[inline]
    pub(crate) fn steal(&self, handle: Handle) -> Option<(Job, bool)> {
        self.jobs.take(handle).then(|| {
            (
                Job::taken(handle),
                self.take_cancel(handle.index() as usize, handle.to_raw()),
            )
        })
    }

    /// Tells the workers to finish the queue and stop.
    pub(crate) fn shut_down(&self) {
        self.shutdown.store(true, Ordering::Release);
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }
}

/// The file transport: the job queue and how many worker threads the engine runs
/// for it (`Config::file_workers`; the engine owns the threads, which take jobs
/// with [`FileQueue::next`] and run them with [`run`]).
pub(crate) struct Files {
    queue: FileQueue,
    workers: usize,
    /// Testing: jobs wait before their I/O while set (a stalled filesystem).
    #[cfg(feature = "testing")]
    pub(crate) stalled: AtomicBool,
}

impl Files {
    pub(crate) fn new(capacity: usize, workers: usize, poll: Duration) -> Files {
        Files {
            queue: FileQueue::new(capacity, poll),
            workers,
            #[cfg(feature = "testing")]
            stalled: AtomicBool::new(false),
        }
    }

    /// Worker threads the engine runs for it.
    pub(crate) fn workers(&self) -> usize {
        self.workers
    }

    pub(crate) fn next(&self, quiet: &mut Duration) -> Option<(Job, bool)> {
        self.queue.next(quiet)
    }

    #[inline]
    pub(crate) fn steal(&self, handle: Handle) -> Option<(Job, bool)> {
        self.queue.steal(handle)
    }

    pub(crate) fn shut_down(&self) {
        self.queue.shut_down();
    }

    /// Queues a posted transfer for the workers (or its waiter).
    #[inline(always)]
    pub(crate) fn submit(&self, handle: Handle) {
        self.queue.submit(handle);
    }
}

impl Transport for Files {
    #[inline(always)]
    fn start(&self, _xfer: Xfer<'_>, _sink: Sink<'_>) -> Result<Started> {
        if self.workers == 0 {
            return Err(absent(super::Via::File));
        }
        Ok(Started::Job)
    }

    /// A queued job ends CANCELLED when taken; a running one completes.
    fn cancel(&self, handle: Handle) -> Recall {
        self.queue.cancel(handle);
        Recall::Asked
    }

    fn bytes(&self) -> usize {
        self.queue.bytes()
    }
}

/// Moves the bytes of one transfer whose pieces may be files; says how it ended.
///
/// Consecutive pieces that move the same way between memory and one file at
/// contiguous file offsets go in one `preadv`/`pwritev` (up to [`IOV_GROUP`] pieces):
/// a batch of blocks written to or read from one stretch of a file costs one system
/// call, not one per block.
#[inline]
pub(crate) fn run(op: Op, runs: Runs<'_>, other: &[Resolved]) -> Outcome {
    // One piece between memory and an unmapped file (the common case): its one call,
    // without the gathering.
    if let Some(only) = runs.single()
        && let Ok(Piece::Io(io)) = piece(op, only, &other[0])
    {
        let mut iov = [libc::iovec {
            iov_base: io.memory as *mut libc::c_void,
            iov_len: io.len,
        }];
        return outcome(all(io.direction, io.fd, &mut iov, io.offset).and_then(|()| durable(io.fd, io.sync)));
    }
    let mut group = Group::new();
    for run in runs {
        let (l, r) = (run.local, run.other(&other[run.pair]));
        let result = match piece(op, &l, &r) {
            Ok(Piece::Copy { src, dst }) => group.flush().and_then(|()| {
                // SAFETY: both ranges are held registrations of `len` bytes: memory,
                // or a mapped file's mapping (which lives as long as the registration).
                unsafe { std::ptr::copy(src.addr as *const u8, dst.addr as *mut u8, src.len) };
                dst.fd.map_or(Ok(()), |fd| durable(fd, dst.sync))
            }),
            Ok(Piece::Io(io)) => group.add(io),
            Err(code) => Err(code),
        };
        if let Err(code) = result {
            return Outcome::Failed(code);
        }
    }
    outcome(group.flush())
}

/// What one descriptor pair asks of the file transport.
enum Piece<'a> {
    /// Memory (or a mapped file's mapping) to memory: a copy, then `fdatasync` of the
    /// destination's file if it asks.
    Copy { src: &'a Resolved, dst: &'a Resolved },
    /// A system call between memory and an unmapped file.
    Io(Io),
}

/// One piece of a `pread`/`pwrite`: `len` bytes between memory at `memory` and
/// `offset` in `fd`, made durable after if `sync`.
#[derive(Clone, Copy)]
struct Io {
    direction: Direction,
    fd: i32,
    memory: usize,
    len: usize,
    offset: u64,
    sync: bool,
}

/// Classifies the pair (`l`, `r`) of a transfer `op`. A read-only mapping written is
/// `EBADF` (as a `pwrite` into a read-only descriptor gives), file to file a transport
/// failure (refused at prepare already).
#[inline(always)]
fn piece<'a>(op: Op, l: &'a Resolved, r: &'a Resolved) -> Result<Piece<'a>, FailCode> {
    let (src, dst) = match op {
        Op::Write => (l, r),
        Op::Read => (r, l),
    };
    // A read-only mapping must not be written (it would fault).
    if dst.mapped && !dst.writable {
        return Err(FailCode::new(FailSource::Errno, libc::EBADF as u32));
    }
    // A mapped file is memory to copy to or from.
    let fd = |r: &Resolved| if r.mapped { None } else { r.fd };
    Ok(match (fd(src), fd(dst)) {
        (None, None) => Piece::Copy { src, dst },
        (None, Some(fd)) => Piece::Io(Io {
            direction: Direction::ToFile,
            fd,
            memory: src.addr,
            len: src.len,
            offset: dst.addr as u64,
            sync: dst.sync,
        }),
        (Some(fd), None) => Piece::Io(Io {
            direction: Direction::FromFile,
            fd,
            memory: dst.addr,
            len: dst.len,
            offset: src.addr as u64,
            sync: false,
        }),
        (Some(_), Some(_)) => return Err(FailCode::TRANSPORT),
    })
}

/// `fdatasync` of `fd` if `sync`.
fn durable(fd: i32, sync: bool) -> Result<(), FailCode> {
    // SAFETY: a held file registration's descriptor, open until it is deregistered.
    if sync && unsafe { libc::fdatasync(fd) } != 0 {
        return Err(errno());
    }
    Ok(())
}

fn outcome(moved: Result<(), FailCode>) -> Outcome {
    match moved {
        Ok(()) => Outcome::Done,
        Err(code) => Outcome::Failed(code),
    }
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

/// Pieces one vectored call moves at most (the `iovec` array lives on the stack).
pub(crate) const IOV_GROUP: usize = 64;

/// Pieces gathered for one `preadv`/`pwritev`: same file, same way, contiguous in the
/// file.
struct Group {
    /// The pieces; the first `len` are written. Left uninitialised at first, so a
    /// one-piece transfer does not pay for zeroing 1 KiB.
    iov: [MaybeUninit<libc::iovec>; IOV_GROUP],
    len: usize,
    direction: Direction,
    fd: i32,
    /// File offset of the first piece, and of the byte after the last.
    start: u64,
    end: u64,
    sync: bool,
}

impl Group {
    fn new() -> Group {
        Group {
            iov: [const { MaybeUninit::uninit() }; IOV_GROUP],
            len: 0,
            direction: Direction::ToFile,
            fd: -1,
            start: 0,
            end: 0,
            sync: false,
        }
    }

    /// Adds a piece, first moving the pieces gathered so far if this one does not
    /// continue them.
    fn add(&mut self, io: Io) -> Result<(), FailCode> {
        let continues = self.len > 0
            && self.len < IOV_GROUP
            && self.direction == io.direction
            && self.fd == io.fd
            && self.end == io.offset;
        if !continues {
            self.flush()?;
            (self.direction, self.fd, self.start, self.end) = (io.direction, io.fd, io.offset, io.offset);
        }
        self.iov[self.len].write(libc::iovec {
            iov_base: io.memory as *mut libc::c_void,
            iov_len: io.len,
        });
        self.len += 1;
        self.end += io.len as u64;
        self.sync |= io.sync;
        Ok(())
    }

    /// Moves the pieces gathered (one `pread`/`pwrite` for one piece, else one
    /// `preadv`/`pwritev`, continued while short), then `fdatasync` if a piece asked.
    fn flush(&mut self) -> Result<(), FailCode> {
        let (n, sync) = (std::mem::take(&mut self.len), std::mem::take(&mut self.sync));
        if n == 0 {
            return Ok(());
        }
        let written = &mut self.iov[..n];
        // SAFETY: `add` wrote the first `len` (now `n`) entries; MaybeUninit<T> has
        // T's layout.
        let iov = unsafe { &mut *(written as *mut [MaybeUninit<libc::iovec>] as *mut [libc::iovec]) };
        all(self.direction, self.fd, iov, self.start)?;
        durable(self.fd, sync)
    }
}

// The raw system calls in `all` pass a 64-bit offset in one argument.
static_assertions::const_assert!(std::mem::size_of::<libc::c_long>() == 8);

/// Repeats `pwrite`/`pread` (one piece) or `pwritev`/`preadv` (several) until every
/// byte of `iov` moved, from file offset `offset` on: short transfers are continued,
/// EINTR retried; a read that reaches the end of the file is `END_OF_FILE`.
#[inline]
fn all(direction: Direction, fd: i32, mut iov: &mut [libc::iovec], mut offset: u64) -> Result<(), FailCode> {
    while let Some(first) = iov.first() {
        if first.iov_len == 0 {
            iov = &mut iov[1..];
            continue;
        }
        let (fd, at) = (libc::c_long::from(fd), offset as libc::c_long);
        // The kernel's calls, not glibc's wrappers: those are cancellation points, and
        // in a multithreaded process glibc (2.36 here) brackets each such system call
        // with two atomic updates of the thread's cancellation state, which no Rust
        // thread uses (10–20 ns a call here). Every argument is passed as a full
        // register (`c_long`); `preadv`/`pwritev` take the offset as low and high halves.
        //
        // SAFETY: every iovec is a range of a held memory registration (or a held
        // mapping), written only for a read; the fd is a held file registration's,
        // open until it is deregistered. `iov` holds at most IOV_GROUP (< IOV_MAX).
        let n = unsafe {
            match (direction, iov.len()) {
                (Direction::ToFile, 1) => libc::syscall(libc::SYS_pwrite64, fd, first.iov_base, first.iov_len, at),
                (Direction::FromFile, 1) => libc::syscall(libc::SYS_pread64, fd, first.iov_base, first.iov_len, at),
                (Direction::ToFile, count) => libc::syscall(
                    libc::SYS_pwritev,
                    fd,
                    iov.as_ptr(),
                    count as libc::c_long,
                    at,
                    (offset >> 32) as libc::c_long,
                ),
                (Direction::FromFile, count) => libc::syscall(
                    libc::SYS_preadv,
                    fd,
                    iov.as_ptr(),
                    count as libc::c_long,
                    at,
                    (offset >> 32) as libc::c_long,
                ),
            }
        };
        match n {
            n if n > 0 => {
                offset += n as u64;
                iov = advance(iov, n as usize);
            }
            0 if direction == Direction::FromFile => return Err(FailCode::END_OF_FILE),
            0 => return Err(FailCode::new(FailSource::Errno, libc::EIO as u32)),
            _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            _ => return Err(errno()),
        }
    }
    Ok(())
}

/// `iov` with its first `n` bytes gone (a partly moved piece is shortened in place).
fn advance(mut iov: &mut [libc::iovec], mut n: usize) -> &mut [libc::iovec] {
    while n > 0 {
        let Some(first) = iov.first_mut() else { break };
        if n < first.iov_len {
            first.iov_base = (first.iov_base as usize + n) as *mut libc::c_void;
            first.iov_len -= n;
            break;
        }
        n -= first.iov_len;
        iov = &mut iov[1..];
    }
    iov
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_drops_whole_pieces_and_shortens_a_partial_one() {
        let mut bufs = [[0u8; 10]; 3];
        let mut iov: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let base2 = iov[1].iov_base as usize;
        let rest = advance(&mut iov, 13);
        assert_eq!(rest.len(), 2);
        assert_eq!((rest[0].iov_base as usize, rest[0].iov_len), (base2 + 3, 7));
        let rest = advance(rest, 7);
        assert_eq!((rest.len(), rest[0].iov_len), (1, 10));
        assert!(advance(rest, 10).is_empty());
    }

    /// A poster cycling through the slots of a small ring (each slot reused only once
    /// its job ran), taking most of its jobs back as a waiter would and leaving the
    /// rest to two workers: every job runs exactly once, and none waits long in the
    /// queue while the workers sleep.
    #[test]
    fn stolen_and_left_jobs_all_run_once_and_promptly() {
        // Polling workers, and workers that sleep as soon as they are idle.
        for poll in [Duration::from_micros(100), Duration::ZERO] {
            stolen_and_left(poll);
        }
    }

    fn stolen_and_left(poll: Duration) {
        const SLOTS: usize = 64;
        const ROUNDS: u64 = 100_000;
        let q = FileQueue::new(SLOTS, poll);
        let runs: Vec<AtomicU64> = (0..SLOTS).map(|_| AtomicU64::new(0)).collect();
        let work = || {
            let until = Instant::now() + Duration::from_micros(2);
            while Instant::now() < until {}
        };
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    let mut quiet = QUIET_FIRST;
                    while let Some((job, _)) = q.next(&mut quiet) {
                        let h = job.handle();
                        work();
                        let prev = runs[h.index() as usize].swap(h.generation(), Ordering::AcqRel);
                        assert!(prev < h.generation(), "job {h:?} ran twice");
                    }
                });
            }
            // Stops the workers however this thread leaves, so a failed assertion
            // fails the test instead of leaving it waiting on sleeping workers.
            struct ShutDown<'a>(&'a FileQueue);
            impl Drop for ShutDown<'_> {
                fn drop(&mut self) {
                    self.0.shut_down();
                }
            }
            let _shut_down = ShutDown(&q);
            let mut generation = [0u64; SLOTS];
            for round in 0..ROUNDS {
                let index = (round % SLOTS as u64) as usize;
                // The slot's previous job must have run before the slot is reused.
                let since = Instant::now();
                while runs[index].load(Ordering::Acquire) != generation[index] {
                    assert!(
                        since.elapsed() < Duration::from_secs(2),
                        "round {round}: slot {index}'s job {} never ran (queued {}, sleepers {})",
                        generation[index],
                        q.jobs.len(),
                        q.sleepers.load(Ordering::Relaxed)
                    );
                    std::hint::spin_loop();
                }
                generation[index] += 1;
                let h = Handle::new(index as u32, generation[index]).unwrap();
                q.submit(h);
                if round % 7 != 5 && q.steal(h).is_some() {
                    work();
                    runs[index].store(generation[index], Ordering::Release);
                }
                if round % 7 == 5 {
                    // Left to the workers, with no other post to wake them.
                    let since = Instant::now();
                    while runs[index].load(Ordering::Acquire) != generation[index] {
                        assert!(
                            since.elapsed() < Duration::from_secs(1),
                            "round {round}: a job left to the workers never ran (queued {}, sleepers {})",
                            q.jobs.len(),
                            q.sleepers.load(Ordering::Relaxed)
                        );
                        std::hint::spin_loop();
                    }
                }
            }
        });
    }
}
