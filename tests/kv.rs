//! The key-value layer over registered files.

use std::time::Duration;

use ringxfer::{Config, Desc, Engine, Error, KvConfig, KvStore};

/// One test at a time: one of them counts the process's open descriptors.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ringxfer-kv-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config(dir: std::path::PathBuf, files: usize, blocks: u64) -> KvConfig {
    KvConfig {
        dir,
        files,
        blocks_per_file: blocks,
        block_size: 16 << 10,
        max_key_len: 64,
        sync: false,
        timeout: Duration::from_secs(30),
    }
}

fn engine() -> Engine {
    Engine::new(Config {
        name: "kv".into(),
        capacity: 64,
        ..Config::default()
    })
    .unwrap()
}

#[test]
fn set_get_replace_remove() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = dir("basic");
    let e = engine();
    let kv = KvStore::create(&e, config(d.clone(), 2, 8)).unwrap();
    assert_eq!((kv.capacity(), kv.len()), (16, 0));
    let mem = e.alloc_region(64 << 10).unwrap();
    e.write_region(mem, 0, b"the first value").unwrap();
    kv.set("layer0/block7", Desc::new(mem, 0, 15)).unwrap();
    assert!(kv.exists("layer0/block7") && !kv.exists("layer0/block8"));
    assert_eq!(kv.get("layer0/block8", Desc::new(mem, 4096, 4096)).unwrap(), None);
    assert_eq!(kv.get("layer0/block7", Desc::new(mem, 4096, 4096)).unwrap(), Some(15));
    let mut out = [0u8; 15];
    e.read_region(mem, 4096, &mut out).unwrap();
    assert_eq!(&out, b"the first value");
    // Replacing reads back the new value; the old block is reused.
    e.write_region(mem, 0, b"second").unwrap();
    kv.set("layer0/block7", Desc::new(mem, 0, 6)).unwrap();
    assert_eq!(kv.get("layer0/block7", Desc::new(mem, 8192, 4096)).unwrap(), Some(6));
    let mut out = [0u8; 6];
    e.read_region(mem, 8192, &mut out).unwrap();
    assert_eq!(&out, b"second");
    assert_eq!(kv.len(), 1);
    assert!(kv.remove("layer0/block7") && !kv.remove("layer0/block7"));
    assert!(kv.is_empty());
    // Every block is free again: 16 keys fit, the 17th does not.
    for i in 0..16 {
        kv.set(&format!("k{i}"), Desc::new(mem, 0, 16 << 10)).unwrap();
    }
    assert_eq!(
        kv.set("one too many", Desc::new(mem, 0, 1)),
        Err(Error::KvFull { capacity: 16 })
    );
    assert!(matches!(
        kv.set("", Desc::new(mem, 0, 1)),
        Err(Error::KeyTooLong { .. })
    ));
    assert!(matches!(
        kv.set(&"x".repeat(65), Desc::new(mem, 0, 1)),
        Err(Error::KeyTooLong { len: 65, max: 64 })
    ));
    assert!(matches!(
        kv.set("k0", Desc::new(mem, 0, (16 << 10) + 1)),
        Err(Error::ValueTooLarge { .. })
    ));
    assert!(matches!(
        kv.get("k0", Desc::new(mem, 0, 100)),
        Err(Error::ValueTooLarge { .. })
    ));
    let mut lens = [None; 3];
    kv.batch_get(
        &[
            ("k1", Desc::new(mem, 0, 16 << 10)),
            ("nope", Desc::new(mem, 0, 1)),
            ("k2", Desc::new(mem, 16 << 10, 16 << 10)),
        ],
        &mut lens,
    )
    .unwrap();
    assert_eq!(lens, [Some(16 << 10), None, Some(16 << 10)]);
    let s = e.stats();
    assert_eq!(
        (s.ring.live, s.pins, s.open_files),
        (0, 0, 2),
        "two files, whatever the number of keys"
    );
    drop(kv);
    assert_eq!(e.stats().open_files, 0, "dropping the store closes its files");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn four_threads_set_and_get_with_verification() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = dir("threads");
    let e = engine();
    let kv = KvStore::create(&e, config(d.clone(), 2, 256)).unwrap();
    let fds_before = std::fs::read_dir("/proc/self/fd").unwrap().count();
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let (e, kv) = (&e, &kv);
            s.spawn(move || {
                let mem = e.alloc_region(32 << 10).unwrap();
                for i in 0..500u32 {
                    // Own keys, and one shared key everyone overwrites.
                    let key = if i % 5 == 0 {
                        "shared".to_string()
                    } else {
                        format!("t{t}/k{}", i % 50)
                    };
                    let value = [t, (i % 251) as u8, (i >> 8) as u8, 0xAB];
                    let block: Vec<u8> = value.iter().copied().cycle().take(4096).collect();
                    e.write_region(mem, 0, &block).unwrap();
                    kv.set(&key, Desc::new(mem, 0, 4096)).unwrap();
                    let got = kv.get(&key, Desc::new(mem, 16 << 10, 16 << 10)).unwrap().unwrap();
                    assert_eq!(got, 4096);
                    let mut back = vec![0u8; 4096];
                    e.read_region(mem, 16 << 10, &mut back).unwrap();
                    // A shared key may hold another thread's value, but always a whole one.
                    assert!(back.chunks(4).all(|c| c == &back[..4]), "torn value under {key}");
                    if key != "shared" {
                        assert_eq!(back, block, "{key}");
                    }
                }
            });
        }
    });
    assert_eq!(kv.len(), 4 * 40 + 1);
    assert_eq!(
        std::fs::read_dir("/proc/self/fd").unwrap().count(),
        fds_before,
        "no descriptor per key"
    );
    let s = e.stats();
    assert_eq!((s.ring.live, s.pins), (0, 0));
    drop(kv);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn bad_configs_are_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let e = engine();
    let d = dir("bad");
    for c in [
        KvConfig {
            files: 0,
            ..config(d.clone(), 1, 1)
        },
        KvConfig {
            block_size: 0,
            ..config(d.clone(), 1, 1)
        },
        KvConfig {
            max_key_len: 0,
            ..config(d.clone(), 1, 1)
        },
        KvConfig {
            max_key_len: 4096,
            ..config(d.clone(), 1, 1)
        },
        config(d.clone(), 1 << 13, 1 << 12),
    ] {
        assert!(matches!(KvStore::create(&e, c), Err(Error::InvalidConfig { .. })));
    }
    assert_eq!(e.stats().open_files, 0);
    let _ = std::fs::remove_dir_all(d);
}
