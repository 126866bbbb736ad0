//! The engine's transfer lifecycle with the `local` transport, one test per path.

use std::time::Duration;

use ringxfer::wire::metadata::{BackendInfo, BackendKind, MemKind, Metadata, RegionInfo};
use ringxfer::{CancelResult, Config, Desc, Engine, Error, FailCode, Op, RegionId, Released, Status};

const WAIT: Duration = Duration::from_secs(5);

fn engine(name: &str) -> Engine {
    Engine::new(Config {
        name: name.into(),
        capacity: 16,
        ..Config::default()
    })
    .unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Two engines, a region in each, the second loaded as the first's peer.
fn connected(len: usize) -> (Engine, Engine, RegionId, RegionId, ringxfer::PeerId) {
    let (a, b) = (engine("a"), engine("b"));
    let src = a.alloc_region(len).unwrap();
    let dst = b.alloc_region(len).unwrap();
    let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    (a, b, src, dst, peer)
}

/// Prepares a WRITE of `len` bytes from the start of `src` to the start of `dst`.
fn write(
    a: &Engine,
    peer: ringxfer::PeerId,
    src: RegionId,
    dst: RegionId,
    len: u64,
    notif: Option<&[u8]>,
) -> ringxfer::Handle {
    a.prepare(
        Op::Write,
        &[Desc::new(src, 0, len)],
        peer,
        &[Desc::new(dst, 0, len)],
        notif,
    )
    .unwrap()
}

/// Asserts the engine holds nothing: no live slot, no pin.
fn assert_quiescent(e: &Engine) {
    let s = e.stats();
    assert_eq!((s.ring.live, s.pins), (0, 0), "{s:?}");
    assert_eq!(s.ring.acquired, s.ring.freed, "{s:?}");
}

#[test]
fn write_then_read_back_moves_the_bytes() {
    let (a, b) = (engine("a"), engine("b"));
    let (src, back) = (a.alloc_region(64 << 10).unwrap(), a.alloc_region(64 << 10).unwrap());
    let dst = b.alloc_region(64 << 10).unwrap();
    let data = pattern(64 << 10, 7);
    a.write_region(src, 0, &data).unwrap();
    let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    assert_eq!(a.peer_name(peer).unwrap(), "b");

    let all = |r| [Desc::new(r, 0, 64 << 10)];
    let w = a.prepare(Op::Write, &all(src), peer, &all(dst), None).unwrap();
    assert_eq!(a.status(w).unwrap(), Status::Reserved);
    a.post(w).unwrap();
    assert_eq!(a.wait(w, WAIT).unwrap(), Status::Done);
    assert_eq!(a.release(w).unwrap(), Released::Freed);

    let r = a.prepare(Op::Read, &all(back), peer, &all(dst), None).unwrap();
    a.post(r).unwrap();
    assert_eq!(a.wait(r, WAIT).unwrap(), Status::Done);
    a.release(r).unwrap();
    let mut out = vec![0; 64 << 10];
    a.read_region(back, 0, &mut out).unwrap();
    assert_eq!(out, data);
    assert_quiescent(&a);
    assert_eq!(a.stats().ring.done, 2);
}

#[test]
fn a_batch_scatters_and_gathers() {
    let (a, b) = (engine("a"), engine("b"));
    let src = a.alloc_region(16 * 4096).unwrap();
    let dst = b.alloc_region(16 * 4096).unwrap();
    let data = pattern(16 * 4096, 1);
    a.write_region(src, 0, &data).unwrap();
    let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    // Block i goes to slot 15 - i at the peer.
    let local: Vec<Desc> = (0..16).map(|i| Desc::new(src, i * 4096, 4096)).collect();
    let remote: Vec<Desc> = (0..16).map(|i| Desc::new(dst, (15 - i) * 4096, 4096)).collect();
    let h = a.prepare(Op::Write, &local, peer, &remote, None).unwrap();
    a.post(h).unwrap();
    assert_eq!(a.wait(h, WAIT).unwrap(), Status::Done);
    a.release(h).unwrap();
    let mut block = vec![0; 4096];
    for i in 0..16u64 {
        b.read_region(dst, (15 - i) * 4096, &mut block).unwrap();
        assert_eq!(block, data[i as usize * 4096..][..4096]);
    }
    assert_quiescent(&a);
}

#[test]
fn notifications_arrive_after_their_writes_and_on_their_own() {
    let (a, b) = (engine("sender"), engine("receiver"));
    let src = a.alloc_region(4096).unwrap();
    let dst = b.alloc_region(4096).unwrap();
    a.write_region(src, 0, b"payload").unwrap();
    let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    let mut buf = [0u8; 256];
    assert_eq!(b.pop_notification(&mut buf).unwrap(), None);

    let h = a
        .prepare(
            Op::Write,
            &[Desc::new(src, 0, 7)],
            peer,
            &[Desc::new(dst, 0, 7)],
            Some(b"block 1 ready"),
        )
        .unwrap();
    a.post(h).unwrap();
    a.notify(peer, b"standalone").unwrap();
    a.notify(peer, b"").unwrap();

    let n = b.pop_notification(&mut buf).unwrap().unwrap();
    assert_eq!(&buf[..n.len], b"block 1 ready");
    assert_eq!(n.handle, h);
    assert_eq!(b.sender_name(n.sender).as_deref(), Some("sender"));
    // The write landed before the notification was visible.
    let mut out = [0u8; 7];
    b.read_region(dst, 0, &mut out).unwrap();
    assert_eq!(&out, b"payload");
    let n = b.pop_notification(&mut buf).unwrap().unwrap();
    assert_eq!(&buf[..n.len], b"standalone");
    assert_eq!(b.pop_notification(&mut buf).unwrap().unwrap().len, 0);
    assert_eq!(b.pop_notification(&mut buf).unwrap(), None);
    a.release(h).unwrap();
    assert_quiescent(&a);
    assert_eq!(b.stats().notifications_delivered, 3);
    assert!(matches!(
        b.pop_notification(&mut [0u8; 8]),
        Err(Error::BufferTooSmall { needed: 256, got: 8 })
    ));
}

#[test]
fn ten_times_capacity_transfers_without_notification_do_not_exhaust_anything() {
    let (a, b, src, dst, peer) = connected(4096);
    for _ in 0..10 * a.config().capacity {
        let h = write(&a, peer, src, dst, 4096, None);
        a.post(h).unwrap();
        a.release(h).unwrap();
    }
    assert_quiescent(&a);
    assert_eq!(a.stats().ring.done, 160);
    assert_eq!(b.stats().notifications_queued, 0);
}

#[test]
fn a_released_handle_is_stale() {
    let (a, b) = (engine("a"), engine("b"));
    let src = a.alloc_region(64).unwrap();
    let dst = b.alloc_region(64).unwrap();
    let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    let h = write(&a, peer, src, dst, 64, None);
    a.post(h).unwrap();
    a.release(h).unwrap();
    assert_eq!(a.status(h), Err(Error::StaleHandle { handle: h }));
    assert_eq!(a.post(h), Err(Error::StaleHandle { handle: h }));
    assert_eq!(a.release(h), Err(Error::StaleHandle { handle: h }));
    assert_eq!(a.wait(h, WAIT), Err(Error::StaleHandle { handle: h }));
    assert_quiescent(&a);
}

#[test]
fn bad_descriptors_are_rejected_at_prepare_with_nothing_held() {
    let (a, b) = (engine("a"), engine("b"));
    let src = a.alloc_region(4096).unwrap();
    // Region ids are per engine: skip an entry so the peer's ids differ from ours.
    let _ = b.alloc_region(64).unwrap();
    let dst = b.alloc_region(4096).unwrap();
    let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    let ok = Desc::new(src, 0, 64);
    let rok = Desc::new(dst, 0, 64);
    type Case<'a> = (Vec<Desc>, Vec<Desc>, Option<&'a [u8]>);
    let cases: Vec<Case> = vec![
        (vec![Desc::new(src, 4090, 64)], vec![rok], None), // local out of bounds
        (vec![Desc::new(src, u64::MAX, 2)], vec![rok], None), // offset overflow
        (vec![ok], vec![Desc::new(dst, 4090, 64)], None),  // remote out of bounds
        (vec![Desc::new(dst, 0, 64)], vec![rok], None),    // local id of the peer's
        (vec![ok], vec![Desc::new(RegionId::from_raw(1 << 20 | 7), 0, 64)], None), // remote id unknown there
        (vec![ok], vec![Desc::new(dst, 0, 32)], None),     // length mismatch
        (vec![ok, ok], vec![rok], None),                   // count mismatch
        (vec![Desc::new(src, 0, 0)], vec![Desc::new(dst, 0, 0)], None), // empty descriptor
        (vec![], vec![], None),                            // nothing to do
        (vec![ok], vec![rok], Some(&[0u8; 257])),          // notification too large
        (vec![ok; 65], vec![rok; 65], None),               // too many descriptors
    ];
    for (i, (l, r, n)) in cases.iter().enumerate() {
        let err = a
            .prepare(Op::Write, l, peer, r, *n)
            .expect_err(&format!("case {i} must fail"));
        assert!(!err.to_string().is_empty());
        assert_quiescent(&a);
    }
    assert!(matches!(
        a.prepare(Op::Write, &[ok], ringxfer::PeerId(9), &[rok], None),
        Err(Error::UnknownPeer { peer: 9 })
    ));
    // A pin taken for the first descriptor is undone when the second fails.
    let err = a.prepare(
        Op::Write,
        &[ok, Desc::new(src, 5000, 1)],
        peer,
        &[rok, Desc::new(dst, 0, 1)],
        None,
    );
    assert!(matches!(err, Err(Error::OutOfBounds { .. })));
    assert_quiescent(&a);
    let s = a.stats().ring;
    assert!(
        s.acquired > 0 && s.acquired == s.freed,
        "failed prepares took slots and gave them back: {s:?}"
    );
}

