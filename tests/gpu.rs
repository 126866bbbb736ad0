//! The cuda transport on a real GPU. Skipped, saying why, on machines without a CUDA
//! driver or device (like this project's CI); `RINGXFER_REQUIRE_GPU=1` turns the skip
//! into a failure, for GPU runners.

#![cfg(feature = "cuda")]

use std::time::Duration;

use ringxfer::{Config, CudaConfig, Desc, Engine, Error, Op, Status};

#[path = "support/child.rs"]
mod child;
#[path = "support/skip.rs"]
mod skip;

/// An engine with CUDA, or `None` (a `SKIPPED:` line) when there is no GPU and none is
/// required.
fn gpu_engine() -> Option<Engine> {
    let config = Config {
        name: "gpu".into(),
        capacity: 256,
        cuda: Some(CudaConfig {
            // Set for the processes of gpu_vmm_memory_of_another_process.
            vmm: std::env::var_os("RINGXFER_TEST_VMM").is_some(),
            ..CudaConfig::default()
        }),
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

/// GPU memory of another process on the same GPU, through CUDA IPC: this test runs
/// its own binary again as the owner (`gpu_owner_child`), loads it as a peer, and
/// moves 4 KiB, 1 MiB and 64 MiB from host memory here into the owner's GPU memory,
/// from there into this engine's GPU memory, and back to host memory, checking the
/// bytes and the notification the owner pops. Skipped like the test above where there
/// is no GPU.
#[test]
fn gpu_memory_of_another_process() {
    across_processes(&[]);
}

/// The same with the owner's GPU memory made with the VMM API (`CudaConfig::vmm`),
/// shared as a file descriptor that this process fetches with `pidfd_getfd`.
#[test]
fn gpu_vmm_memory_of_another_process() {
    across_processes(&[("RINGXFER_TEST_VMM", "1")]);
}

fn across_processes(owner_env: &[(&str, &str)]) {
    use std::io::Write;

    let Some(e) = gpu_engine() else { return };
    let (mut owner, mut input, mut out) = child::spawn_test_with("gpu_owner_child", owner_env);
    let remote_gpu = ringxfer::RegionId::from_raw(child::read_tagged(&mut out, "gpu ").parse().unwrap());
    let blob = child::unhex(&child::read_tagged(&mut out, "md "));
    let peer = e.load_peer(&blob).unwrap();
    assert!(e.stats().cuda_ipc_mappings >= 1);

    let host = e.alloc_region(64 << 20).unwrap();
    let back = e.alloc_region(64 << 20).unwrap();
    let gpu = e.alloc_vram(64 << 20).unwrap();
    let run = |op, local: ringxfer::RegionId, remote: ringxfer::RegionId, size: u64, notif: Option<&[u8]>| {
        let h = e
            .prepare(
                op,
                &[Desc::new(local, 0, size)],
                peer,
                &[Desc::new(remote, 0, size)],
                notif,
            )
            .unwrap();
        e.post(h).unwrap();
        assert_eq!(
            e.wait(h, Duration::from_secs(30)).unwrap(),
            Status::Done,
            "{op:?} {size}"
        );
        e.release(h).unwrap();
    };
    for size in [4096usize, 1 << 20, 64 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 29 + size) as u8).collect();
        e.write_region(host, 0, &data).unwrap();
        run(Op::Write, host, remote_gpu, size as u64, Some(b"landed"));
        run(Op::Read, gpu, remote_gpu, size as u64, None);
        run(Op::Write, gpu, remote_gpu, size as u64, None);
        run(Op::Read, back, remote_gpu, size as u64, None);
        let mut got = vec![0u8; size];
        e.read_region(back, 0, &mut got).unwrap();
        assert!(got == data, "{size} bytes through another process's GPU memory");
    }
    writeln!(input, "pop").unwrap();
    assert_eq!(child::read_tagged(&mut out, "notes "), "3");
    writeln!(input, "quit").unwrap();
    drop(input);
    assert!(owner.wait().unwrap().success());
    e.check_quiescent().unwrap();
}

#[test]
#[ignore = "run by gpu_memory_of_another_process"]
fn gpu_owner_child() {
    let Some(e) = gpu_engine() else { return };
    let gpu = e.alloc_vram(64 << 20).unwrap();
    // The harness printed "test gpu_owner_child ... " without a newline.
    println!(
        "\ngpu {}\nmd {}",
        gpu.to_raw(),
        child::hex(&e.local_metadata().unwrap())
    );
    let mut note = [0u8; 256];
    for line in std::io::stdin().lines() {
        match line.unwrap().as_str() {
            "pop" => {
                let mut n = 0;
                while e.pop_notification(&mut note).unwrap().is_some() {
                    n += 1;
                }
                println!("notes {n}");
            }
            _ => break,
        }
    }
    e.deregister(gpu).unwrap();
}
