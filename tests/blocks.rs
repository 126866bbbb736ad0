//! Block transfers (`Engine::prepare_blocks`): many equal blocks named by a few block
//! sets, on every memory path — within the engine (memory and files), to a peer in
//! this process, and to a peer in another process (its shared-memory region and
//! memory it reaches with `process_vm_*`). Each case is checked against a model: the
//! blocks copied one by one.

use std::time::Duration;

use proptest::prelude::*;
use ringxfer::{Blocks, Config, Engine, Error, FileOptions, Op, PeerId, RegionId, Status};

#[path = "support/child.rs"]
mod child;
#[path = "support/counting.rs"]
mod counting;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

const WAIT: Duration = Duration::from_secs(10);

/// The tests here run one at a time: the allocation count is global, and another
/// test's allocations would land in it.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn engine(name: &str) -> Engine {
    Engine::new(Config {
        name: name.into(),
        capacity: 16,
        max_blocks_per_xfer: 4096,
        ..Config::default()
    })
    .unwrap()
}

/// A side of a pair of block sets, owned: (offset, stride, ids or a count).
#[derive(Clone, Debug)]
struct Set {
    offset: u64,
    stride: u64,
    ids: Result<Vec<u32>, u32>,
}

impl Set {
    fn blocks(&self, region: RegionId, block_len: u64) -> Blocks<'_> {
        match &self.ids {
            Ok(ids) => Blocks::indexed(region, self.offset, block_len, self.stride, ids),
            Err(count) => Blocks::strided(region, self.offset, block_len, self.stride, *count),
        }
    }
    fn start(&self, k: usize) -> usize {
        let id = match &self.ids {
            Ok(ids) => ids[k] as u64,
            Err(_) => k as u64,
        };
        (self.offset + id * self.stride) as usize
    }
}

/// The model: `dst` after copying block `k` of each `from` set to block `k` of its
/// `to` set, in order.
fn model(src: &[u8], dst: &mut [u8], pairs: &[(Set, Set)], block_len: usize, count: usize) {
    for (from, to) in pairs {
        for k in 0..count {
            let (s, d) = (from.start(k), to.start(k));
            dst[d..d + block_len].copy_from_slice(&src[s..s + block_len]);
        }
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13 ^ seed) as u8)
        .collect()
}

fn run(e: &Engine, op: Op, local: &[Blocks<'_>], peer: PeerId, remote: &[Blocks<'_>]) -> Status {
    let h = e.prepare_blocks(op, local, peer, remote, None).unwrap();
    e.post(h).unwrap();
    let status = e.wait(h, WAIT).unwrap();
    e.release(h).unwrap();
    status
}

