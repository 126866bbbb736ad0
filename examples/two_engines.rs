//! Two engines move a KV-cache block and tell each other about it.
//!
//! The "decode" engine serves its metadata over TCP; the "prefill" engine fetches
//! it, writes a batch of blocks into the decode engine's memory with a notification
//! that arrives after the last byte, then reads one block back. Run it with
//! `cargo run --example two_engines`.

use std::time::Duration;

use ringxfer::{Config, Desc, Engine, Op, Status};

const BLOCK: u64 = 16 << 10;
const BLOCKS: u64 = 8;

fn main() -> Result<(), ringxfer::Error> {
    // Everything the hot path needs is allocated here.
    let prefill = Engine::new(Config {
        name: "prefill".into(),
        ..Config::default()
    })?;
    let decode = Engine::new(Config {
        name: "decode".into(),
        ..Config::default()
    })?;

    // Memory: engine-allocated regions live in shared memory, so a peer in another
    // process could reach them too.
    let kv_out = prefill.alloc_region((BLOCK * BLOCKS) as usize)?;
    let kv_in = decode.alloc_region((BLOCK * BLOCKS) as usize)?;
    for i in 0..BLOCKS {
        prefill.write_region(kv_out, i * BLOCK, format!("block {i}").as_bytes())?;
    }

    // Metadata exchange over TCP on loopback (or pass `local_metadata()` bytes yourself).
    let server = decode.serve_metadata("127.0.0.1:0")?;
    let peer = prefill.fetch_peer(server.local_addr())?;

    // A batch of 8 blocks, block i to slot 7 - i, with a notification.
    let local: Vec<Desc> = (0..BLOCKS).map(|i| Desc::new(kv_out, i * BLOCK, BLOCK)).collect();
    let remote: Vec<Desc> = (0..BLOCKS)
        .map(|i| Desc::new(kv_in, (BLOCKS - 1 - i) * BLOCK, BLOCK))
        .collect();
    let h = prefill.prepare(Op::Write, &local, peer, &remote, Some(b"request 42: 8 blocks"))?;
    prefill.post(h)?;
    assert_eq!(prefill.wait(h, Duration::from_secs(5))?, Status::Done);
    prefill.release(h)?; // the slot goes back to the ring; `h` is dead from now on

    // The decode side learns the blocks are there.
    let mut note = [0u8; 256];
    let n = decode
        .pop_notification(&mut note)?
        .expect("sent after the last byte landed");
    println!(
        "decode got {:?} from {}",
        std::str::from_utf8(&note[..n.len]).unwrap(),
        decode.sender_name(n.sender).unwrap_or_default()
    );
    let mut first = [0u8; 7];
    decode.read_region(kv_in, 7 * BLOCK, &mut first)?;
    assert_eq!(&first, b"block 0");

    // A list reused for many transfers: validated once, a fresh handle per post.
    let list = prefill.prepare_list(Op::Read, &local[..1], peer, &remote[..1])?;
    for _ in 0..3 {
        let h = prefill.post_list(list, None)?;
        prefill.wait(h, Duration::from_secs(5))?;
        prefill.release(h)?;
    }
    prefill.release_list(list)?;

    // The ledger: nothing held.
    let stats = prefill.stats();
    println!(
        "prefill: {} transfers done, {} live slots, {} pins",
        stats.ring.done, stats.ring.live, stats.pins
    );
    assert_eq!((stats.ring.live, stats.pins), (0, 0));
    Ok(())
}