#[test]
fn deregistering_a_region_in_use_is_busy() {
    let (a, _b, src, dst, peer) = connected(4096);
    let h = write(&a, peer, src, dst, 8, None);
    assert!(matches!(a.deregister(src), Err(Error::Busy { users: 1, .. })));
    a.post(h).unwrap();
    assert!(
        matches!(a.deregister(src), Err(Error::Busy { .. })),
        "held until released"
    );
    a.release(h).unwrap();
    a.deregister(src).unwrap();
    assert_eq!(a.deregister(src), Err(Error::UnknownRegion { region: src.to_raw() }));
    let err = a.prepare(Op::Write, &[Desc::new(src, 0, 8)], peer, &[Desc::new(dst, 0, 8)], None);
    assert_eq!(err, Err(Error::UnknownRegion { region: src.to_raw() }));
    // An id forged with the entry's next generation, not issued yet, names nothing.
    let next = RegionId::from_raw(src.to_raw() + (1 << 20));
    let err = a.prepare(Op::Write, &[Desc::new(next, 0, 8)], peer, &[Desc::new(dst, 0, 8)], None);
    assert_eq!(err, Err(Error::UnknownRegion { region: next.to_raw() }));
    // The entry is reused at a new generation; the old id stays dead.
    let again = a.alloc_region(4096).unwrap();
    assert_ne!(again, src);
    assert!(a.read_region(src, 0, &mut [0]).is_err());
    assert_eq!(a.stats().registrations, 1);
}

