//! `EventFd`: a Linux eventfd a caller can `epoll`, raised and cleared without
//! blocking. The engine's completion queue raises it when completions wait.

// Unsafe code: the eventfd system calls (the crate root denies it elsewhere).
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::error::{Error, Result};

/// A non-blocking, close-on-exec eventfd, closed when dropped.
#[derive(Debug)]
pub(crate) struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new eventfd, not readable.
    pub(crate) fn new() -> Result<EventFd> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::io(
                "creating the completion eventfd",
                &std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: a descriptor just returned to us and owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EventFd { fd })
    }

    /// The descriptor, readable while raised.
    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Makes the descriptor readable (adds 1 to its counter).
    pub(crate) fn raise(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local array to our own descriptor. A
        // full counter (2^64 − 2 raises unread) fails with EAGAIN and is still readable.
        let _ = unsafe { libc::write(self.fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Makes the descriptor not readable (reads its counter back to 0).
    pub(crate) fn clear(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live local array from our own
        // non-blocking descriptor (EAGAIN when not raised).
        let _ = unsafe { libc::read(self.fd(), count.as_mut_ptr().cast(), count.len()) };
    }
}
