//! A second "host" for tests: a network namespace joined to this one by a veth pair,
//! each end with its own address on a /24 of its own, torn down when dropped. Needs
//! root and `ip` (iproute2); [`Netns::create`] skips the calling test (see
//! `skip.rs`, included before this as `skip`) where they are missing. Shared by
//! `tests/fabric.rs` and `tests/etcd.rs`.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::process::Command;

use crate::skip;

/// A network namespace and the veth pair into it.
pub struct Netns {
    name: String,
    /// This namespace's end of the pair.
    pub ip_here: String,
    /// The other namespace's end.
    pub ip_there: String,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).status().is_ok_and(|s| s.success())
}

impl Netns {
    /// Creates the namespace `rx<tag><pid>` and its link, or skips the calling test
    /// (`None`) where it cannot (not root, no iproute2) unless
    /// `RINGXFER_REQUIRE_NETNS=1` makes that a failure.
    pub fn create(tag: &str) -> Option<Netns> {
        let name = format!("rx{tag}{}", std::process::id());
        if !ip(&["netns", "add", &name]) {
            skip::skip(
                skip::REQUIRE_NETNS,
                "cannot create a network namespace (`ip netns add` failed)",
                "run as root with iproute2 installed",
            );
            return None;
        }
        // A subnet of its own per process and tag, so tests running at once differ.
        let subnet = 16 + (std::process::id() + tag.bytes().map(u32::from).sum::<u32>()) % 200;
        let ns = Netns {
            ip_here: format!("10.{subnet}.7.1"),
            ip_there: format!("10.{subnet}.7.2"),
            name,
        };
        let (here, there) = (format!("{}a", ns.name), format!("{}b", ns.name));
        let name = ns.name.as_str();
        for args in [
            vec!["link", "add", &here, "type", "veth", "peer", "name", &there],
            vec!["link", "set", &there, "netns", name],
            vec!["addr", "add", &format!("{}/24", ns.ip_here), "dev", &here],
            vec!["link", "set", &here, "up"],
            vec![
                "netns",
                "exec",
                name,
                "ip",
                "addr",
                "add",
                &format!("{}/24", ns.ip_there),
                "dev",
                &there,
            ],
            vec!["netns", "exec", name, "ip", "link", "set", &there, "up"],
            vec!["netns", "exec", name, "ip", "link", "set", "lo", "up"],
        ] {
            assert!(ip(&args), "ip {args:?} failed");
        }
        Some(ns)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{}a", self.name)])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}