#[test]
fn the_peer_deregistering_fails_the_transfer_not_the_process() {
    let (a, b, src, dst, peer) = connected(4096);
    let h = write(&a, peer, src, dst, 8, Some(b"x"));
    b.deregister(dst).unwrap();
    a.post(h).unwrap();
    assert_eq!(a.wait(h, WAIT).unwrap(), Status::Failed(FailCode::PEER_LOST));
    a.release(h).unwrap();
    assert_eq!(
        b.pop_notification(&mut [0; 256]).unwrap(),
        None,
        "no notification for a failed write"
    );
    assert_quiescent(&a);
    assert_eq!(a.stats().ring.failed, 1);
}

#[test]
fn a_dropped_peer_fails_transfers_and_cannot_be_loaded() {
    let a = engine("a");
    let b = engine("b");
    let src = a.alloc_region(4096).unwrap();
    let dst = b.alloc_region(4096).unwrap();
    let blob = b.local_metadata().unwrap();
    let peer = a.load_peer(&blob).unwrap();
    let h = write(&a, peer, src, dst, 8, None);
    drop(b);
    a.post(h).unwrap();
    assert_eq!(a.wait(h, WAIT).unwrap(), Status::Failed(FailCode::PEER_LOST));
    a.release(h).unwrap();
    assert!(matches!(a.load_peer(&blob), Err(Error::PeerUnreachable { .. })));
    assert_quiescent(&a);
}

