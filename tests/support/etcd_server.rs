//! An etcd server of a test's own (Debian's `etcd-server`): its own data directory
//! and loopback ports, killed and removed when dropped. Shared by `tests/etcd.rs`
//! and `ffi/tests/cluster.rs` (included by path, after `skip.rs` as `skip`).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringxfer::cluster::{Cluster, EtcdConfig};
use ringxfer::{Config, Engine};

use crate::skip;

/// Set: a test that would skip for want of an `etcd` binary fails.
pub const REQUIRE_ETCD: &str = "RINGXFER_REQUIRE_ETCD";
/// The lease of the tests' engines (etcd's minimum, about).
pub const TTL: Duration = Duration::from_secs(2);
/// The longest a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// An etcd server of the test's own, on loopback ports, with its own data directory.
pub struct Etcd {
    dir: PathBuf,
    pub client_url: String,
    peer_url: String,
    child: Option<Child>,
}

fn free_port(host: &str) -> u16 {
    TcpListener::bind((host, 0)).unwrap().local_addr().unwrap().port()
}

impl Etcd {
    /// Starts one on loopback, or skips the test (`None`) where there is no `etcd`.
    pub fn start() -> Option<Etcd> {
        Etcd::start_at("127.0.0.1")
    }

    /// Starts one listening on `host` (an address of this host's), or skips the test.
    pub fn start_at(host: &str) -> Option<Etcd> {
        if Command::new("etcd").arg("--version").output().is_err() {
            skip::skip(
                REQUIRE_ETCD,
                "etcd not found",
                "install an etcd server (Debian: apt-get install etcd-server)",
            );
            return None;
        }
        let dir = std::env::temp_dir().join(format!("ringxfer-etcd-{}-{}", std::process::id(), free_port(host)));
        let mut e = Etcd {
            dir,
            client_url: format!("http://{host}:{}", free_port(host)),
            peer_url: format!("http://{host}:{}", free_port(host)),
            child: None,
        };
        e.run();
        Some(e)
    }

    pub fn run(&mut self) {
        let log = std::fs::File::create(self.dir.with_extension("log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "default", "--data-dir"])
            .arg(&self.dir)
            .args([
                "--listen-client-urls",
                &self.client_url,
                "--advertise-client-urls",
                &self.client_url,
            ])
            .args([
                "--listen-peer-urls",
                &self.peer_url,
                "--initial-advertise-peer-urls",
                &self.peer_url,
            ])
            .args(["--initial-cluster", &format!("default={}", self.peer_url)])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        // Up once it answers a client.
        let start = Instant::now();
        let config = self.config("/probe");
        loop {
            let engine = Arc::new(Engine::new(Config::default()).unwrap());
            if Cluster::join(engine, config.clone()).is_ok() {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "etcd did not start (see {:?})",
                self.dir.with_extension("log")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn config(&self, namespace: &str) -> EtcdConfig {
        EtcdConfig {
            endpoints: vec![self.client_url.clone()],
            namespace: namespace.into(),
            ttl: TTL,
            timeout: Duration::from_secs(1),
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("log"));
    }
}
