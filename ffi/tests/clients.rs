//! Compiles the C and C++ clients in `ffi/tests/{c,cpp}` with `-Wall -Wextra
//! -Wpedantic -Werror` and AddressSanitizer + UndefinedBehaviorSanitizer, links them
//! against the `libringxfer_ffi.so` this test run built (found by its SONAME), runs them, and checks they
//! pass. Also compiles the header alone as C11 and as C++17.
//!
//! ThreadSanitizer is not used: it cannot see the synchronisation inside a Rust library
//! built without `-Zsanitizer=thread` (a nightly flag), so it reports false races on
//! every hand-off through the library's atomics. The threaded C++ client runs under
//! ASan as a stress loop instead.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../../tests/support/skip.rs"]
mod skip;

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A directory holding this test run's `libringxfer_ffi.so` (built into `deps/`, next to
/// this test binary) under both its file name and its SONAME, `libringxfer.so.0`.
fn lib_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(make_lib_dir).clone()
}

fn make_lib_dir() -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let built = deps.join("libringxfer_ffi.so");
    assert!(
        built.exists(),
        "{} not found (run through cargo test -p ringxfer-ffi)",
        built.display()
    );
    let dir = std::env::temp_dir().join(format!("ringxfer-libs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["libringxfer_ffi.so", "libringxfer.so.0"] {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&built, &link).unwrap();
    }
    dir
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (is gcc/g++ installed?)"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

/// Builds `source` with sanitizers and runs it; returns its stdout.
fn build_and_run(compiler: &str, std: &str, source: &str) -> String {
    build_and_run_with(compiler, std, source, &[], &[])
}

/// As `build_and_run`, with arguments and environment for the client.
fn build_and_run_with(compiler: &str, std: &str, source: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let lib = lib_dir();
    let exe = std::env::temp_dir().join(format!(
        "ringxfer-client-{}-{}",
        std::process::id(),
        Path::new(source).file_stem().unwrap().to_string_lossy()
    ));
    run(Command::new(compiler)
        .arg(format!("-std={std}"))
        .args([
            "-Wall",
            "-Wextra",
            "-Wpedantic",
            "-Werror",
            "-g",
            "-fsanitize=address,undefined",
        ])
        .arg("-fno-sanitize-recover=all")
        .arg(format!("-I{}", crate_dir().join("include").display()))
        .arg(crate_dir().join(source))
        .arg(format!("-L{}", lib.display()))
        .arg("-lringxfer_ffi")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-pthread")
        .arg("-o")
        .arg(&exe));
    let stdout = run(Command::new(&exe)
        .args(args)
        .envs(env.iter().copied())
        .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1"));
    let _ = std::fs::remove_file(&exe);
    stdout
}

#[test]
fn the_header_compiles_as_c11_and_cxx17() {
    if !skip::have_tools(&["gcc", "g++"]) {
        return;
    }
    let include = format!("-I{}", crate_dir().join("include").display());
    for (compiler, lang, std, header) in [
        ("gcc", "c", "c11", "ringxfer.h"),
        ("g++", "c++", "c++17", "ringxfer.h"),
        ("g++", "c++", "c++17", "ringxfer.hpp"),
    ] {
        run(Command::new(compiler)
            .args([
                "-x",
                lang,
                &format!("-std={std}"),
                "-Wall",
                "-Wextra",
                "-Wpedantic",
                "-Werror",
                "-fsyntax-only",
            ])
            .arg(&include)
            .arg(crate_dir().join("include").join(header)));
    }
}

#[test]
fn c_client_moves_data_and_notifications() {
    if !skip::have_tools(&["gcc"]) {
        return;
    }
    let out = build_and_run("gcc", "c11", "tests/c/transfer.c");
    assert!(out.contains("112 transfers done, live 0"), "{out}");
}

#[test]
fn c_misuse_suite_returns_documented_statuses() {
    if !skip::have_tools(&["gcc"]) {
        return;
    }
    let out = build_and_run("gcc", "c11", "tests/c/misuse.c");
    assert!(out.contains("every case returned its documented status"), "{out}");
    assert_eq!(out.matches(": ok").count(), 15, "{out}");
}

#[test]
fn cxx_raii_layer_releases_and_moves() {
    if !skip::have_tools(&["g++"]) {
        return;
    }
    let out = build_and_run("g++", "c++17", "tests/cpp/raii.cpp");
    assert!(out.contains("live 0, pins 0"), "{out}");
}

#[test]
fn cxx_four_posters_and_a_poller() {
    if !skip::have_tools(&["g++"]) {
        return;
    }
    let out = build_and_run("g++", "c++17", "tests/cpp/threads.cpp");
    assert!(out.contains("20000 done, 2000 notifications, live 0"), "{out}");
}

#[test]
fn cxx_readme_example_runs() {
    if !skip::have_tools(&["g++"]) {
        return;
    }
    let out = build_and_run("g++", "c++17", "tests/cpp/minimal.cpp");
    assert!(out.contains("minimal.cpp: done"), "{out}");
}

/// The fabric transport through the C API, for real on the tcp and shm providers
/// (libfabric is loaded at run time), and the typed error when libfabric is missing.
/// Where libfabric (or a provider) is unavailable, the real runs are skipped with a
/// `SKIPPED:` line (a failure with `RINGXFER_REQUIRE_FABRIC=1`); the typed error is
/// checked on every machine.
#[test]
fn c_client_over_libfabric() {
    if !skip::have_tools(&["gcc"]) {
        return;
    }
    use ringxfer::fabric::FabricConfig;
    for provider in ["tcp", "shm"] {
        // The same load and provider choice the C client's engines make, in Rust.
        let probe = skip::fabric_engine(ringxfer::Config {
            name: format!("probe-{provider}"),
            fabric: Some(FabricConfig {
                provider: Some(provider.into()),
                ..FabricConfig::default()
            }),
            ..ringxfer::Config::default()
        });
        if probe.is_none() {
            continue;
        }
        drop(probe);
        let out = build_and_run_with("gcc", "c11", "tests/c/fabric.c", &[provider], &[]);
        assert!(out.contains(&format!("fabric {provider}: ok")), "{out}");
    }
    let out = build_and_run_with(
        "gcc",
        "c11",
        "tests/c/fabric.c",
        &["unavailable"],
        &[("RINGXFER_LIBFABRIC", "/nonexistent/libfabric.so.1")],
    );
    assert!(out.contains("fabric unavailable:"), "{out}");
}