/// A KV-shaped transfer: `layers` × K and V, `blocks` pages of `page` bytes at
/// scattered ids on both sides (the same ids' order differs per side), in a region
/// of `layers × 2 × slots` pages per side.
fn kv(layers: usize, blocks: usize, slots: u32, seed: u64) -> Vec<(Set, Set)> {
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut ids = |n: usize| {
        let mut all: Vec<u32> = (0..slots).collect();
        for i in (1..all.len()).rev() {
            all.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        all.truncate(n);
        all
    };
    (0..layers * 2)
        .map(|set| {
            let base = set as u64 * u64::from(slots);
            let side = |ids: Vec<u32>| Set {
                offset: base * PAGE as u64,
                stride: PAGE as u64,
                ids: Ok(ids),
            };
            (side(ids(blocks)), side(ids(blocks)))
        })
        .collect()
}

const PAGE: usize = 256;

#[test]
fn kv_blocks_within_the_engine_and_to_a_peer_in_this_process() {
    let _serial = serial();
    let (layers, blocks, slots) = (4, 64, 128u32);
    let len = layers * 2 * slots as usize * PAGE;
    let a = engine("a");
    let b = engine("b");
    let target = b.alloc_region(len).unwrap();
    let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    let (src, dst) = (a.alloc_region(len).unwrap(), a.alloc_region(len).unwrap());
    let data = pattern(len, 7);
    a.write_region(src, 0, &data).unwrap();
    let pairs = kv(layers, blocks, slots, 0x9e37);

    // Within the engine, memory to memory.
    let local: Vec<Blocks> = pairs.iter().map(|(l, _)| l.blocks(src, PAGE as u64)).collect();
    let other: Vec<Blocks> = pairs.iter().map(|(_, r)| r.blocks(dst, PAGE as u64)).collect();
    assert_eq!(run(&a, Op::Write, &local, PeerId::SELF, &other), Status::Done);
    let mut want = vec![0u8; len];
    model(&data, &mut want, &pairs, PAGE, blocks);
    let mut got = vec![0u8; len];
    a.read_region(dst, 0, &mut got).unwrap();
    assert!(got == want, "memory to memory within the engine");

    // To the peer: WRITE into its region, then READ it back into a clean region.
    let remote: Vec<Blocks> = pairs.iter().map(|(_, r)| r.blocks(target, PAGE as u64)).collect();
    assert_eq!(run(&a, Op::Write, &local, peer, &remote), Status::Done);
    b.read_region(target, 0, &mut got).unwrap();
    assert!(got == want, "written into the peer");
    let back = a.alloc_region(len).unwrap();
    let home: Vec<Blocks> = pairs.iter().map(|(l, _)| l.blocks(back, PAGE as u64)).collect();
    assert_eq!(run(&a, Op::Read, &home, peer, &remote), Status::Done);
    let mut want_back = vec![0u8; len];
    let mirrored: Vec<(Set, Set)> = pairs.iter().map(|(l, r)| (r.clone(), l.clone())).collect();
    model(&want, &mut want_back, &mirrored, PAGE, blocks);
    a.read_region(back, 0, &mut got).unwrap();
    assert!(got == want_back, "read back from the peer");

    // No allocation per block transfer, once warm.
    let before = counting::allocations();
    for _ in 0..200 {
        assert_eq!(run(&a, Op::Write, &local, peer, &remote), Status::Done);
        assert_eq!(run(&a, Op::Write, &local, PeerId::SELF, &other), Status::Done);
    }
    assert_eq!(
        counting::allocations() - before,
        0,
        "allocations over 400 block transfers"
    );
    assert_eq!(a.stats().ring.live, 0);
    a.check_quiescent().unwrap();
}

/// NIXL's pattern: one list prepared over a whole pool of pages (far more entries
/// than a transfer holds), posted a request's pages at a time by index.
#[test]
fn a_list_over_a_page_pool_is_posted_by_index() {
    let _serial = serial();
    const POOL: usize = 4096;
    let a = engine("a");
    let b = engine("b");
    let len = POOL * PAGE;
    let (src, target) = (a.alloc_region(len).unwrap(), b.alloc_region(len).unwrap());
    let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    let data = pattern(len, 3);
    a.write_region(src, 0, &data).unwrap();
    // Entry i: the source's page i to the peer's page POOL - 1 - i.
    let local: Vec<ringxfer::Desc> = (0..POOL)
        .map(|i| ringxfer::Desc::new(src, (i * PAGE) as u64, PAGE as u64))
        .collect();
    let remote: Vec<ringxfer::Desc> = (0..POOL)
        .map(|i| ringxfer::Desc::new(target, ((POOL - 1 - i) * PAGE) as u64, PAGE as u64))
        .collect();
    let list = a.prepare_list(Op::Write, &local, peer, &remote).unwrap();
    // Posted whole, it is more than a transfer holds.
    assert!(matches!(
        a.post_list(list, None),
        Err(Error::TooManyDescriptors { count: POOL, max: 64 })
    ));

    let mut want = vec![0u8; len];
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut picks = Vec::with_capacity(64);
    let mut got = vec![0u8; len];
    let before = counting::allocations();
    for round in 0..200 {
        picks.clear();
        for _ in 0..1 + round % 64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            picks.push((rng % POOL as u64) as u32);
        }
        let h = a.post_list_indices(list, &picks, None).unwrap();
        assert_eq!(a.wait(h, WAIT).unwrap(), Status::Done);
        a.release(h).unwrap();
        for &i in &picks {
            let (s, d) = (i as usize * PAGE, (POOL - 1 - i as usize) * PAGE);
            want[d..d + PAGE].copy_from_slice(&data[s..s + PAGE]);
        }
    }
    assert_eq!(
        counting::allocations() - before,
        0,
        "allocations over 200 posts by index"
    );
    b.read_region(target, 0, &mut got).unwrap();
    assert!(got == want, "the pages picked, and only those, arrived");

    // Bad picks are typed errors and post nothing.
    let live = a.stats().ring.live;
    assert!(matches!(
        a.post_list_indices(list, &[0, POOL as u32], None),
        Err(Error::InvalidDescriptor { .. })
    ));
    assert!(matches!(
        a.post_list_indices(list, &[], None),
        Err(Error::InvalidDescriptor { .. })
    ));
    assert!(matches!(
        a.post_list_indices(list, &[1; 65], None),
        Err(Error::TooManyDescriptors { count: 65, max: 64 })
    ));
    assert_eq!(a.stats().ring.live, live);
    a.release_list(list).unwrap();
    assert!(matches!(
        a.post_list_indices(list, &[0], None),
        Err(Error::UnknownList { .. })
    ));

    // A list's regions are recorded per run of descriptors into one region: one that
    // alternates between two regions is fine (each is recorded once) …
    let other = a.alloc_region(len).unwrap();
    let mixed: Vec<ringxfer::Desc> = (0..POOL)
        .map(|i| ringxfer::Desc::new(if i % 2 == 0 { src } else { other }, (i * PAGE) as u64, PAGE as u64))
        .collect();
    let list = a.prepare_list(Op::Write, &mixed, peer, &remote).unwrap();
    a.release_list(list).unwrap();
    // … but more separate regions than max_descs_per_xfer is refused, holding nothing.
    let many: Vec<RegionId> = (0..65).map(|_| a.alloc_region(PAGE).unwrap()).collect();
    let spread: Vec<ringxfer::Desc> = many.iter().map(|&r| ringxfer::Desc::new(r, 0, PAGE as u64)).collect();
    let refused = a.prepare_list(Op::Write, &spread, peer, &remote[..65]);
    assert!(matches!(refused, Err(Error::InvalidDescriptor { .. })), "{refused:?}");
    for r in many {
        a.deregister(r).unwrap();
    }
    assert!(matches!(
        a.prepare_list(
            Op::Write,
            &local[..1].repeat(1 << 16 | 1),
            peer,
            &remote[..1].repeat(1 << 16 | 1)
        ),
        Err(Error::TooManyDescriptors { .. })
    ));
    a.check_quiescent().unwrap();
}