#[test]
fn an_unloaded_peers_id_stays_stale_when_its_entry_is_reused() {
    let (a, b, src, dst, peer) = connected(4096);
    let h = write(&a, peer, src, dst, 8, None);
    a.unload_peer(peer).unwrap();
    assert_eq!(a.stats().peers, 0);
    // Prepared before the unload: it cannot be posted to a peer that is gone.
    assert!(matches!(a.post(h), Err(Error::UnknownPeer { .. })));
    a.release(h).unwrap();
    assert!(matches!(a.unload_peer(peer), Err(Error::UnknownPeer { .. })));
    // Another engine loaded in the freed entry gets a new id; the old one names nothing.
    let c = engine("c");
    let other = a.load_peer(&c.local_metadata().unwrap()).unwrap();
    assert_ne!(other, peer);
    assert_eq!(a.peer_name(other).unwrap(), "c");
    assert!(matches!(a.peer_name(peer), Err(Error::UnknownPeer { .. })));
    assert!(matches!(
        a.prepare(Op::Write, &[Desc::new(src, 0, 8)], peer, &[Desc::new(dst, 0, 8)], None),
        Err(Error::UnknownPeer { .. })
    ));
    // Loading b again works, under yet another id.
    let again = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    assert!(again != peer && again != other);
    let h = write(&a, again, src, dst, 8, None);
    a.post(h).unwrap();
    assert_eq!(a.wait(h, WAIT).unwrap(), Status::Done);
    a.release(h).unwrap();
    assert_quiescent(&a);
}

#[test]
fn cancel_before_post_returns_everything() {
    let (a, b, src, dst, peer) = connected(4096);
    let h = write(&a, peer, src, dst, 8, Some(b"n"));
    assert_eq!(a.cancel(h).unwrap(), CancelResult::Cancelled);
    assert!(a.post(h).is_err(), "a cancelled transfer cannot be posted");
    assert_eq!(a.status(h).unwrap(), Status::Cancelled);
    a.release(h).unwrap();
    assert_quiescent(&a);
    assert_eq!(b.stats().notifications_queued, 0);
    a.deregister(src).unwrap();
}

#[test]
fn a_full_inbox_is_backpressure_not_a_drop() {
    let a = engine("a");
    let b = Engine::new(Config {
        name: "b".into(),
        inbox_capacity: 2,
        ..Config::default()
    })
    .unwrap();
    let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    a.notify(peer, b"1").unwrap();
    a.notify(peer, b"2").unwrap();
    assert_eq!(a.notify(peer, b"3"), Err(Error::InboxFull { peer: 0 }));
    // A transfer with a notification stays prepared and can be posted later.
    let h = a.prepare(Op::Write, &[], peer, &[], Some(b"4")).unwrap();
    assert_eq!(a.post(h), Err(Error::InboxFull { peer: 0 }));
    assert_eq!(a.status(h).unwrap(), Status::Reserved);
    let mut buf = [0u8; 256];
    let n = b.pop_notification(&mut buf).unwrap().unwrap();
    assert_eq!(&buf[..n.len], b"1");
    a.post(h).unwrap();
    a.release(h).unwrap();
    let got: Vec<u8> = std::iter::from_fn(|| b.pop_notification(&mut buf).unwrap().map(|n| buf[n.len - 1])).collect();
    assert_eq!(got, b"24", "nothing lost, order kept");
    assert_quiescent(&a);
}

