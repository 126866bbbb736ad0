//! What an idle fabric progress thread costs: an initiator with a progress thread
//! posts 1,000 1 MiB WRITEs over tcp to a peer that stops progressing after the
//! handshake (a stalled peer), then the thread's CPU time is read from
//! `/proc/self/task/*/stat` over 5 s. Needs libfabric with the tcp provider.
//!
//! `cargo run --release --example idle_cpu`
use ringxfer::fabric::FabricConfig;
use ringxfer::{Config, Desc, Engine, Op};
use std::time::Duration;

/// User + system clock ticks of this process's threads named `name`.
fn cpu_of(name: &str) -> u64 {
    let mut total = 0;
    for t in std::fs::read_dir("/proc/self/task").unwrap() {
        let p = t.unwrap().path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap();
        if comm.trim() == name {
            let stat = std::fs::read_to_string(p.join("stat")).unwrap();
            let f: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
            total += f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        }
    }
    total
}

fn main() {
    let cfg = |name: &str, pt: bool| Config {
        name: name.into(),
        capacity: 1024,
        fabric: Some(FabricConfig {
            provider: Some("tcp".into()),
            progress_thread: pt,
            ..FabricConfig::default()
        }),
        ..Config::default()
    };
    let a = Engine::new(cfg("a", true)).unwrap();
    let b = Engine::new(cfg("b", false)).unwrap();
    let src = a.alloc_region(1 << 20).unwrap();
    let dst = b.alloc_region(1 << 20).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let peer = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                b.progress();
            }
        });
        let p = a.load_peer(&b.local_metadata().unwrap()).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        p
    });
    let mut hs = Vec::new();
    for _ in 0..1000 {
        let h = a
            .prepare(
                Op::Write,
                &[Desc::new(src, 0, 1 << 20)],
                peer,
                &[Desc::new(dst, 0, 1 << 20)],
                None,
            )
            .unwrap();
        a.post(h).unwrap();
        hs.push(h);
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_of("ringxfer-progre");
    std::thread::sleep(Duration::from_secs(5));
    let after = cpu_of("ringxfer-progre");
    let st = a.stats();
    // Clock ticks are 1/100 s: ticks over 5 s / 5 = percent of a core.
    println!(
        "in flight {}, sleeps in the wait descriptor {}, progress thread CPU {:.1} % of a core",
        st.ring.live,
        st.fabric.sleeps,
        (after - before) as f64 / 5.0
    );
    // The peer never completes them: leave without the drop's 2 s of patience.
    std::process::exit(0);
}
