//! Engine API op sequences against the fault-injecting sim transport: whatever the
//! ops and the faults (late, duplicated, replayed-after-reuse and failed completions,
//! stalls past the deadline, a lost peer, dropped and doubled notifications), nothing
//! panics, a released handle stays dead, and after draining the ledger is clean:
//! nothing held, every posted transfer ended once, every extra completion rejected.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringxfer::{Config, Desc, Engine, Error, Handle, Op, SimConfig};

fuzz_target!(|data: &[u8]| {
    let Some((seed, ops)) = data.split_first_chunk::<8>() else {
        return;
    };
    let e = Engine::new(Config {
        name: "fuzz-ops".into(),
        capacity: 16,
        max_notif_bytes: 16,
        inbox_capacity: 16,
        max_peers: 4,
        file_workers: 0,
        sim: Some(SimConfig {
            seed: u64::from_le_bytes(*seed),
            deadline_ticks: 8,
            ..SimConfig::default()
        }),
        ..Config::default()
    })
    .unwrap();
    let peer = e.sim_peer().unwrap();
    let src = e.alloc_region(4096).unwrap();
    let mut held: Vec<Handle> = Vec::new();
    let mut released: Vec<Handle> = Vec::new();
    let mut posted = 0u64;
    let mut buf = [0u8; 16];
    let mut bytes = ops.iter().copied();
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0) as usize;
        match op % 12 {
            0..=3 => {
                let note = [op; 4];
                match e.prepare(
                    Op::Write,
                    &[Desc::new(src, (arg * 16) as u64, 16)],
                    peer,
                    &[Desc::new(src, 0, 16)],
                    (op & 1 == 0).then_some(&note[..]),
                ) {
                    Ok(h) => {
                        if op & 2 == 0 {
                            e.post(h).unwrap();
                            posted += 1;
                        }
                        held.push(h);
                    }
                    Err(Error::RingFull { .. }) => {}
                    Err(err) => panic!("prepare: {err}"),
                }
            }
            4 => {
                e.progress();
            }
            5 if !held.is_empty() => {
                let h = held.swap_remove(arg % held.len());
                e.release(h).unwrap();
                released.push(h);
            }
            6 if !held.is_empty() => {
                let _ = e.cancel(held[arg % held.len()]).unwrap();
            }
            7 if !held.is_empty() => {
                let _ = e.status(held[arg % held.len()]).unwrap();
            }
            8 => {
                let _ = e.pop_notification(&mut buf).unwrap();
            }
            9 => e.sim_lose_peer(),
            10 if !released.is_empty() => {
                // A released handle is dead, whatever its slot does now.
                let h = released[arg % released.len()];
                assert!(matches!(e.release(h), Err(Error::StaleHandle { .. })));
                assert!(matches!(e.status(h), Err(Error::StaleHandle { .. })));
            }
            11 => {
                // A forged handle changes nothing.
                let forged = Handle::from_raw((arg as u64) << 20 | (arg as u64 % 16));
                let _ = e.status(forged);
            }
            _ => {}
        }
    }
    for h in held {
        e.release(h).unwrap();
    }
    for _ in 0..64 {
        e.sim_drain();
        e.progress();
        if e.stats().ring.live == 0 {
            break;
        }
    }
    while e.pop_notification(&mut buf).unwrap().is_some() {}
    e.check_quiescent().unwrap();
    let s = e.stats();
    assert_eq!(
        s.notifications_delivered, s.sim.notifications_sent,
        "each notification popped once: {s:?}"
    );
    // Every posted transfer ended once: DONE, FAILED, or CANCELLED when a cancel
    // reached it at the sim (CANCELLED also counts those cancelled before posting).
    assert_eq!(s.sim.completed, posted, "{s:?}");
    assert!(s.ring.done + s.ring.failed + s.ring.cancelled >= posted, "{s:?}");
    assert_eq!(s.sim.misattributed, 0, "a completion matched the wrong transfer: {s:?}");
    assert_eq!(s.ring.stale_completions, s.sim.extra_completions, "{s:?}");
});
