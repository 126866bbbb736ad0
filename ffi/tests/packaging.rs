//! `ffi/install.sh` lays out a prefix that C and C++ builds can use: pkg-config finds
//! it and a C client links and runs; CMake's `find_package(ringxfer)` finds it and a
//! C++ client links and runs.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../../tests/support/skip.rs"]
mod skip;

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where this test run's libraries were built: `deps/`, next to this test binary.
fn lib_dir() -> PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().to_path_buf()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn install_then_build_with_pkg_config_and_cmake() {
    if !skip::have_tools(&["bash", "gcc", "g++", "pkg-config", "cmake", "readelf"]) {
        return;
    }
    let prefix = std::env::temp_dir().join(format!("ringxfer-prefix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&prefix);
    run(Command::new("bash")
        .arg(crate_dir().join("install.sh"))
        .arg("--prefix")
        .arg(&prefix)
        .arg("--from")
        .arg(lib_dir()));
    for f in [
        "lib/libringxfer.so",
        "lib/libringxfer.so.0",
        "lib/libringxfer.a",
        "include/ringxfer.h",
        "include/ringxfer.hpp",
    ] {
        assert!(prefix.join(f).exists(), "{f} not installed");
    }

    // pkg-config: flags, then a C client built with them.
    let pc = prefix.join("lib/pkgconfig");
    let flags = run(Command::new("pkg-config")
        .args(["--cflags", "--libs", "ringxfer"])
        .env("PKG_CONFIG_PATH", &pc));
    assert!(flags.contains("-lringxfer"), "{flags}");
    let exe = prefix.join("transfer_c");
    run(Command::new("gcc")
        .arg("-std=c11")
        .arg(crate_dir().join("tests/c/transfer.c"))
        .args(flags.split_whitespace())
        .arg(format!("-Wl,-rpath,{}", prefix.join("lib").display()))
        .arg("-o")
        .arg(&exe));
    assert!(run(&mut Command::new(&exe)).contains("live 0"));
    // It runs against the installed library, found by its SONAME.
    let needed = run(Command::new("readelf").arg("-d").arg(&exe));
    assert!(needed.contains("libringxfer.so.0"), "{needed}");

    // CMake: find_package(ringxfer) -> ringxfer::ringxfer.
    let build = prefix.join("cmake-build");
    run(Command::new("cmake")
        .arg("-S")
        .arg(crate_dir().join("tests/cmake-consumer"))
        .arg("-B")
        .arg(&build)
        .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
        .arg(format!("-DCMAKE_BUILD_RPATH={}", prefix.join("lib").display())));
    run(Command::new("cmake").arg("--build").arg(&build));
    assert!(run(&mut Command::new(build.join("consumer"))).contains("live 0, pins 0"));
    let _ = std::fs::remove_dir_all(&prefix);
}