#[test]
fn bad_configs_name_the_field() {
    let with = |change: fn(&mut Config)| {
        let mut c = Config::default();
        change(&mut c);
        c
    };
    for (config, field) in [
        (with(|c| c.capacity = 3), "capacity"),
        (with(|c| c.capacity = 0), "capacity"),
        (with(|c| c.max_descs_per_xfer = 0), "max_descs_per_xfer"),
        (with(|c| c.max_registrations = 0), "max_registrations"),
        (with(|c| c.max_peers = 0), "max_peers"),
        (with(|c| c.max_notif_bytes = 1 << 17), "max_notif_bytes"),
        (
            with(|c| c.file_worker_poll = Duration::from_millis(11)),
            "file_worker_poll",
        ),
        (with(|c| c.max_prepared_lists = 0), "max_prepared_lists"),
        (with(|c| c.inbox_capacity = 1000), "inbox_capacity"),
        (with(|c| c.name = String::new()), "name"),
        (
            with(|c| {
                c.max_peers = 4096;
                c.inbox_capacity = 1 << 20
            }),
            "inbox_capacity",
        ),
    ] {
        match Engine::new(config) {
            Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {:?}", other.err()),
        }
    }
}

#[test]
fn bad_metadata_is_a_typed_error() {
    let a = engine("a");
    assert!(matches!(a.load_peer(b"not metadata at all"), Err(Error::Metadata(_))));
    let mut blob = engine("b").local_metadata().unwrap();
    let last = blob.len() - 1;
    blob[last] ^= 1;
    assert!(matches!(a.load_peer(&blob), Err(Error::Metadata(_))));
    // Well-formed metadata whose transport info is garbage.
    let garbage = Metadata {
        engine_name: "remote".into(),
        engine_id: 1,
        process_id: std::process::id().wrapping_add(1),
        backends: vec![BackendInfo {
            kind: BackendKind::Local,
            conn: vec![16, 0, 0, 0, 0, 1, 0, 0],
        }],
        regions: vec![],
    };
    let err = a.load_peer(&garbage.encode().unwrap()).unwrap_err();
    assert!(err.to_string().contains("malformed"), "{err}");
    // A real engine's metadata, claiming a process that does not exist.
    let b = engine("b");
    let mut ghost = Metadata::decode(&b.local_metadata().unwrap()).unwrap();
    ghost.process_id = i32::MAX as u32;
    let err = a.load_peer(&ghost.encode().unwrap()).unwrap_err();
    assert!(err.to_string().contains("exited"), "{err}");
    let other_process = garbage;
    let no_transport = Metadata {
        backends: vec![BackendInfo {
            kind: BackendKind::Fabric,
            conn: vec![],
        }],
        ..other_process
    };
    assert!(matches!(
        a.load_peer(&no_transport.encode().unwrap()),
        Err(Error::PeerUnreachable { .. })
    ));
    assert_eq!(a.stats().peers, 0);
}

