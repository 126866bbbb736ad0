//! The C ABI of ringxfer.
//!
//! This crate builds `libringxfer_ffi.so` and `libringxfer_ffi.a` (installed as
//! `libringxfer`, see `ffi/install.sh`); `include/ringxfer.h` is generated from it by
//! cbindgen and `include/ringxfer.hpp` wraps it for C++17.
//!
//! Conventions, as in rustls-ffi:
//! - every fallible function returns an [`rx_status`] and writes its outputs only on
//!   success; the calling thread's last failure is described by [`rx_last_error`];
//! - engines are opaque pointers (`rx_engine*`) made by [`rx_engine_new`] and freed by
//!   [`rx_engine_free`] (NULL is a no-op); handles, regions and lists are `uint64_t`;
//! - every buffer is a pointer and a length; a NULL pointer with length 0 is an empty
//!   buffer, with a non-zero length it is `RX_INVALID_ARGUMENT`;
//! - enum values coming from C are taken as integers and validated;
//! - no Rust allocation is ever handed to C, and every entry point runs inside
//!   `catch_unwind`: a panic returns `RX_PANIC` instead of unwinding into C.
//!
//! The hot-path functions (`rx_prepare`, `rx_post`, `rx_post_list`, `rx_get_status`,
//! `rx_wait`, `rx_cancel`, `rx_release`, `rx_notify`, `rx_pop_notification`,
//! `rx_progress`) never allocate, on success or on failure.
//!
//! One module per domain, each holding its entry points and the C types they use:
//! `library` (version, status text, last error, handle parts), `config`, `engine`,
//! `memory`, `peers` (metadata and peers), `transfers` (with prepared lists),
//! `notifications`, `progress` and `stats`; `status` maps errors to `rx_status`, and
//! `boundary` holds what every entry point shares (the panic guard, the unwrapping
//! macros, the pointer and buffer checks).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)] // the header's doc comments state each contract

// cbindgen reads this file's items, then each module in the order declared here, and
// writes constants and functions to `include/ringxfer.h` in that reading order: keep
// the modules in the header's order (a blank line between them stops rustfmt from
// sorting them).
#[macro_use]
mod boundary;

mod status;

mod library;

mod config;

mod engine;

mod memory;

mod peers;

mod transfers;

mod notifications;

mod progress;

mod completions;

mod stats;

mod cluster;

pub use cluster::{
    rx_cluster, rx_cluster_fetch_peer, rx_cluster_free, rx_cluster_join, rx_cluster_peer, rx_etcd_config,
};
pub use completions::{rx_completion, rx_completion_fd, rx_poll_completions, rx_report_completion, rx_wait_any};
pub use config::{
    RX_CUDA_ENABLE, RX_CUDA_NO_BATCH, RX_CUDA_NO_PIN_HOST, RX_CUDA_VMM, RX_FABRIC_BLOCKING, RX_FABRIC_ENABLE,
    RX_FABRIC_PROGRESS_THREAD, rx_config, rx_config_default,
};
#[cfg(feature = "testing")]
pub use engine::engine_from;
pub use engine::{rx_engine, rx_engine_free, rx_engine_new};
pub use library::{rx_handle_generation, rx_handle_index, rx_last_error, rx_status_str, rx_version};
pub use memory::{
    RX_FILE_CREATE, RX_FILE_SYNC, RX_FILE_WRITABLE, RX_PEER_SELF, rx_alloc_region, rx_alloc_vram, rx_deregister,
    rx_read_region, rx_register_dram, rx_register_file, rx_register_vram, rx_write_region,
};
pub use notifications::{rx_notification, rx_notify, rx_pop_notification};
pub use peers::{
    rx_fetch_peer, rx_load_peer, rx_local_metadata, rx_metadata_server, rx_metadata_server_addr,
    rx_metadata_server_free, rx_serve_metadata, rx_unload_peer,
};
pub use progress::rx_progress;
pub use stats::{rx_check_quiescent, rx_engine_stats, rx_metrics, rx_stats};
pub use status::rx_status;
pub use transfers::{
    rx_blocks, rx_cancel, rx_cancel_result, rx_desc, rx_fail_source, rx_get_status, rx_op, rx_post, rx_post_list,
    rx_post_list_indices, rx_prepare, rx_prepare_blocks, rx_prepare_list, rx_release, rx_release_list, rx_set_deadline,
    rx_wait, rx_xfer_state, rx_xfer_status,
};
