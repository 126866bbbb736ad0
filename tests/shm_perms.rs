//! Shared-memory segments hold KV-cache bytes: created for their owner only (0600),
//! unreadable by another user, and refused when opened with wider permissions or
//! another owner.
//!
//! The second-user checks need root (to run a command as `nobody` and to hand a
//! segment to it); without root they print `SKIPPED:` and pass (CI runs as root).

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use ringxfer::{Config, Engine, Error};

#[path = "support/child.rs"]
mod child;

/// `nobody` on Debian and most Linux systems.
const NOBODY: u32 = 65534;

fn shm_dir() -> PathBuf {
    std::env::var_os("RINGXFER_SHM_DIR").map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from)
}

/// This process's segments: their names start with the engine id, whose high 32
/// bits are the pid.
fn my_segments(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("ringxfer-{pid:08x}");
    std::fs::read_dir(shm_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn segments_are_for_their_owner_only() {
    let e = Engine::new(Config {
        name: "perms".into(),
        ..Config::default()
    })
    .unwrap();
    let region = e.alloc_region(1 << 16).unwrap();
    e.write_region(region, 0, b"another tenant's KV cache").unwrap();
    let segments = my_segments(std::process::id());
    assert!(
        segments.len() >= 3,
        "inbox, registration table and a region: {segments:?}"
    );
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    for path in &segments {
        let meta = std::fs::metadata(path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600, "{}", path.display());
        assert_eq!(meta.uid(), me);
    }
    if !is_root() {
        eprintln!("SKIPPED: another user reading the segments (needs root to run as nobody)");
        return;
    }
    for path in &segments {
        let out = Command::new("cat").arg(path).uid(NOBODY).gid(NOBODY).output().unwrap();
        assert!(!out.status.success(), "nobody read {}", path.display());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The target: an engine with a region, its metadata served; runs until stdin closes.
#[test]
#[ignore = "the child process of a_peer_segment_open_to_others_is_refused"]
fn perms_child() {
    let e = Engine::new(Config {
        name: "perms-target".into(),
        ..Config::default()
    })
    .unwrap();
    let _region = e.alloc_region(1 << 16).unwrap();
    let server = e.serve_metadata("127.0.0.1:0").unwrap();
    println!("ADDR {} {}", server.local_addr(), std::process::id());
    std::io::stdout().flush().unwrap();
    let mut sink = String::new();
    let _ = std::io::stdin().read_line(&mut sink);
}

#[test]
fn a_peer_segment_open_to_others_is_refused() {
    let (mut target, input, mut out) = child::spawn_test("perms_child");
    let said = child::read_tagged(&mut out, "ADDR ");
    let mut parts = said.split_whitespace();
    let (addr, pid) = (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().parse::<u32>().unwrap(),
    );
    let segments = my_segments(pid);
    assert!(!segments.is_empty());
    let e = Engine::new(Config {
        name: "perms-initiator".into(),
        ..Config::default()
    })
    .unwrap();

    let set_mode = |mode: u32| {
        for path in &segments {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    };
    set_mode(0o644);
    match e.fetch_peer(addr.as_str()) {
        Err(Error::Io { kind, message, .. }) => {
            assert_eq!(kind, std::io::ErrorKind::PermissionDenied);
            assert!(message.contains("mode 644"), "{message}");
        }
        other => panic!("a world-readable segment was opened: {other:?}"),
    }
    assert_eq!(e.stats().peers, 0, "nothing loaded");
    set_mode(0o600);
    let peer = e.fetch_peer(addr.as_str()).expect("the same segments, owner-only");
    e.unload_peer(peer).unwrap();

    if is_root() {
        // Another owner: refused even though root could open it.
        let path = &segments[0];
        std::os::unix::fs::chown(path, Some(NOBODY), None).unwrap();
        match e.fetch_peer(addr.as_str()) {
            Err(Error::Io { kind, message, .. }) => {
                assert_eq!(kind, std::io::ErrorKind::PermissionDenied);
                assert!(message.contains("belongs to uid 65534"), "{message}");
            }
            other => panic!("another user's segment was opened: {other:?}"),
        }
        std::os::unix::fs::chown(path, Some(0), None).unwrap();
    } else {
        eprintln!("SKIPPED: a segment of another owner (needs root to chown)");
    }
    drop(input);
    target.wait().unwrap();
    e.check_quiescent().unwrap();
}