#[test]
fn blocks_to_and_from_a_file_in_runs() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("ringxfer-blocks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kv.bin");
    let e = engine("files");
    let len = 64 * 1024;
    let options = FileOptions {
        writable: true,
        create: true,
        len: Some(len as u64),
        ..FileOptions::default()
    };
    let file = e.register_file(&path, options).unwrap();
    let (mem, back) = (e.alloc_region(len).unwrap(), e.alloc_region(len).unwrap());
    let data = pattern(len, 3);
    e.write_region(mem, 0, &data).unwrap();
    // Memory pages 10..42 (strided, contiguous) to file pages at scattered ids, and
    // file pages in order from a gather of memory pages.
    let scattered: Vec<u32> = (0..32).map(|k| (k * 7) % 64).collect();
    let pairs = vec![(
        Set {
            offset: 10 * 1024,
            stride: 1024,
            ids: Err(32),
        },
        Set {
            offset: 0,
            stride: 1024,
            ids: Ok(scattered),
        },
    )];
    let l: Vec<Blocks> = pairs.iter().map(|(s, _)| s.blocks(mem, 1024)).collect();
    let f: Vec<Blocks> = pairs.iter().map(|(_, s)| s.blocks(file, 1024)).collect();
    assert_eq!(run(&e, Op::Write, &l, PeerId::SELF, &f), Status::Done);
    let mut want = vec![0u8; len];
    model(&data, &mut want, &pairs, 1024, 32);
    let on_disk = std::fs::read(&path).unwrap();
    for (k, id) in pairs[0].1.ids.as_ref().unwrap().iter().enumerate() {
        let at = *id as usize * 1024;
        assert_eq!(
            on_disk[at..at + 1024],
            want[at..at + 1024],
            "file page {id} (block {k})"
        );
    }
    // And back into another region, at the memory side's places.
    let l_back: Vec<Blocks> = pairs.iter().map(|(s, _)| s.blocks(back, 1024)).collect();
    assert_eq!(run(&e, Op::Read, &l_back, PeerId::SELF, &f), Status::Done);
    let mut got = vec![0u8; len];
    e.read_region(back, 0, &mut got).unwrap();
    assert_eq!(got[10 * 1024..42 * 1024], data[10 * 1024..42 * 1024]);
    e.deregister(file).unwrap();
    e.check_quiescent().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_block_sets_are_typed_errors_and_hold_nothing() {
    let _serial = serial();
    let e = engine("bad");
    let r = e.alloc_region(1 << 16).unwrap();
    let ids = [1u32, 2, 3];
    let ok = Blocks::indexed(r, 0, 64, 64, &ids);
    // An indexed set whose count is not its number of ids.
    let miscounted = Blocks {
        count: 4,
        ..Blocks::indexed(r, 0, 64, 64, &ids)
    };
    let cases: Vec<(Blocks, Blocks, &str)> = vec![
        (ok, Blocks::indexed(r, 0, 32, 64, &ids), "LengthMismatch"),
        (ok, Blocks::strided(r, 0, 64, 64, 2), "LengthMismatch"),
        (
            Blocks::strided(r, 0, 0, 64, 3),
            Blocks::strided(r, 0, 0, 64, 3),
            "InvalidDescriptor",
        ),
        (ok, Blocks::strided(r, 0, 64, 1 << 20, 3), "OutOfBounds"),
        (ok, Blocks::indexed(r, 0, 64, 64, &[1, 2, 1 << 20]), "OutOfBounds"),
        (ok, Blocks::strided(r, 0, 64, u64::MAX, 3), "InvalidDescriptor"),
        (
            ok,
            Blocks::strided(RegionId::from_raw(999), 0, 64, 64, 3),
            "UnknownRegion",
        ),
        (miscounted, miscounted, "InvalidDescriptor"),
    ];
    for (l, o, what) in cases {
        let got = e.prepare_blocks(Op::Write, &[l], PeerId::SELF, &[o], None);
        let name = format!("{got:?}");
        assert!(name.contains(what), "expected {what}, got {name}");
    }
    // More ids than max_blocks_per_xfer (4096) on one side.
    let many: Vec<u32> = (0..4097).map(|i| i % 16).collect();
    let big = Blocks::indexed(r, 0, 64, 64, &many);
    assert!(matches!(
        e.prepare_blocks(Op::Write, &[big], PeerId::SELF, &[big], None),
        Err(Error::TooManyBlocks { count: 4097, max: 4096 })
    ));
    // More pairs than max_descs_per_xfer (64).
    let sets = vec![ok; 65];
    assert!(matches!(
        e.prepare_blocks(Op::Write, &sets, PeerId::SELF, &sets, None),
        Err(Error::TooManyDescriptors { count: 65, .. })
    ));
    assert!(matches!(
        e.prepare_blocks(Op::Write, &[], PeerId::SELF, &[], None),
        Err(Error::InvalidDescriptor { .. })
    ));
    assert!(matches!(
        e.prepare_blocks(Op::Write, &[ok], PeerId(7), &[ok], None),
        Err(Error::UnknownPeer { .. })
    ));
    // Nothing was held: the region goes at once.
    assert_eq!(e.stats().ring.live, 0);
    e.deregister(r).unwrap();
    e.check_quiescent().unwrap();
}

