//! Cluster metadata on a real etcd server (cargo feature `etcd`; Debian's
//! `etcd-server`): discovery by name, a duplicate name refused, a corrupted value
//! refused, a peer process restarted under load and then killed, and etcd itself
//! killed and restarted mid-run; on the local transport, and over the fabric with
//! the peer in another network namespace. Each test starts its own etcd (its own data
//! directory and loopback ports) and stops it at the end. Without an `etcd` binary
//! the tests print a SKIPPED line; `RINGXFER_REQUIRE_ETCD=1` (CI) makes that a
//! failure.

#![cfg(feature = "etcd")]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ringxfer::cluster::{Cluster, EtcdConfig};
use ringxfer::fabric::FabricConfig;
use ringxfer::{Config, Desc, Engine, Error, Op, RegionId, Status};

#[path = "support/skip.rs"]
mod skip;

#[path = "support/netns.rs"]
mod netns;
use netns::Netns;

#[path = "support/etcd_server.rs"]
mod etcd_server;
use etcd_server::{Etcd, TTL, WAIT};

fn engine(name: &str) -> Arc<Engine> {
    Arc::new(
        Engine::new(Config {
            name: name.into(),
            capacity: 64,
            ..Config::default()
        })
        .unwrap(),
    )
}

fn write_and_check(a: &Engine, peer: ringxfer::PeerId, src: RegionId, b: &Engine, dst: RegionId, byte: u8) {
    a.write_region(src, 0, &[byte; 4096]).unwrap();
    let h = a
        .prepare(
            Op::Write,
            &[Desc::new(src, 0, 4096)],
            peer,
            &[Desc::new(dst, 0, 4096)],
            None,
        )
        .unwrap();
    a.post(h).unwrap();
    assert_eq!(a.wait(h, WAIT).unwrap(), Status::Done);
    a.release(h).unwrap();
    let mut out = [0u8; 4096];
    b.read_region(dst, 0, &mut out).unwrap();
    assert!(out.iter().all(|&x| x == byte));
}

/// Writes `value` under `key` with etcd's own client (a value no engine wrote).
fn put_raw(etcd: &Etcd, key: &str, value: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([etcd.client_url.as_str()], None)
            .await
            .unwrap();
        c.put(key, value, None).await.unwrap();
    });
}

