//! The cuda transport on a real GPU. Skipped, saying why, on machines without a CUDA
//! driver or device (like this project's CI); `RINGXFER_REQUIRE_GPU=1` turns the skip
//! into a failure, for GPU runners.

#![cfg(feature = "cuda")]

use std::time::Duration;

use ringxfer::{Config, CudaConfig, Desc, Engine, Error, Op, Status};

#[path = "support/skip.rs"]
mod skip;

/// An engine with CUDA, or `None` (a `SKIPPED:` line) when there is no GPU and none is
/// required.
fn gpu_engine() -> Option<Engine> {
    let config = Config {
        name: "gpu".into(),
        capacity: 256,
        cuda: Some(CudaConfig::default()),
        ..Config::default()
    };
    match Engine::new(config) {
        Ok(e) => Some(e),
        Err(Error::CudaUnavailable { reason }) => {
            skip::skip(
                skip::REQUIRE_GPU,
                &format!("no GPU ({reason})"),
                "run on a machine with an NVIDIA GPU and its driver",
            );
            None
        }
        Err(e) => panic!("CUDA engine: {e}"),
    }
}

#[test]
fn host_to_device_and_back_on_a_real_gpu() {
    let Some(e) = gpu_engine() else { return };
    let me = e.local_peer();
    let host = e.alloc_region(64 << 20).unwrap();
    let back = e.alloc_region(64 << 20).unwrap();
    let gpu = e.alloc_vram(64 << 20).unwrap();
    let gpu2 = e.alloc_vram(64 << 20).unwrap();
    for size in [4096usize, 1 << 20, 64 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 13 + size) as u8).collect();
        e.write_region(host, 0, &data).unwrap();
        for (op, local, remote) in [(Op::Write, host, gpu), (Op::Read, back, gpu)] {
            let h = e
                .prepare(
                    op,
                    &[Desc::new(local, 0, size as u64)],
                    me,
                    &[Desc::new(remote, 0, size as u64)],
                    None,
                )
                .unwrap();
            e.post(h).unwrap();
            assert_eq!(e.wait(h, Duration::from_secs(30)).unwrap(), Status::Done);
            e.release(h).unwrap();
        }
        let h = e
            .prepare(
                Op::Write,
                &[Desc::new(gpu, 0, size as u64)],
                me,
                &[Desc::new(gpu2, 0, size as u64)],
                None,
            )
            .unwrap();
        e.post(h).unwrap();
        assert_eq!(e.wait(h, Duration::from_secs(30)).unwrap(), Status::Done);
        e.release(h).unwrap();
        let mut out = vec![0u8; size];
        e.read_region(back, 0, &mut out).unwrap();
        assert!(out == data, "{size} bytes through the GPU");
    }
    let events = e.stats().cuda_events;
    for i in 0..10_000u64 {
        let off = (i % 1024) * 4096;
        let h = e
            .prepare(
                Op::Write,
                &[Desc::new(host, off, 4096)],
                me,
                &[Desc::new(gpu, off, 4096)],
                None,
            )
            .unwrap();
        e.post(h).unwrap();
        assert_eq!(e.wait(h, Duration::from_secs(30)).unwrap(), Status::Done);
        e.release(h).unwrap();
    }
    assert_eq!(e.stats().cuda_events, events, "no event created per transfer");
    e.check_quiescent().unwrap();
}
