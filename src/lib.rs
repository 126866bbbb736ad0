//! ringxfer: a transfer engine for disaggregated LLM inference that cannot leak and
//! never allocates on the hot path.
//!
//! ringxfer moves KV-cache blocks between processes and machines (DRAM, GPU memory,
//! files). Every transfer lives in one slot of a fixed, preallocated ring and is named
//! by a [`Handle`](ring::Handle) that carries the slot's generation: a transfer takes a
//! slot without allocating, every path that ends it (success, error, cancel, timeout,
//! peer loss) returns the slot through one function, and a stale or late completion is
//! recognised by its generation and rejected rather than matched to a newer transfer.
//!
//! # Layers
//!
//! - [`ring`]: the slot ring — handles, the lock-free free list, the state machine.
//!   Everything above is built on it.
//! - [`Error`]: the one error type, with messages a user can act on.
//!
//! The engine, memory registration, wire formats and transports (local, libfabric,
//! CUDA, file) build on the ring; see the README for what is implemented today.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

mod error;
pub mod ring;

pub use error::{Error, Result};

/// The README's examples compile and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