#[test]
fn a_peers_gpu_memory_is_refused_off_the_fabric() {
    // An engine publishes GPU memory only when the fabric registered it (FI_HMEM);
    // metadata that names GPU memory for a peer reached by the local transport is
    // refused at prepare, before any copy could touch a device pointer.
    let (a, b) = (engine("a"), engine("b"));
    let host = b.alloc_region(4096).unwrap();
    let mut meta = Metadata::decode(&b.local_metadata().unwrap()).unwrap();
    let gpu = RegionInfo {
        id: host.to_raw() + 1,
        kind: MemKind::Vram,
        ..meta.regions[0]
    };
    meta.regions.push(gpu);
    let peer = a.load_peer(&meta.encode().unwrap()).unwrap();
    let src = a.alloc_region(4096).unwrap();
    let to_gpu = a.prepare(
        Op::Write,
        &[Desc::new(src, 0, 64)],
        peer,
        &[Desc::new(RegionId::from_raw(gpu.id), 0, 64)],
        None,
    );
    match to_gpu {
        Err(Error::InvalidDescriptor { reason }) => assert!(reason.contains("fabric"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.stats().ring.live, 0);
}

#[test]
fn metadata_travels_over_tcp_on_loopback() {
    let (a, b) = (engine("a"), engine("b"));
    let dst = b.alloc_region(4096).unwrap();
    let server = b.serve_metadata("127.0.0.1:0").unwrap();
    let peer = a.fetch_peer(server.local_addr()).unwrap();
    assert_eq!(a.peer_name(peer).unwrap(), "b");
    // A region registered after the first fetch is seen by the next one.
    let later = b.alloc_region(4096).unwrap();
    let src = a.alloc_region(4096).unwrap();
    assert!(
        a.prepare(
            Op::Write,
            &[Desc::new(src, 0, 8)],
            peer,
            &[Desc::new(later, 0, 8)],
            None
        )
        .is_err()
    );
    assert_eq!(
        a.fetch_peer(server.local_addr()).unwrap(),
        peer,
        "reloading keeps the peer id"
    );
    let h = a
        .prepare(
            Op::Write,
            &[Desc::new(src, 0, 8)],
            peer,
            &[Desc::new(later, 0, 8)],
            None,
        )
        .unwrap();
    a.release(h).unwrap();
    let _ = dst;
    let addr = server.local_addr();
    drop(server);
    assert!(
        matches!(a.fetch_peer(addr), Err(Error::Io { .. })),
        "a stopped server refuses"
    );
}

#[test]
fn prepared_lists_post_many_times_with_fresh_handles() {
    let (a, b) = (engine("a"), engine("b"));
    let src = a.alloc_region(8 * 4096).unwrap();
    let dst = b.alloc_region(8 * 4096).unwrap();
    let data = pattern(8 * 4096, 3);
    a.write_region(src, 0, &data).unwrap();
    let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    let local: Vec<Desc> = (0..8).map(|i| Desc::new(src, i * 4096, 4096)).collect();
    let remote: Vec<Desc> = (0..8).map(|i| Desc::new(dst, i * 4096, 4096)).collect();
    let list = a.prepare_list(Op::Write, &local, peer, &remote).unwrap();
    assert!(
        matches!(a.deregister(src), Err(Error::Busy { .. })),
        "the list pins its regions"
    );
    let mut seen = std::collections::HashSet::new();
    for i in 0..100 {
        let notif: Option<&[u8]> = if i % 10 == 0 { Some(b"ten") } else { None };
        let h = a.post_list(list, notif).unwrap();
        assert!(seen.insert(h), "a handle is never reused");
        assert_eq!(a.wait(h, WAIT).unwrap(), Status::Done);
        a.release(h).unwrap();
    }
    let mut out = vec![0; 8 * 4096];
    b.read_region(dst, 0, &mut out).unwrap();
    assert_eq!(out, data);
    let mut buf = [0u8; 256];
    assert_eq!(std::iter::from_fn(|| b.pop_notification(&mut buf).unwrap()).count(), 10);
    assert!(matches!(
        a.post_list(list, Some(&[0; 300])),
        Err(Error::NotificationTooLarge { .. })
    ));
    a.release_list(list).unwrap();
    assert_eq!(a.post_list(list, None), Err(Error::UnknownList { list: list.to_raw() }));
    assert_eq!(a.release_list(list), Err(Error::UnknownList { list: list.to_raw() }));
    assert_quiescent(&a);
    assert_eq!(a.stats().prepared_lists, 0);
    a.deregister(src).unwrap();
}

#[test]
fn a_transfer_from_a_released_list_still_holds_the_lists_regions() {
    let (a, _b, src, dst, peer) = connected(4096);
    let list = a
        .prepare_list(Op::Write, &[Desc::new(src, 0, 64)], peer, &[Desc::new(dst, 0, 64)])
        .unwrap();
    let h = a.post_list(list, None).unwrap();
    a.release_list(list).unwrap();
    assert!(
        matches!(a.deregister(src), Err(Error::Busy { users: 1, .. })),
        "the transfer holds the region the list handed it"
    );
    assert_eq!(a.wait(h, WAIT).unwrap(), Status::Done);
    a.release(h).unwrap();
    assert_quiescent(&a);
    a.deregister(src).unwrap();
}

#[test]
fn a_batch_holds_every_region_it_names_until_released() {
    let e = engine("a");
    let regions: Vec<RegionId> = (0..4).map(|_| e.alloc_region(4096).unwrap()).collect();
    // Local side: regions 0, 1, 0 (a region again after another); own side: 2, 2, 3.
    let local = [0, 1, 0].map(|r| Desc::new(regions[r], 0, 8));
    let own = [2, 2, 3].map(|r| Desc::new(regions[r], r as u64 * 8, 8));
    let h = e.prepare(Op::Write, &local, e.local_peer(), &own, None).unwrap();
    // One record per run of a side into one region: 0, 1, 0 on the local side, and
    // 2, 3 on the own side.
    assert_eq!(e.stats().pins, 5, "every region named is held");
    for &r in &regions {
        assert!(
            matches!(e.deregister(r), Err(Error::Busy { users: 1, .. })),
            "{r:?} is named by the transfer"
        );
    }
    e.post(h).unwrap();
    assert_eq!(e.wait(h, WAIT).unwrap(), Status::Done);
    for &r in &regions {
        assert!(
            matches!(e.deregister(r), Err(Error::Busy { .. })),
            "held until released"
        );
    }
    e.release(h).unwrap();
    assert_quiescent(&e);
    for r in regions {
        e.deregister(r).unwrap();
    }
}

/// Deregistration racing transfers on the same region: it succeeds only while no
/// transfer holds the region, so none ever copies from memory already unmapped (an
/// engine-allocated region's segment goes with its registration: a copy from it after
/// that would crash the test).
#[test]
fn deregistering_under_load_never_pulls_a_region_from_under_a_transfer() {
    for round in 0..20 {
        let e = engine("a");
        let src = e.alloc_region(1 << 16).unwrap();
        let dst = e.alloc_region(1 << 16).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let done = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|scope| {
            for t in 0..2u64 {
                let (e, stop, done) = (&e, &stop, &done);
                scope.spawn(move || {
                    let me = e.local_peer();
                    let (local, own) = (Desc::new(src, t * 32768, 32768), Desc::new(dst, t * 32768, 32768));
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match e.prepare(Op::Write, &[local], me, &[own], None) {
                            Ok(h) => {
                                e.post(h).unwrap();
                                assert_eq!(e.wait(h, WAIT).unwrap(), Status::Done);
                                e.release(h).unwrap();
                                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(Error::UnknownRegion { region }) if region == src.to_raw() => break,
                            Err(other) => panic!("round {round}: {other}"),
                        }
                    }
                });
            }
            // Transfers first, so the deregistration lands among them (a deadline, so a
            // transfer thread that died fails the test instead of hanging it).
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while done.load(std::sync::atomic::Ordering::Relaxed) < 200 {
                assert!(std::time::Instant::now() < deadline, "round {round}: transfers stopped");
                std::hint::spin_loop();
            }
            let mut busy = 0;
            loop {
                match e.deregister(src) {
                    Ok(()) => break,
                    Err(Error::Busy { .. }) => busy += 1,
                    Err(other) => panic!("round {round}: {other}"),
                }
                if busy % 64 == 0 {
                    std::thread::yield_now();
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        assert_quiescent(&e);
    }
}

#[test]
fn release_racing_post_frees_each_slot_exactly_once() {
    let (a, b) = (engine("a"), engine("b"));
    let src = a.alloc_region(1 << 20).unwrap();
    let dst = b.alloc_region(1 << 20).unwrap();
    let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    let (mut detached, mut freed_first) = (0, 0);
    for i in 0..200u64 {
        let h = a
            .prepare(
                Op::Write,
                &[Desc::new(src, 0, 1 << 20)],
                peer,
                &[Desc::new(dst, 0, 1 << 20)],
                None,
            )
            .unwrap();
        let go = std::sync::atomic::AtomicBool::new(false);
        let (posted, released) = std::thread::scope(|s| {
            let releaser = s.spawn(|| {
                while !go.load(std::sync::atomic::Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                // Release at a different moment each round: during or after the copy.
                let until = std::time::Instant::now() + Duration::from_micros(i % 40);
                while std::time::Instant::now() < until {
                    std::hint::spin_loop();
                }
                a.release(h)
            });
            go.store(true, std::sync::atomic::Ordering::Release);
            let posted = a.post(h);
            (posted, releaser.join().unwrap())
        });
        match (posted, released) {
            // Released while in flight: the completion freed the slot.
            (Ok(()), Ok(Released::Detached)) => detached += 1,
            // Released after it ended, or before it was posted (then the post was stale).
            (Ok(()), Ok(Released::Freed)) => {}
            (Err(Error::StaleHandle { .. }), Ok(Released::Freed)) => freed_first += 1,
            other => panic!("{other:?}"),
        }
        assert!(a.status(h).is_err(), "the handle is dead either way");
    }
    assert_quiescent(&a);
    eprintln!("release raced post: {detached} detached, {freed_first} released before the post");
}

#[test]
fn a_handle_from_another_engine_is_refused() {
    let (a, b, c) = (engine("a"), engine("b"), engine("c"));
    let (src, other) = (a.alloc_region(64).unwrap(), c.alloc_region(64).unwrap());
    let dst = b.alloc_region(64).unwrap();
    let pa = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    let pc = c.load_peer(&b.local_metadata().unwrap()).unwrap();
    let ha = a
        .prepare(Op::Write, &[Desc::new(src, 0, 64)], pa, &[Desc::new(dst, 0, 64)], None)
        .unwrap();
    let hc = c
        .prepare(
            Op::Write,
            &[Desc::new(other, 0, 64)],
            pc,
            &[Desc::new(dst, 0, 64)],
            None,
        )
        .unwrap();
    // Same slot index in both engines, but each engine's generations start at its own
    // random point: the foreign handle is stale here, and c's transfer is untouched.
    assert_eq!(ha.index(), hc.index());
    assert_eq!(c.status(ha), Err(Error::StaleHandle { handle: ha }));
    assert_eq!(c.release(ha), Err(Error::StaleHandle { handle: ha }));
    assert_eq!(c.status(hc).unwrap(), Status::Reserved);
    a.release(ha).unwrap();
    c.release(hc).unwrap();
}

/// Without the fabric, the slot freed last is taken again first (its lines are still
/// in cache), and its handle is a new generation: the old one stays dead.
#[test]
fn a_thread_doing_one_transfer_at_a_time_reuses_one_slot() {
    let (a, _b, src, dst, peer) = connected(64);
    let first = write(&a, peer, src, dst, 64, None);
    a.post(first).unwrap();
    assert_eq!(a.wait(first, WAIT).unwrap(), Status::Done);
    a.release(first).unwrap();
    let mut last = first;
    for _ in 0..10 {
        let h = write(&a, peer, src, dst, 64, None);
        assert_eq!(h.index(), first.index(), "the slot freed last is reused");
        assert_eq!(h.generation(), last.generation() + 1);
        assert!(matches!(a.status(last), Err(Error::StaleHandle { .. })));
        a.post(h).unwrap();
        assert_eq!(a.wait(h, WAIT).unwrap(), Status::Done);
        a.release(h).unwrap();
        last = h;
    }
    // Two held at once: the second comes from the free list.
    let (h1, h2) = (write(&a, peer, src, dst, 64, None), write(&a, peer, src, dst, 64, None));
    assert_ne!(h1.index(), h2.index());
    a.release(h1).unwrap();
    a.release(h2).unwrap();
    assert_quiescent(&a);
}
