//! Random sequences of C API calls against an engine with the sim and file
//! transports, as a C caller could make them: bad and forged handles, stale ones,
//! double releases of transfers and of lists, unknown regions and peers, out-of-range
//! enum values, NULL pointers, buffers too small, notifications, the completion queue,
//! stats and metrics.
//! Every call returns a status (nothing panics: a panic would come back as `RX_PANIC`,
//! which fails the run), and after each call the ledger agrees with what the caller
//! holds. At the end, once everything is released and drained, `rx_check_quiescent`
//! is `RX_OK` and every posted transfer ended once.
#![no_main]

use std::ffi::CString;
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ringxfer::{Config, Engine, SimConfig};
use ringxfer_ffi::*;

/// The file every run registers: one path per process, made once.
fn file_path() -> &'static CString {
    static PATH: OnceLock<CString> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("ringxfer-fuzz-c-api-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 64 * 1024]).unwrap();
        CString::new(path.into_os_string().into_encoded_bytes()).unwrap()
    })
}

/// Reads fuzz bytes, zeros past the end.
struct Input<'a>(std::slice::Iter<'a, u8>);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        self.0.next().copied().unwrap_or(0)
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), 0, 0])
    }
}

fn stats(e: *const rx_engine) -> rx_stats {
    let mut s = rx_stats::default();
    // SAFETY: a live engine and a writable rx_stats.
    assert_eq!(unsafe { rx_engine_stats(e, &mut s) }, rx_status::RX_OK);
    s
}

