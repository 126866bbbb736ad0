//! ringxfer: a transfer engine for disaggregated LLM inference that cannot leak and
//! never allocates on the hot path.
//!
//! ringxfer moves KV-cache blocks between processes and machines (DRAM, GPU memory,
//! files). Every transfer lives in one slot of a fixed, preallocated ring and is named
//! by a [`Handle`] that carries the slot's generation: a transfer takes a
//! slot without allocating, every path that ends it (success, error, cancel, timeout,
//! peer loss) returns the slot through one function, and a stale or late completion is
//! recognised by its generation and rejected rather than matched to a newer transfer.
//!
//! # Layers
//!
//! Bottom up; a module imports only from layers below it (`tests/layering.rs`
//! checks), and `docs/design.md` tells the whole design.
//!
//! - `types`: the shared vocabulary — [`Op`], [`PeerId`], [`RegionId`], [`Desc`],
//!   [`Handle`], [`FailCode`], [`Outcome`], [`Status`]. `wire`: formats that cross
//!   between engines (the metadata blob). [`Error`]: the one error type.
//! - [`ring`]: the slot ring — the lock-free free list, the state machine, the job
//!   queue. Everything above is built on it.
//! - `sys`: shared-memory segments and the cross-process registration table.
//! - `mem`: memory registration (knows no transport); `notify`: the notification
//!   inbox and per-sender duplicate table.
//! - `backend`: the transports behind one interface — `local` (memcpy and shared
//!   memory), [`fabric`] (libfabric, loaded at run time), `cuda` (cudarc, loaded at
//!   run time), `file` (I/O workers) and, with the `testing` feature, `sim` (faults
//!   on purpose) — and the one place that dispatches to them.
//! - `peer`: a loaded peer and the link its transport made.
//! - [`Engine`]: configuration, control path and hot path; it names no transport.
//! - [`KvStore`]: string keys to value blocks in registered files, on the engine.
//! - `cluster` (feature `etcd`): engines registered by name in etcd, found, watched.
//!
//! `unsafe` code is denied at the crate root and allowed only in the ring's
//! internals, the transports' system bindings, shared memory and the registry's raw
//! memory.

#![deny(unsafe_code, unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

mod backend;
#[cfg(feature = "etcd")]
pub mod cluster;
mod engine;
mod error;
mod kv;
mod mem;
mod notify;
mod peer;
pub mod ring;
mod shared;
mod sys;
#[cfg(feature = "testing")]
mod testing;
mod types;
pub mod wire;

pub use backend::cuda_config::CudaConfig;
#[cfg(all(feature = "cuda", feature = "testing"))]
pub use backend::cuda_raw::CudaRawLoop;
pub use backend::fabric;
#[cfg(feature = "testing")]
pub use backend::sim::{SimConfig, SimStats};
pub use engine::{
    CLIENT_TIMEOUT, Config, Engine, EngineStats, ListId, MAX_CLIENTS, MetadataServer, Secret, fetch_metadata,
    fetch_metadata_with,
};
pub use error::{Error, Result};
pub use kv::{KvConfig, KvStore};
pub use mem::FileOptions;
pub use notify::{Notification, SenderId};
pub use ring::Completion;
#[cfg(all(feature = "testing", feature = "cuda"))]
pub use testing::fuzz_cuda_export;
pub use types::{
    Blocks, CancelResult, Desc, FailCode, FailSource, Handle, Op, Outcome, PeerId, RegionId, Released, Status,
    TransportId,
};

/// The README's examples compile and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
