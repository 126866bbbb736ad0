//! Transports. Each moves the bytes of posted transfers and reports how they ended;
//! none frees a slot itself: the engine passes its report to the ring's one exit
//! function, `SlotRing::complete`.
//!
//! - [`local`]: engines in the same process, by `memcpy`, and across processes on one
//!   host through shared memory.
//! - [`fabric`]: libfabric RDM endpoints (tcp, shm, verbs, efa, …), loaded at run
//!   time; on when `Config::fabric` is set.
//! - `cuda`: host ↔ GPU and GPU ↔ GPU copies on CUDA streams (cudarc, loaded at run
//!   time), one event per slot; on when `Config::cuda` is set.
//! - [`sim`]: a fault-injecting transport for tests, soaks and fuzzing.
//! - `file`: registered memory to and from registered files, on I/O worker threads.

#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub(crate) mod cuda_config;
#[cfg(feature = "cuda")]
pub(crate) mod cuda_raw;
pub mod fabric;
pub(crate) mod file;
pub mod local;
pub mod sim;

use crate::ring::{Handle, Outcome};

/// Where an asynchronous transport reports a transfer's end: the engine's call of the
/// ring's one exit function, `SlotRing::complete`, which says whether it took it
/// (false: a duplicate or stale completion, refused).
pub(crate) type Sink<'a> = &'a mut dyn FnMut(Handle, Outcome) -> bool;