fuzz_target!(|data: &[u8]| {
    let Some((seed, ops)) = data.split_first_chunk::<8>() else {
        return;
    };
    let engine = Engine::new(Config {
        name: "fuzz-c-api".into(),
        capacity: 16,
        max_notif_bytes: 16,
        inbox_capacity: 16,
        max_peers: 4,
        max_prepared_lists: 4,
        file_workers: 1,
        sim: Some(SimConfig {
            seed: u64::from_le_bytes(*seed),
            deadline_ticks: 8,
            ..SimConfig::default()
        }),
        ..Config::default()
    })
    .unwrap();
    let sim = engine.sim_peer().unwrap().0;
    let e = engine_from(engine);
    let (mut dram, mut file) = (0u64, 0u64);
    // SAFETY: a live engine; each out pointer is writable.
    unsafe {
        assert_eq!(rx_alloc_region(e, 64 * 1024, &mut dram), rx_status::RX_OK);
        assert_eq!(
            rx_register_file(e, file_path().as_ptr(), RX_FILE_WRITABLE, 0, &mut file),
            rx_status::RX_OK
        );
    }
    let regions = [dram, file, dram ^ 0x5a5a, 0];
    let peers = [sim, RX_PEER_SELF, 3, sim + 1];

    let mut held: Vec<u64> = Vec::new();
    let mut released: Vec<u64> = Vec::new();
    let mut lists: Vec<u64> = Vec::new();
    let mut dead_lists: Vec<u64> = Vec::new();
    let mut posted_to_sim = 0u64;
    let mut peer_of: Vec<(u64, u32)> = Vec::new();
    let mut buf = [0u8; 32];
    let mut input = Input(ops.iter());

    while let Some(&op) = input.0.next() {
        let arg = input.u32();
        // A handle the caller may pass: held, released, or forged.
        let pick = |arg: u32, held: &[u64], released: &[u64]| match arg % 4 {
            0 | 1 if !held.is_empty() => held[arg as usize / 4 % held.len()],
            2 if !released.is_empty() => released[arg as usize / 4 % released.len()],
            _ => u64::from(arg) << 20 | u64::from(arg % 16),
        };
        match op % 16 {
            // rx_prepare, with descriptors of known, unknown and out-of-range regions.
            0..=2 => {
                let region = regions[usize::from(input.u8()) % regions.len()];
                let peer = peers[usize::from(input.u8()) % peers.len()];
                let len = u64::from(input.u8()) * 64;
                let offset = u64::from(input.u8()) * 256;
                let xop = u32::from(input.u8() % 3);
                let local = [rx_desc { region: dram, offset, len }];
                let remote = [rx_desc { region, offset: offset / 2, len }];
                let note = [op; 8];
                let (np, nl) = match arg % 3 {
                    0 => (null(), 0),
                    1 => (note.as_ptr(), note.len()),
                    _ => (note.as_ptr(), usize::from(input.u8())),
                };
                let nl = nl.min(note.len());
                let mut h = 0u64;
                // SAFETY: buffers with their true lengths; a writable out.
                let st = unsafe { rx_prepare(e, xop, local.as_ptr(), 1, peer, remote.as_ptr(), 1, np, nl, &mut h) };
                if st == rx_status::RX_OK {
                    held.push(h);
                    peer_of.push((h, peer));
                }
            }
            // rx_prepare_blocks: strided sets.
            3 => {
                let count = u32::from(input.u8() % 8);
                let block_len = u64::from(input.u8()) * 16;
                let peer = peers[usize::from(input.u8()) % peers.len()];
                let local = [rx_blocks { region: dram, offset: 0, block_len, stride: block_len * 2, ids: null(), count }];
                let ids = [1u32, 0, 3, 2, 5, 4, 7, 6];
                let remote = [rx_blocks {
                    region: regions[arg as usize % regions.len()],
                    offset: 0,
                    block_len,
                    stride: block_len,
                    ids: ids.as_ptr(),
                    count,
                }];
                let mut h = 0u64;
                // SAFETY: as above; `ids` holds `count` ids.
                let st =
                    unsafe { rx_prepare_blocks(e, 0, local.as_ptr(), 1, peer, remote.as_ptr(), 1, null(), 0, &mut h) };
                if st == rx_status::RX_OK {
                    held.push(h);
                    peer_of.push((h, peer));
                }
            }
            4 => {
                let h = pick(arg, &held, &released);
                // SAFETY: a live engine.
                if unsafe { rx_post(e, h) } == rx_status::RX_OK {
                    assert!(held.contains(&h), "posted a handle not held: {h:#x}");
                    if peer_of.iter().any(|&(x, p)| x == h && p == sim) {
                        posted_to_sim += 1;
                    }
                }
            }
            5 => {
                let h = pick(arg, &held, &released);
                let mut s = rx_xfer_status { state: 0, fail_source: 0, fail_code: 0 };
                // SAFETY: a live engine; a writable out.
                let st = unsafe { rx_get_status(e, h, &mut s) };
                assert_eq!(st == rx_status::RX_OK, held.contains(&h), "status of {h:#x}: {st:?}");
            }
            6 => {
                let h = pick(arg, &held, &released);
                let mut s = rx_xfer_status { state: 0, fail_source: 0, fail_code: 0 };
                // SAFETY: a live engine; a writable out.
                let _ = unsafe { rx_wait(e, h, 0, &mut s) };
            }
            7 => {
                let h = pick(arg, &held, &released);
                let mut r = 0u32;
                // SAFETY: a live engine; a writable out.
                let st = unsafe { rx_cancel(e, h, &mut r) };
                assert_eq!(st == rx_status::RX_OK, held.contains(&h), "cancel of {h:#x}: {st:?}");
            }
            8 => {
                let h = pick(arg, &held, &released);
                let timeout = [0, 1, 1000, u64::MAX][usize::from(input.u8() % 4)];
                // SAFETY: a live engine.
                let _ = unsafe { rx_set_deadline(e, h, timeout) };
                // And a report of its end in the completion queue (any state, any handle).
                // SAFETY: a live engine.
                let _ = unsafe { rx_report_completion(e, h, u64::from(arg)) };
            }
            9 => {
                let h = pick(arg, &held, &released);
                // SAFETY: a live engine.
                let st = unsafe { rx_release(e, h) };
                if let Some(i) = held.iter().position(|&x| x == h) {
                    assert_eq!(st, rx_status::RX_OK, "release of a held {h:#x}");
                    held.swap_remove(i);
                    released.push(h);
                } else {
                    assert_ne!(st, rx_status::RX_OK, "release of {h:#x}, not held, succeeded");
                }
            }
            // Lists: prepare, post (whole or by index), release twice.
            10 => {
                let len = u64::from(input.u8()) * 32;
                let d = [rx_desc { region: dram, offset: 0, len }, rx_desc { region: dram, offset: len, len }];
                let r = [
                    rx_desc { region: regions[arg as usize % 2], offset: 0, len },
                    rx_desc { region: file, offset: len, len },
                ];
                let mut list = 0u64;
                // SAFETY: buffers with their true lengths; a writable out.
                if unsafe { rx_prepare_list(e, 0, d.as_ptr(), 2, RX_PEER_SELF, r.as_ptr(), 2, &mut list) }
                    == rx_status::RX_OK
                {
                    lists.push(list);
                }
            }
            11 => {
                let list = match arg % 3 {
                    0 if !lists.is_empty() => lists[arg as usize / 3 % lists.len()],
                    1 if !dead_lists.is_empty() => dead_lists[arg as usize / 3 % dead_lists.len()],
                    _ => u64::from(arg),
                };
                let indices = [input.u32() % 4, 1, 0];
                let mut h = 0u64;
                // SAFETY: buffers with their true lengths; a writable out.
                let st = if op & 16 == 0 {
                    unsafe { rx_post_list(e, list, null(), 0, &mut h) }
                } else {
                    unsafe { rx_post_list_indices(e, list, indices.as_ptr(), indices.len(), null(), 0, &mut h) }
                };
                if st == rx_status::RX_OK {
                    assert!(lists.contains(&list));
                    held.push(h);
                    peer_of.push((h, RX_PEER_SELF));
                }
            }
            12 => {
                let list = match arg % 2 {
                    0 if !lists.is_empty() => lists.swap_remove(arg as usize / 2 % lists.len()),
                    _ if !dead_lists.is_empty() => dead_lists[arg as usize / 2 % dead_lists.len()],
                    _ => u64::from(arg),
                };
                let live = !dead_lists.contains(&list);
                // SAFETY: a live engine.
                let st = unsafe { rx_release_list(e, list) };
                if live && st == rx_status::RX_OK {
                    dead_lists.push(list);
                } else {
                    assert_ne!(st, rx_status::RX_OK, "a list released twice");
                }
            }
            13 => {
                let payload = [op; 24];
                let len = usize::from(input.u8()) % payload.len();
                let peer = peers[arg as usize % peers.len()];
                // SAFETY: a buffer with its true length.
                let st = unsafe { rx_notify(e, peer, payload.as_ptr(), len) };
                // A notification to the sim travels as a transfer of its own.
                if st == rx_status::RX_OK && peer == sim {
                    posted_to_sim += 1;
                }
            }
            14 => {
                let cap = arg as usize % (buf.len() + 1);
                let mut n = rx_notification { sender: 0, sender_engine: 0, handle: 0, len: 0 };
                let mut popped = false;
                // SAFETY: `cap` writable bytes; writable outs.
                let st = unsafe { rx_pop_notification(e, buf.as_mut_ptr(), cap, &mut n, &mut popped) };
                assert!(st != rx_status::RX_OK || !popped || n.len <= cap);
            }
            _ => match arg % 6 {
                0 => {
                    let mut done = 0usize;
                    // SAFETY: a live engine; a writable out.
                    assert_eq!(unsafe { rx_progress(e, &mut done) }, rx_status::RX_OK);
                }
                1 => {
                    // NULL engines and NULL outs are refused, never followed.
                    let mut h = 0u64;
                    // SAFETY: NULL is allowed and checked.
                    unsafe {
                        assert_eq!(rx_post(null(), 1), rx_status::RX_INVALID_ARGUMENT);
                        assert_eq!(rx_release(null(), 1), rx_status::RX_INVALID_ARGUMENT);
                        assert_eq!(rx_engine_stats(e, null_mut()), rx_status::RX_INVALID_ARGUMENT);
                        let d = [rx_desc { region: dram, offset: 0, len: 8 }];
                        assert_eq!(
                            rx_prepare(e, 0, null(), 1, sim, d.as_ptr(), 1, null(), 0, &mut h),
                            rx_status::RX_INVALID_ARGUMENT
                        );
                        assert_eq!(
                            rx_prepare(e, 0, d.as_ptr(), 1, sim, d.as_ptr(), 1, null(), 0, null_mut()),
                            rx_status::RX_INVALID_ARGUMENT
                        );
                    }
                }
                2 => {
                    let mut out = [0u8; 256];
                    let mut len = 0usize;
                    let cap = input.u8() as usize;
                    // SAFETY: `cap` writable bytes; a writable out.
                    let st = unsafe { rx_metrics(e, out.as_mut_ptr(), cap, &mut len) };
                    assert!(st == rx_status::RX_OK || st == rx_status::RX_BUFFER_TOO_SMALL, "{st:?}");
                }
                3 => {
                    // SAFETY: a live engine.
                    let _ = unsafe { rx_check_quiescent(e) };
                    // Completions: each one names a handle the caller holds, once.
                    let mut out = [rx_completion {
                        handle: 0,
                        tag: 0,
                        status: rx_xfer_status { state: 0, fail_source: 0, fail_code: 0 },
                    }; 4];
                    let cap = usize::from(input.u8() % 5);
                    let mut n = 0;
                    // SAFETY: `cap` <= 4 writable entries; a writable count.
                    assert_eq!(unsafe { rx_poll_completions(e, out.as_mut_ptr(), cap, &mut n) }, rx_status::RX_OK);
                    for c in &out[..n] {
                        assert!(held.contains(&c.handle) || released.contains(&c.handle), "{c:?}");
                        assert!(c.status.state >= 3, "a final status: {c:?}");
                    }
                }
                4 => {
                    // A region the caller does not own, and its own while in use.
                    let region = regions[usize::from(input.u8()) % regions.len()];
                    if region != dram && region != file {
                        // SAFETY: a live engine.
                        assert_ne!(unsafe { rx_deregister(e, region) }, rx_status::RX_OK);
                    }
                }
                _ => {
                    // SAFETY: a live engine.
                    unsafe { ringxfer_ffi::rx_progress(e, &mut 0) };
                }
            },
        }
        // The ledger agrees with what the caller holds, after every call.
        let s = stats(e);
        assert_eq!(s.acquired - s.freed, s.live, "{s:?}");
        assert!(s.live >= held.len() as u64, "{} held, ledger {s:?}", held.len());
        assert_eq!(s.prepared_lists, lists.len() as u64, "{s:?}");
        assert_eq!(s.registrations, 2, "{s:?}");
        assert_eq!(s.sim[7], 0, "a completion matched the wrong transfer: {s:?}");
    }

    // Release everything, let the transports let go, and check the whole ledger.
    // SAFETY: a live engine; handles and lists are checked by the engine.
    unsafe {
        for h in held {
            assert_eq!(rx_release(e, h), rx_status::RX_OK);
        }
        for list in lists {
            assert_eq!(rx_release_list(e, list), rx_status::RX_OK);
        }
        for _ in 0..2000 {
            rx_progress(e, &mut 0);
            let mut n = rx_notification { sender: 0, sender_engine: 0, handle: 0, len: 0 };
            let mut popped = false;
            while rx_pop_notification(e, buf.as_mut_ptr(), buf.len(), &mut n, &mut popped) == rx_status::RX_OK
                && popped
            {}
            let mut out = [rx_completion {
                handle: 0,
                tag: 0,
                status: rx_xfer_status { state: 0, fail_source: 0, fail_code: 0 },
            }; 8];
            let mut count = 0;
            while rx_poll_completions(e, out.as_mut_ptr(), out.len(), &mut count) == rx_status::RX_OK && count > 0 {}
            if rx_check_quiescent(e) == rx_status::RX_OK {
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        assert_eq!(rx_check_quiescent(e), rx_status::RX_OK, "{:?}", stats(e));
        let s = stats(e);
        assert_eq!(s.sim[1], posted_to_sim, "each transfer posted to the sim ended once: {s:?}");
        assert_eq!(s.sim[7], 0, "{s:?}");
        assert_eq!(rx_deregister(e, file), rx_status::RX_OK);
        assert_eq!(stats(e).open_files, 0);
        rx_engine_free(e);
    }
});