#[test]
fn discovery_by_name_duplicates_and_corrupted_values() {
    let Some(etcd) = Etcd::start() else { return };
    let ns = "/t-discovery";
    let (a, b) = (engine("a"), engine("b"));
    let src = a.alloc_region(4096).unwrap();
    let dst = b.alloc_region(4096).unwrap();
    let ca = Cluster::join(Arc::clone(&a), etcd.config(ns)).unwrap();
    let cb = Cluster::join(Arc::clone(&b), etcd.config(ns)).unwrap();
    assert_eq!(cb.key(), "/t-discovery/b");
    let mut names = ca.list_peers().unwrap();
    names.sort();
    assert_eq!(names, ["a", "b"]);

    // Found by name, and moving bytes.
    let peer = ca.fetch_peer("b").unwrap();
    assert_eq!(a.peer_name(peer).unwrap(), "b");
    assert_eq!(ca.peer("b").unwrap(), peer);
    write_and_check(&a, peer, src, &b, dst, 7);

    // A region registered later is published (a new version) and reloaded in place.
    let later = b.alloc_region(8192).unwrap();
    let start = Instant::now();
    while ca.stats().reloads == 0 {
        assert!(start.elapsed() < WAIT, "the new registration never reached a");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(ca.peer("b").unwrap(), peer, "a reload keeps the id");
    assert!(cb.stats().republished >= 1);
    write_and_check(&a, peer, src, &b, later, 9);

    // Discovery + load by name: median of 100 on loopback.
    let mut times = Vec::new();
    for _ in 0..100 {
        assert!(ca.forget("b"));
        let t = Instant::now();
        let p = ca.fetch_peer("b").unwrap();
        times.push(t.elapsed());
        assert_eq!(a.peer_name(p).unwrap(), "b");
    }
    times.sort();
    eprintln!("discovery + load by name: median {:?}, max {:?}", times[50], times[99]);

    // A second live engine under a name is refused, typed.
    match Cluster::join(engine("b"), etcd.config(ns)) {
        Err(Error::NameTaken { name, key }) => assert_eq!((name.as_str(), key.as_str()), ("b", "/t-discovery/b")),
        other => panic!("a duplicate name: {other:?}"),
    }
    // The same name in another namespace is another cluster.
    let other = Cluster::join(engine("b"), etcd.config("/t-other")).unwrap();
    drop(other);

    // Foreign and corrupted values are refused for that peer only.
    put_raw(&etcd, "/t-discovery/junk", b"not ringxfer");
    assert!(matches!(ca.fetch_peer("junk"), Err(Error::Metadata(_))));
    let mut value = b"RXE1".to_vec();
    value.extend_from_slice(&1u64.to_le_bytes());
    value.extend_from_slice(&b.local_metadata().unwrap()[..20]);
    put_raw(&etcd, "/t-discovery/cut", &value);
    assert!(matches!(ca.fetch_peer("cut"), Err(Error::Metadata(_))));
    assert!(matches!(ca.fetch_peer("nobody"), Err(Error::MetadataStore { .. })));
    // A followed peer's key overwritten with junk: counted, the peer kept.
    let peer = ca.fetch_peer("b").unwrap();
    put_raw(&etcd, "/t-discovery/b", b"RXE1garbage");
    let start = Instant::now();
    while ca.stats().malformed < 3 {
        assert!(start.elapsed() < WAIT, "{:?}", ca.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    write_and_check(&a, peer, src, &b, dst, 11);
    assert!(ca.connected());
    drop((ca, cb));
    a.check_quiescent().unwrap();
    b.check_quiescent().unwrap();
}

/// The region the peer process serves.
const TARGET_REGION: usize = 16 << 20;

/// An engine over the fabric's tcp provider bound to `node`, or `None` (skipped,
/// loudly) without libfabric. A progress thread where it serves.
fn fabric_engine(name: &str, node: &str, progress_thread: bool) -> Option<Arc<Engine>> {
    skip::fabric_engine(Config {
        name: name.into(),
        capacity: 64,
        fabric: Some(FabricConfig {
            provider: Some("tcp".into()),
            node: Some(node.into()),
            progress_thread,
            ..FabricConfig::default()
        }),
        ..Config::default()
    })
    .map(Arc::new)
}

/// The peer process of the restart tests: registers as "target" under
/// `RINGXFER_ETCD_NS` (retrying while its previous incarnation's lease lives), fills
/// a region with its byte, and serves until killed. With `RINGXFER_TEST_NODE`, over
/// the fabric (tcp) bound to that address, else on the local transport.
#[test]
#[ignore = "the child process of the restart tests; run by them"]
fn child_target() {
    let endpoint = std::env::var("RINGXFER_ETCD_ENDPOINT").unwrap();
    let fill: u8 = std::env::var("RINGXFER_ETCD_FILL").unwrap().parse().unwrap();
    let e = match std::env::var("RINGXFER_TEST_NODE") {
        Ok(node) => fabric_engine("target", &node, true).expect("libfabric, as in the parent"),
        Err(_) => engine("target"),
    };
    let region = e.alloc_region(TARGET_REGION).unwrap();
    e.write_region(region, 0, &vec![fill; TARGET_REGION]).unwrap();
    let config = EtcdConfig {
        endpoints: vec![endpoint],
        namespace: std::env::var("RINGXFER_ETCD_NS").unwrap(),
        ttl: TTL,
        timeout: Duration::from_secs(1),
    };
    let start = Instant::now();
    let cluster = loop {
        match Cluster::join(Arc::clone(&e), config.clone()) {
            Ok(c) => break c,
            Err(Error::NameTaken { .. }) if start.elapsed() < WAIT => std::thread::sleep(Duration::from_millis(100)),
            Err(err) => panic!("join: {err}"),
        }
    };
    println!("READY {}", region.to_raw());
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(cluster);
}

/// Where the peer process runs: on the local transport, or over the fabric bound to
/// `node`, inside `netns` if given.
#[derive(Clone, Copy)]
enum Place<'a> {
    Local,
    Fabric { node: &'a str, netns: Option<&'a Netns> },
}

#[allow(clippy::zombie_processes)] // the caller kills and waits for it
fn spawn_target(etcd: &Etcd, namespace: &str, place: Place, fill: u8) -> (Child, RegionId) {
    let exe = std::env::current_exe().unwrap();
    let mut command = match place {
        Place::Fabric { netns: Some(ns), .. } => ns.command(&exe),
        _ => Command::new(&exe),
    };
    if let Place::Fabric { node, .. } = place {
        command.env("RINGXFER_TEST_NODE", node);
    }
    let mut child = command
        .args([
            "--ignored",
            "--exact",
            "child_target",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RINGXFER_ETCD_ENDPOINT", &etcd.client_url)
        .env("RINGXFER_ETCD_NS", namespace)
        .env("RINGXFER_ETCD_FILL", fill.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the target exited before READY");
        // The harness may have printed "test child_target ... " on the same line.
        if let Some(region) = line.split("READY ").nth(1) {
            return (child, RegionId::from_raw(region.trim().parse().unwrap()));
        }
    }
}

/// Reads `len` bytes of the peer's region and checks they are all `byte`.
fn read_and_check(me: &Engine, peer: ringxfer::PeerId, buf: RegionId, region: RegionId, len: usize, byte: u8) {
    let h = me
        .prepare(
            Op::Read,
            &[Desc::new(buf, 0, len as u64)],
            peer,
            &[Desc::new(region, 0, len as u64)],
            None,
        )
        .unwrap();
    me.post(h).unwrap();
    assert_eq!(me.wait(h, WAIT).unwrap(), Status::Done);
    me.release(h).unwrap();
    let mut out = vec![0u8; len];
    me.read_region(buf, 0, &mut out).unwrap();
    assert!(out.iter().all(|&x| x == byte), "the peer's bytes");
}

/// The second half of the restart tests, for the peer `first` (filled with 0x11)
/// found as "target": READs under load while the peer process is killed and started
/// again (filled with 0x22) — they resume on the new instance within 2 × TTL of its
/// registration, and none reads the old one after the new — then WRITEs of
/// `TARGET_REGION` bytes in flight when the new one is killed: the death noticed
/// within 2 × TTL, every transfer ended (with `in_flight_fail`, some failed: the
/// fabric's were still moving), the ledger at zero.
fn restart_under_load_then_kill(
    in_flight_fail: bool,
    me: &Engine,
    cluster: &Cluster,
    (mut first, region): (Child, RegionId),
    restart: impl FnOnce() -> (Child, RegionId),
) {
    let buf = me.alloc_region(TARGET_REGION).unwrap();
    let peer = cluster.fetch_peer("target").unwrap();
    // Under load: READs of the target's region, by whatever id the name has now.
    let stop = AtomicBool::new(false);
    let (old_reads, new_reads, refused) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    /// Stops the load when the main thread leaves the scope, a failed assertion
    /// included (else the scope would wait for the load forever).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let mut second = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            let mut out = [0u8; 4096];
            while !stop.load(Ordering::Acquire) {
                let Ok(p) = cluster.peer("target") else {
                    refused.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let h = match me.prepare(
                    Op::Read,
                    &[Desc::new(buf, 0, 4096)],
                    p,
                    &[Desc::new(region, 0, 4096)],
                    None,
                ) {
                    Ok(h) => h,
                    Err(Error::PeerLost { .. } | Error::UnknownPeer { .. }) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(e) => panic!("prepare: {e}"),
                };
                // Lost between prepare and post: the transfer stays prepared.
                if let Err(e) = me.post(h) {
                    assert!(matches!(e, Error::PeerLost { .. }), "post: {e}");
                    me.release(h).unwrap();
                    refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let status = me.wait(h, WAIT).unwrap();
                me.release(h).unwrap();
                if status != Status::Done {
                    refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                me.read_region(buf, 0, &mut out).unwrap();
                match out[0] {
                    0x11 => {
                        assert_eq!(
                            new_reads.load(Ordering::Relaxed),
                            0,
                            "the old instance read after the new one"
                        );
                        old_reads.fetch_add(1, Ordering::Relaxed);
                    }
                    0x22 => {
                        new_reads.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("read {other:#x}: neither instance's bytes"),
                }
                assert!(out.iter().all(|&x| x == out[0]), "a torn read");
            }
        });
        // Let some reads happen, then restart the target (kill, start again).
        std::thread::sleep(Duration::from_millis(200));
        first.kill().unwrap();
        first.wait().unwrap();
        eprintln!("first killed after {} reads", old_reads.load(Ordering::Relaxed));
        let (second, region2) = restart();
        eprintln!("second up: {:?}", cluster.stats());
        assert_eq!(region2, region, "the new process hands out the same region id");
        let registered = Instant::now();
        while new_reads.load(Ordering::Relaxed) == 0 {
            assert!(
                registered.elapsed() < 2 * TTL,
                "no read reached the new instance: {:?}",
                cluster.stats()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!(
            "restarted peer transferring again {:?} after it registered",
            registered.elapsed()
        );
        assert_ne!(cluster.peer("target").unwrap(), peer, "a new incarnation, a new id");
        assert_eq!(
            cluster.stats().restarts + cluster.stats().lost,
            2,
            "{:?}",
            cluster.stats()
        );
        stop.store(true, Ordering::Release);
        second
    });
    assert!(old_reads.load(Ordering::Relaxed) > 0 && new_reads.load(Ordering::Relaxed) > 0);

    // Killed with WRITEs in flight: noticed within 2 × TTL, every transfer ended.
    let peer = cluster.peer("target").unwrap();
    let handles: Vec<_> = (0..32)
        .map(|_| {
            let h = me
                .prepare(
                    Op::Write,
                    &[Desc::new(buf, 0, TARGET_REGION as u64)],
                    peer,
                    &[Desc::new(region, 0, TARGET_REGION as u64)],
                    None,
                )
                .unwrap();
            me.post(h).unwrap();
            h
        })
        .collect();
    let killed = Instant::now();
    second.kill().unwrap();
    second.wait().unwrap();
    let (mut done, mut failed) = (0, 0);
    let by = killed + 2 * TTL + Duration::from_millis(500);
    for h in handles {
        match me.wait(h, by.saturating_duration_since(Instant::now())) {
            Ok(Status::Done) => done += 1,
            Ok(Status::Failed(_)) => failed += 1,
            other => panic!(
                "a transfer to the killed peer: {other:?} {:?} after the kill",
                killed.elapsed()
            ),
        }
        me.release(h).unwrap();
    }
    let ended = killed.elapsed();
    while cluster.peer("target").is_ok() {
        assert!(
            killed.elapsed() < 2 * TTL,
            "the killed peer was not noticed: {:?}",
            cluster.stats()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "killed peer noticed after {:?}; of the transfers in flight {done} done, {failed} failed, all ended {ended:?} after the kill",
        killed.elapsed()
    );
    assert!(failed > 0 || !in_flight_fail, "no transfer was in flight at the kill");
    let p = cluster.peer("target");
    assert!(matches!(p, Err(Error::PeerLost { .. })), "{p:?}");
    me.check_quiescent().unwrap();
}

#[test]
fn a_peer_process_restarts_under_load_then_dies() {
    let Some(etcd) = Etcd::start() else { return };
    let ns = "/t-restart";
    let me = engine("initiator");
    let cluster = Cluster::join(Arc::clone(&me), etcd.config(ns)).unwrap();
    let first = spawn_target(&etcd, ns, Place::Local, 0x11);
    restart_under_load_then_kill(false, &me, &cluster, first, || {
        spawn_target(&etcd, ns, Place::Local, 0x22)
    });
    drop(cluster);
}

/// The same over the fabric (tcp), with the peer process on another "host": its own
/// network namespace, reached over a veth pair, and etcd on this side's address. Where
/// no namespace can be made (not root) the peer runs on loopback, said loudly.
/// Before the restart, etcd is killed and started again: transfers between the
/// loaded peers go on, and both re-register.
#[test]
fn fabric_peers_in_network_namespaces() {
    let netns = Netns::create("e");
    let (here, there) = match &netns {
        Some(n) => (n.ip_here.as_str(), n.ip_there.as_str()),
        None => ("127.0.0.1", "127.0.0.1"),
    };
    let Some(me) = fabric_engine("initiator", here, false) else {
        return;
    };
    let Some(mut etcd) = Etcd::start_at(here) else { return };
    let ns = "/t-fabric";
    let place = Place::Fabric {
        node: there,
        netns: netns.as_ref(),
    };
    let cluster = Cluster::join(Arc::clone(&me), etcd.config(ns)).unwrap();
    let (first, region) = spawn_target(&etcd, ns, place, 0x11);

    // Discovered by name, across the namespaces, and moving bytes both ways.
    let t = Instant::now();
    let peer = cluster.fetch_peer("target").unwrap();
    eprintln!("discovery + load over the fabric: {:?}", t.elapsed());
    let buf = me.alloc_region(1 << 20).unwrap();
    read_and_check(&me, peer, buf, region, 1 << 20, 0x11);

    // etcd killed: the loaded peer keeps working on cached metadata.
    etcd.kill();
    let start = Instant::now();
    while cluster.connected() {
        assert!(start.elapsed() < WAIT, "the outage was not noticed");
        std::thread::sleep(Duration::from_millis(10));
    }
    for _ in 0..20 {
        read_and_check(&me, peer, buf, region, 1 << 20, 0x11);
    }
    assert!(matches!(cluster.list_peers(), Err(Error::MetadataStore { .. })));
    // Back: this engine re-registers; the peer is still the same incarnation.
    etcd.run();
    let start = Instant::now();
    while !(cluster.connected() && cluster.stats().registrations == 2) {
        assert!(start.elapsed() < WAIT, "no re-registration: {:?}", cluster.stats());
        std::thread::sleep(Duration::from_millis(20));
    }
    let start = Instant::now();
    while cluster.list_peers().unwrap().len() < 2 {
        assert!(start.elapsed() < WAIT, "the peer did not re-register");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(cluster.fetch_peer("target").unwrap(), peer);
    read_and_check(&me, peer, buf, region, 1 << 20, 0x11);
    me.deregister(buf).unwrap();

    restart_under_load_then_kill(true, &me, &cluster, (first, region), || {
        spawn_target(&etcd, ns, place, 0x22)
    });
    drop(cluster);
}

#[test]
fn etcd_killed_and_restarted_mid_run() {
    let Some(mut etcd) = Etcd::start() else { return };
    let ns = "/t-outage";
    let (a, b) = (engine("a"), engine("b"));
    let src = a.alloc_region(4096).unwrap();
    let dst = b.alloc_region(4096).unwrap();
    let ca = Cluster::join(Arc::clone(&a), etcd.config(ns)).unwrap();
    let cb = Cluster::join(Arc::clone(&b), etcd.config(ns)).unwrap();
    let peer = ca.fetch_peer("b").unwrap();
    write_and_check(&a, peer, src, &b, dst, 1);

    etcd.kill();
    let start = Instant::now();
    while ca.connected() {
        assert!(start.elapsed() < WAIT, "the outage was not noticed");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Loaded peers keep working on cached metadata.
    for byte in 2..50u8 {
        write_and_check(&a, peer, src, &b, dst, byte);
    }
    match ca.list_peers() {
        Err(Error::MetadataStore { endpoints, .. }) => assert_eq!(endpoints, etcd.client_url),
        other => panic!("list_peers during the outage: {other:?}"),
    }
    assert!(matches!(ca.fetch_peer("c"), Err(Error::MetadataStore { .. })));
    assert_eq!(ca.peer("b").unwrap(), peer);

    // Back: both re-register under new leases, and discovery works again.
    etcd.run();
    let start = Instant::now();
    while !(ca.connected() && cb.connected() && ca.stats().registrations == 2 && cb.stats().registrations == 2) {
        assert!(
            start.elapsed() < WAIT,
            "no re-registration: {:?} {:?}",
            ca.stats(),
            cb.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut names = ca.list_peers().unwrap();
    names.sort();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(ca.fetch_peer("b").unwrap(), peer);
    write_and_check(&a, peer, src, &b, dst, 99);
    drop((ca, cb));
    a.check_quiescent().unwrap();
    b.check_quiescent().unwrap();
}
