//! The atomics the ring is built from, switched to loom's under `cfg(loom)`.
//!
//! The ring's algorithm code imports its atomics and its spin hint from here and
//! nowhere else, so `RUSTFLAGS="--cfg loom"` swaps every one of them for loom's
//! model-checked versions (the crossbeam pattern). The ring needs no `UnsafeCell`
//! for its protocol: free-list cells carry their value in an atomic, and slot
//! contexts are reached only through the state machine (see `slot_ring`).

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

/// Tells the processor (or loom's scheduler) that this thread is waiting on another.
#[inline]
pub(crate) fn spin_loop() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// The calling thread's home: a number handed out in order to threads as they first
/// ask (0, 1, 2, …), kept for the thread's life. Sharded structures pick the
/// thread's own cell with it, so threads that ask first never share one. A
/// thread-local with a constant initialiser and no destructor: asking allocates
/// nothing, ever.
#[cfg(not(loom))]
#[inline]
pub(crate) fn home() -> usize {
    use core::cell::Cell;
    use core::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    std::thread_local! {
        static HOME: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    match HOME.get() {
        usize::MAX => {
            let next = NEXT.fetch_add(1, Ordering::Relaxed) & (usize::MAX >> 1);
            HOME.set(next);
            next
        }
        known => known,
    }
}

/// Under loom: the same, with loom's statics and thread-locals (reset for every
/// execution the model explores).
#[cfg(loom)]
pub(crate) fn home() -> usize {
    use core::cell::Cell;
    loom::lazy_static! {
        static ref NEXT: loom::sync::atomic::AtomicUsize = loom::sync::atomic::AtomicUsize::new(0);
    }
    loom::thread_local! {
        static HOME: Cell<usize> = Cell::new(usize::MAX);
    }
    HOME.with(|home| match home.get() {
        usize::MAX => {
            let next = NEXT.fetch_add(1, Ordering::Relaxed);
            home.set(next);
            next
        }
        known => known,
    })
}

/// An `UnsafeCell` with loom's closure API, so loom can check that a slot's context
/// is never touched by two threads at once.
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> UnsafeCell<T> {
        UnsafeCell(core::cell::UnsafeCell::new(value))
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;
