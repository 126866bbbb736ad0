//! Loud skips for tests that need what a machine may lack (libfabric, a GPU, root for
//! network namespaces, a C++ compiler and CMake). Such a test prints one line,
//!
//! ```text
//! SKIPPED: <why>; <how to enable it>; RINGXFER_REQUIRE_<X>=1 makes this a failure [test <name>]
//! ```
//!
//! and passes, so `cargo test --workspace` passes on a fresh machine with nothing but
//! Rust; where the matching `RINGXFER_REQUIRE_*` variable is set (CI sets
//! `RINGXFER_REQUIRE_FABRIC`, `RINGXFER_REQUIRE_NETNS` and `RINGXFER_REQUIRE_TOOLS` after installing what they
//! need, GPU runners `RINGXFER_REQUIRE_GPU`), the skip is a failure instead.
//!
//! The line is written straight to the process's stderr, past the test harness's
//! output capture, so a plain `cargo test` shows it among the results (and a test
//! that re-runs its binary as a child repeats the child's lines with
//! [`forward_skips`]).
//!
//! Shared by the test binaries of both packages (`ffi/tests` include it by path).

#![allow(dead_code)]

use std::io::Write;

use ringxfer::{Config, Engine, Error};

/// Set: a test that would skip for want of libfabric (or a provider) fails.
pub const REQUIRE_FABRIC: &str = "RINGXFER_REQUIRE_FABRIC";
/// Set: a test that would skip for want of a GPU fails.
pub const REQUIRE_GPU: &str = "RINGXFER_REQUIRE_GPU";
/// Set: a test that would skip for want of a network namespace fails.
pub const REQUIRE_NETNS: &str = "RINGXFER_REQUIRE_NETNS";
/// Set: a test that would skip for want of a build tool (a C++ compiler, CMake,
/// pkg-config) fails.
pub const REQUIRE_TOOLS: &str = "RINGXFER_REQUIRE_TOOLS";

/// What every skip line starts with.
pub const MARK: &str = "SKIPPED: ";

/// Skips the calling test (the caller returns right after): prints the skip line, or
/// panics with it when `require` is set.
pub fn skip(require: &str, why: &str, how: &str) {
    if std::env::var_os(require).is_some() {
        panic!("{require} is set, so this test fails instead of skipping: {why}; {how}");
    }
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    let line = format!("{MARK}{why}; {how}; {require}=1 makes this a failure [test {test}]");
    // One write of the whole line, to the real stderr (eprintln! would be captured).
    let _ = std::io::stderr().lock().write_all(format!("{line}\n").as_bytes());
}

/// Whether every program in `tools` runs (`<tool> --version`); if one does not, the
/// calling test is skipped (the caller returns on `false`).
pub fn have_tools(tools: &[&str]) -> bool {
    let runs = |tool: &&str| {
        std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let missing: Vec<&str> = tools.iter().filter(|t| !runs(t)).copied().collect();
    if missing.is_empty() {
        return true;
    }
    skip(
        REQUIRE_TOOLS,
        &format!("{} not found", missing.join(", ")),
        "install them (Debian: apt-get install g++ cmake pkg-config binutils)",
    );
    false
}

/// The fabric tests' skip: libfabric cannot be loaded, or has no usable provider.
pub fn skip_fabric(reason: &str) {
    // The library's reason ends with its own install hint; the skip line gives one.
    let reason = reason.split("; install").next().unwrap_or(reason);
    let why = if reason.starts_with("cannot load") {
        format!("libfabric not found ({reason})")
    } else {
        format!("libfabric unusable ({reason})")
    };
    skip(
        REQUIRE_FABRIC,
        &why,
        "install libfabric1 or set RINGXFER_LIBFABRIC to its path",
    );
}

/// `Engine::new(config)` for a config with the fabric transport, or `None` after
/// [`skip_fabric`] when libfabric is unavailable (the caller returns). Any other
/// error panics.
pub fn fabric_engine(config: Config) -> Option<Engine> {
    match Engine::new(config) {
        Ok(e) => Some(e),
        Err(Error::FabricUnavailable { reason }) => {
            skip_fabric(&reason);
            None
        }
        Err(e) => panic!("fabric engine: {e}"),
    }
}

/// Repeats on this process's stderr the skip lines a child process printed (its
/// captured stderr); returns how many.
pub fn forward_skips(child_stderr: &str) -> usize {
    let lines: Vec<&str> = child_stderr.lines().filter(|l| l.contains(MARK)).collect();
    let mut err = std::io::stderr().lock();
    for line in &lines {
        let _ = err.write_all(format!("{line} (in a child process)\n").as_bytes());
    }
    lines.len()
}