/// The target of [`blocks_reach_a_peer_in_another_process`]: a shared-memory region
/// and caller memory reached with `process_vm_*`; prints their contents' CRCs.
#[test]
#[ignore = "the child process of blocks_reach_a_peer_in_another_process"]
fn blocks_target_child() {
    let e = engine("blocks-target");
    let shm = e.alloc_region(LEN).unwrap();
    let mut heap = vec![0u8; LEN];
    // SAFETY: `heap` outlives its registration (deregistered below, before it drops).
    let own = unsafe { e.register_dram(heap.as_mut_ptr(), heap.len()) }.unwrap();
    println!();
    println!("ids {} {}", shm.to_raw(), own.to_raw());
    println!("md {}", child::hex(&e.local_metadata().unwrap()));
    let lines = child::stdin_lines();
    while let Ok(line) = lines.recv() {
        if line != "crc" {
            break;
        }
        let mut got = vec![0u8; LEN];
        e.read_region(shm, 0, &mut got).unwrap();
        println!("crc {} {}", crc32fast::hash(&got), crc32fast::hash(&heap));
    }
    e.deregister(own).unwrap();
    drop(heap);
}

const LEN: usize = 2 * 2 * 128 * PAGE;

#[test]
fn blocks_reach_a_peer_in_another_process() {
    let _serial = serial();
    use std::io::Write;
    let (mut target, mut input, mut out) = child::spawn_test("blocks_target_child");
    let ids: Vec<u64> = child::read_tagged(&mut out, "ids ")
        .split(' ')
        .map(|w| w.parse().unwrap())
        .collect();
    let md = child::unhex(&child::read_tagged(&mut out, "md "));
    let a = engine("blocks-initiator");
    let peer = a.load_peer(&md).unwrap();
    let src = a.alloc_region(LEN).unwrap();
    let data = pattern(LEN, 11);
    a.write_region(src, 0, &data).unwrap();
    let pairs = kv(2, 48, 128, 0x51);
    let local: Vec<Blocks> = pairs.iter().map(|(l, _)| l.blocks(src, PAGE as u64)).collect();
    let mut want = vec![0u8; LEN];
    model(&data, &mut want, &pairs, PAGE, 48);
    for &id in &ids {
        let remote: Vec<Blocks> = pairs
            .iter()
            .map(|(_, r)| r.blocks(RegionId::from_raw(id), PAGE as u64))
            .collect();
        assert_eq!(run(&a, Op::Write, &local, peer, &remote), Status::Done);
        // Read back into a clean region: the model's image of the written blocks.
        let back = a.alloc_region(LEN).unwrap();
        let home: Vec<Blocks> = pairs.iter().map(|(_, r)| r.blocks(back, PAGE as u64)).collect();
        assert_eq!(run(&a, Op::Read, &home, peer, &remote), Status::Done);
        let mut got = vec![0u8; LEN];
        a.read_region(back, 0, &mut got).unwrap();
        assert!(got == want, "read back from region {id} of the other process");
        a.deregister(back).unwrap();
    }
    writeln!(input, "crc").unwrap();
    let crc = crc32fast::hash(&want);
    assert_eq!(child::read_tagged(&mut out, "crc "), format!("{crc} {crc}"));
    writeln!(input, "quit").unwrap();
    drop(input);
    assert!(target.wait().unwrap().success());
    a.check_quiescent().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Any shape of block sets within the engine moves what copying the blocks one
    /// by one moves (later blocks overwrite earlier ones where they overlap).
    #[test]
    fn block_transfers_match_the_block_by_block_model(
        block_len in 1u64..64,
        gap in 0u64..16,
        count in 1usize..40,
        sets in 1usize..4,
        indexed in any::<(bool, bool)>(),
        seed in any::<u64>(),
        read in any::<bool>(),
    ) {
        let _serial = serial();
        let e = engine("model");
        let stride = block_len + gap;
        let region_len = (sets * 64) as u64 * stride + block_len;
        let (a, b) = (e.alloc_region(region_len as usize).unwrap(), e.alloc_region(region_len as usize).unwrap());
        let data = pattern(region_len as usize, seed as u32);
        e.write_region(a, 0, &data).unwrap();
        let mut rng = seed | 1;
        let mut side = |set: usize, indexed: bool| {
            let offset = (set * 64) as u64 * stride;
            if indexed {
                let ids = (0..count).map(|_| {
                    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
                    // Runs of neighbours as often as not, to exercise merging.
                    (rng % 64) as u32
                }).collect::<Vec<u32>>();
                let mut ids = ids;
                if rng % 2 == 0 { ids.sort_unstable(); }
                Set { offset, stride, ids: Ok(ids) }
            } else {
                Set { offset, stride, ids: Err(count as u32) }
            }
        };
        let pairs: Vec<(Set, Set)> = (0..sets).map(|s| (side(s, indexed.0), side(s, indexed.1))).collect();
        let op = if read { Op::Read } else { Op::Write };
        // WRITE: a's blocks (local) to b's (other). READ: b's blocks (other) into a's
        // (local): the model copies the other way.
        let local: Vec<Blocks> = pairs.iter().map(|(l, _)| l.blocks(if read { b } else { a }, block_len)).collect();
        let other: Vec<Blocks> = pairs.iter().map(|(_, o)| o.blocks(if read { a } else { b }, block_len)).collect();
        prop_assert_eq!(run(&e, op, &local, PeerId::SELF, &other), Status::Done);
        let mut want = vec![0u8; region_len as usize];
        let mut got = vec![0u8; region_len as usize];
        if read {
            let mirrored: Vec<(Set, Set)> = pairs.iter().map(|(l, o)| (o.clone(), l.clone())).collect();
            model(&data, &mut want, &mirrored, block_len as usize, count);
            e.read_region(b, 0, &mut got).unwrap();
        } else {
            model(&data, &mut want, &pairs, block_len as usize, count);
            e.read_region(b, 0, &mut got).unwrap();
        }
        prop_assert!(got == want);
    }
}
