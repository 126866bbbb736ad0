//! The metadata blob: round trips, the documented byte layout, and rejection of every
//! kind of damaged or hostile input with a typed error and without a panic.

use proptest::prelude::*;
use ringxfer::wire::metadata::{
    BackendInfo, BackendKind, MAGIC, MAX_BACKENDS, MAX_BLOB_BYTES, MAX_CONN_BYTES, MAX_NAME_BYTES, MAX_REGIONS,
    MemKind, Metadata, MetadataError, RegionInfo, VERSION,
};

const HEADER: usize = 16;

/// Wraps any body in a correct header (magic, version, zero flags, length, crc), so
/// the body parser sees it.
fn seal(body: &[u8]) -> Vec<u8> {
    let total = u32::try_from(HEADER + body.len()).expect("test body fits in u32");
    let mut blob = Vec::with_capacity(HEADER + body.len());
    blob.extend_from_slice(&MAGIC);
    blob.extend_from_slice(&VERSION.to_le_bytes());
    blob.extend_from_slice(&0u16.to_le_bytes());
    blob.extend_from_slice(&total.to_le_bytes());
    blob.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    blob.extend_from_slice(body);
    blob
}

/// Body prefix up to (not including) the backend count: name, engine id, process id.
fn body_head(name: &[u8]) -> Vec<u8> {
    let mut b = vec![u8::try_from(name.len()).unwrap()];
    b.extend_from_slice(name);
    b.extend_from_slice(&9u64.to_le_bytes());
    b.extend_from_slice(&77u32.to_le_bytes());
    b
}

/// One encoded region.
fn region_bytes(addr: u64, len: u64, kind: u8) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&addr.to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b.push(kind);
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&5u64.to_le_bytes());
    assert_eq!(b.len(), 37);
    b
}

/// A body with no backends and the given region count followed by `regions`.
fn body_with_regions(count: u32, regions: &[u8]) -> Vec<u8> {
    let mut b = body_head(b"e");
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(regions);
    b
}

fn region(addr: u64, len: u64) -> RegionInfo {
    RegionInfo {
        id: 3,
        addr,
        len,
        kind: MemKind::Vram,
        device: 1,
        remote_key: 0xfeed,
    }
}

fn sample() -> Metadata {
    Metadata {
        engine_name: "décode-7 ✓".to_owned(),
        engine_id: u64::MAX,
        process_id: 4242,
        backends: vec![
            BackendInfo {
                kind: BackendKind::Local,
                conn: b"/run/rx.sock".to_vec(),
            },
            BackendInfo {
                kind: BackendKind::Fabric,
                conn: vec![],
            },
            BackendInfo {
                kind: BackendKind::Cuda,
                conn: vec![0xab; 64],
            },
            BackendInfo {
                kind: BackendKind::File,
                conn: vec![0; MAX_CONN_BYTES],
            },
        ],
        regions: vec![
            RegionInfo {
                id: 0,
                addr: 0,
                len: 1,
                kind: MemKind::Dram,
                device: 0,
                remote_key: 0,
            },
            RegionInfo {
                id: 1,
                addr: 0x7f00_0000_0000,
                len: 1 << 30,
                kind: MemKind::Vram,
                device: 7,
                remote_key: 9,
            },
            // addr + len == u64::MAX exactly: the largest allowed end.
            RegionInfo {
                id: u64::MAX,
                addr: u64::MAX - 10,
                len: 10,
                kind: MemKind::File,
                device: u32::MAX,
                remote_key: u64::MAX,
            },
        ],
    }
}

fn decode_err(blob: &[u8]) -> MetadataError {
    Metadata::decode(blob).expect_err("blob must be rejected")
}

#[test]
fn round_trip_hand_built_and_header_fields() {
    let md = sample();
    let blob = md.encode().unwrap();
    assert_eq!(Metadata::decode(&blob), Ok(md.clone()));
    assert_eq!(blob[0..4], MAGIC);
    assert_eq!(u16::from_le_bytes([blob[4], blob[5]]), VERSION);
    assert_eq!(u16::from_le_bytes([blob[6], blob[7]]), 0, "flags");
    assert_eq!(u32::from_le_bytes(blob[8..12].try_into().unwrap()) as usize, blob.len());
    assert_eq!(
        u32::from_le_bytes(blob[12..16].try_into().unwrap()),
        crc32fast::hash(&blob[16..])
    );
    let conn: usize = md.backends.iter().map(|b| 3 + b.conn.len()).sum();
    assert_eq!(
        blob.len(),
        16 + 1 + md.engine_name.len() + 8 + 4 + 2 + conn + 4 + 37 * md.regions.len()
    );
}

#[test]
fn round_trip_at_every_limit() {
    let md = Metadata {
        engine_name: "é".repeat(MAX_NAME_BYTES / 2) + "x",
        engine_id: 0,
        process_id: 0,
        backends: (0..MAX_BACKENDS)
            .map(|i| BackendInfo {
                kind: BackendKind::Fabric,
                conn: vec![i as u8; MAX_CONN_BYTES],
            })
            .collect(),
        regions: vec![],
    };
    assert_eq!(md.engine_name.len(), MAX_NAME_BYTES);
    assert_eq!(Metadata::decode(&md.encode().unwrap()), Ok(md));
}

#[test]
fn encoding_matches_the_documented_layout() {
    let md = Metadata {
        engine_name: "ab".to_owned(),
        engine_id: 0x0102_0304_0506_0708,
        process_id: 0x0a0b_0c0d,
        backends: vec![BackendInfo {
            kind: BackendKind::Cuda,
            conn: vec![0xee],
        }],
        regions: vec![RegionInfo {
            id: 0x11,
            addr: 0x22,
            len: 0x33,
            kind: MemKind::Vram,
            device: 0x44,
            remote_key: 0x55,
        }],
    };
    #[rustfmt::skip]
    let body: Vec<u8> = [
        &[2u8, b'a', b'b'][..],
        &[8, 7, 6, 5, 4, 3, 2, 1],
        &[0x0d, 0x0c, 0x0b, 0x0a],
        &[1, 0],                     // backend count
        &[3, 1, 0, 0xee],            // kind, conn len, conn
        &[1, 0, 0, 0],               // region count
        &[0x11, 0, 0, 0, 0, 0, 0, 0],
        &[0x22, 0, 0, 0, 0, 0, 0, 0],
        &[0x33, 0, 0, 0, 0, 0, 0, 0],
        &[2],
        &[0x44, 0, 0, 0],
        &[0x55, 0, 0, 0, 0, 0, 0, 0],
    ]
    .concat();
    // 16 header + 3 name + 8 + 4 + 2 + 4 backend + 4 + 37 region = 78 bytes.
    let expected = seal(&body);
    assert_eq!(&expected[..12], b"RXMD\x01\x00\x00\x00\x4e\x00\x00\x00");
    assert_eq!(md.encode().unwrap(), expected);
}

#[test]
fn every_truncation_is_a_truncated_error() {
    let blob = sample().encode().unwrap();
    for k in 0..blob.len() {
        let needed = if k < HEADER { HEADER } else { blob.len() };
        assert_eq!(
            decode_err(&blob[..k]),
            MetadataError::Truncated { needed, available: k },
            "prefix of {k} bytes"
        );
    }
}

#[test]
fn every_single_bit_flip_is_rejected() {
    let blob = sample().encode().unwrap();
    for byte in 0..blob.len() {
        for bit in 0..8 {
            let mut bad = blob.clone();
            bad[byte] ^= 1 << bit;
            let err = decode_err(&bad);
            let expected_kind = match byte {
                0..4 => matches!(err, MetadataError::BadMagic { .. }),
                4..6 => matches!(err, MetadataError::UnsupportedVersion { found, supported: 1 } if found != 1),
                6..8 => matches!(err, MetadataError::Malformed { .. }),
                8..12 => matches!(
                    err,
                    MetadataError::Truncated { .. }
                        | MetadataError::TrailingBytes { .. }
                        | MetadataError::Malformed { .. }
                ),
                _ => matches!(err, MetadataError::ChecksumMismatch { .. }),
            };
            assert!(expected_kind, "flip of bit {bit} in byte {byte} gave {err:?}");
        }
    }
}

#[test]
fn bad_magic() {
    let mut blob = sample().encode().unwrap();
    blob[..4].copy_from_slice(b"RXMX");
    assert_eq!(decode_err(&blob), MetadataError::BadMagic { found: *b"RXMX" });
    // Too short for a header: truncation is reported before the magic.
    assert_eq!(
        decode_err(b"GIF89a"),
        MetadataError::Truncated {
            needed: HEADER,
            available: 6
        }
    );
}

#[test]
fn version_2_is_unsupported() {
    let mut blob = sample().encode().unwrap();
    blob[4..6].copy_from_slice(&2u16.to_le_bytes());
    assert_eq!(
        decode_err(&blob),
        MetadataError::UnsupportedVersion { found: 2, supported: 1 }
    );
}

#[test]
fn nonzero_flags_are_malformed() {
    let mut blob = sample().encode().unwrap();
    blob[6..8].copy_from_slice(&0x8000u16.to_le_bytes());
    assert!(matches!(decode_err(&blob), MetadataError::Malformed { what } if what.contains("flags")));
}

#[test]
fn declared_length_checks() {
    let blob = sample().encode().unwrap();
    // Shorter than the header itself.
    let mut bad = blob.clone();
    bad[8..12].copy_from_slice(&3u32.to_le_bytes());
    assert!(matches!(decode_err(&bad), MetadataError::Malformed { what } if what.contains("shorter than the header")));
    // Claims far more than there is.
    bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        decode_err(&bad),
        MetadataError::Truncated {
            needed: u32::MAX as usize,
            available: blob.len()
        }
    );
    // Trailing bytes after a valid blob.
    let mut long = blob.clone();
    long.extend_from_slice(&[0, 0, 0]);
    assert_eq!(decode_err(&long), MetadataError::TrailingBytes { extra: 3 });
}

#[test]
fn blob_over_the_size_limit_is_too_large() {
    let body = vec![0u8; MAX_BLOB_BYTES + 1 - HEADER];
    let blob = seal(&body);
    assert_eq!(blob.len(), MAX_BLOB_BYTES + 1);
    assert_eq!(
        decode_err(&blob),
        MetadataError::TooLarge {
            what: "blob size (bytes)",
            len: MAX_BLOB_BYTES + 1,
            max: MAX_BLOB_BYTES
        }
    );
}

#[test]
fn corrupted_body_is_a_checksum_mismatch() {
    let mut blob = sample().encode().unwrap();
    let stored = u32::from_le_bytes(blob[12..16].try_into().unwrap());
    let last = blob.len() - 1;
    blob[last] = blob[last].wrapping_add(1);
    assert_eq!(
        decode_err(&blob),
        MetadataError::ChecksumMismatch {
            expected: stored,
            computed: crc32fast::hash(&blob[16..])
        }
    );
}

#[test]
fn four_billion_regions_in_a_tiny_body_fail_fast() {
    let err = decode_err(&seal(&body_with_regions(u32::MAX, &[])));
    assert_eq!(
        err,
        MetadataError::TooLarge {
            what: "region count",
            len: u32::MAX as usize,
            max: MAX_REGIONS
        }
    );
    // Within the count limit but not within the bytes present: refused before any
    // allocation sized by the count.
    let body = body_with_regions(MAX_REGIONS as u32, &region_bytes(0, 1, 1));
    let blob = seal(&body);
    assert_eq!(
        decode_err(&blob),
        MetadataError::Truncated {
            needed: blob.len() - 37 + 37 * MAX_REGIONS,
            available: blob.len()
        }
    );
}

#[test]
fn backend_limits_on_decode() {
    let mut body = body_head(b"e");
    body.extend_from_slice(&u16::MAX.to_le_bytes());
    assert_eq!(
        decode_err(&seal(&body)),
        MetadataError::TooLarge {
            what: "backend count",
            len: u16::MAX as usize,
            max: MAX_BACKENDS
        }
    );

    let mut body = body_head(b"e");
    body.extend_from_slice(&(MAX_BACKENDS as u16).to_le_bytes());
    body.extend_from_slice(&[1, 0, 0]);
    assert!(matches!(decode_err(&seal(&body)), MetadataError::Truncated { .. }));

    let mut body = body_head(b"e");
    body.extend_from_slice(&1u16.to_le_bytes());
    body.push(BackendKind::Local as u8);
    body.extend_from_slice(&(MAX_CONN_BYTES as u16 + 1).to_le_bytes());
    body.extend_from_slice(&vec![0; MAX_CONN_BYTES + 1]);
    body.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(
        decode_err(&seal(&body)),
        MetadataError::TooLarge {
            what: "backend connection info length (bytes)",
            len: MAX_CONN_BYTES + 1,
            max: MAX_CONN_BYTES
        }
    );
}

#[test]
fn invalid_utf8_name_is_malformed() {
    let mut body = body_head(&[b'o', 0xff, 0xfe]);
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    assert!(matches!(decode_err(&seal(&body)), MetadataError::Malformed { what } if what.contains("UTF-8")));
}

#[test]
fn unknown_backend_kind_is_malformed() {
    for kind in [0u8, 5, 0xff] {
        let mut body = body_head(b"e");
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&[kind, 0, 0]);
        body.extend_from_slice(&0u32.to_le_bytes());
        let err = decode_err(&seal(&body));
        assert!(
            matches!(err, MetadataError::Malformed { what } if what.contains("backend kind")),
            "{kind}: {err:?}"
        );
    }
}

#[test]
fn bad_regions_are_malformed() {
    let cases: [(&[u8], &str); 4] = [
        (&region_bytes(u64::MAX - 9, 10, 1), "overflows"),
        (&region_bytes(u64::MAX, 1, 1), "overflows"),
        (&region_bytes(4096, 0, 1), "length zero"),
        (&region_bytes(4096, 1, 4), "memory kind"),
    ];
    for (region, needle) in cases {
        let err = decode_err(&seal(&body_with_regions(1, region)));
        assert!(
            matches!(err, MetadataError::Malformed { what } if what.contains(needle)),
            "{needle}: {err:?}"
        );
    }
    // The largest valid end decodes.
    let ok = Metadata::decode(&seal(&body_with_regions(1, &region_bytes(u64::MAX - 10, 10, 3)))).unwrap();
    assert_eq!(
        (ok.regions[0].addr, ok.regions[0].len, ok.regions[0].kind),
        (u64::MAX - 10, 10, MemKind::File)
    );
}

#[test]
fn bytes_after_the_last_region_are_malformed() {
    let mut regions = region_bytes(0, 1, 1);
    regions.push(0);
    let err = decode_err(&seal(&body_with_regions(1, &regions)));
    assert_eq!(
        err,
        MetadataError::Malformed {
            what: "bytes after the last region"
        }
    );
}

#[test]
fn seal_matches_encode() {
    let blob = sample().encode().unwrap();
    assert_eq!(seal(&blob[HEADER..]), blob);
}

#[test]
fn encode_refuses_what_exceeds_a_limit() {
    let too_long_name = Metadata {
        engine_name: "n".repeat(MAX_NAME_BYTES + 1),
        ..sample()
    };
    assert_eq!(
        too_long_name.encode(),
        Err(MetadataError::TooLarge {
            what: "engine name length (bytes)",
            len: 256,
            max: MAX_NAME_BYTES
        })
    );

    let mut long_conn = sample();
    long_conn.backends[1].conn = vec![1; MAX_CONN_BYTES + 1];
    assert_eq!(
        long_conn.encode(),
        Err(MetadataError::TooLarge {
            what: "backend connection info length (bytes)",
            len: MAX_CONN_BYTES + 1,
            max: MAX_CONN_BYTES
        })
    );

    let mut many_backends = sample();
    many_backends.backends = vec![
        BackendInfo {
            kind: BackendKind::Local,
            conn: vec![]
        };
        MAX_BACKENDS + 1
    ];
    assert!(matches!(
        many_backends.encode(),
        Err(MetadataError::TooLarge {
            what: "backend count",
            ..
        })
    ));

    let mut many_regions = sample();
    many_regions.regions = vec![region(0, 1); MAX_REGIONS + 1];
    assert!(matches!(
        many_regions.encode(),
        Err(MetadataError::TooLarge {
            what: "region count",
            ..
        })
    ));

    // Under the region limit, over the blob size limit.
    let mut big = sample();
    big.regions = vec![region(0, 1); MAX_BLOB_BYTES / 37 + 1];
    assert!(matches!(
        big.encode(),
        Err(MetadataError::TooLarge { what: "blob size (bytes)", len, max: MAX_BLOB_BYTES }) if len > MAX_BLOB_BYTES
    ));
}

#[test]
fn encode_refuses_regions_decode_would_reject() {
    for bad in [region(10, 0), region(u64::MAX, 1), region(1, u64::MAX)] {
        let md = Metadata {
            regions: vec![bad],
            ..sample()
        };
        assert!(matches!(md.encode(), Err(MetadataError::Malformed { .. })), "{bad:?}");
    }
}

#[test]
fn error_messages_carry_the_facts() {
    let cases = [
        (
            MetadataError::Truncated {
                needed: 100,
                available: 40,
            },
            &["truncated", "100", "40"][..],
        ),
        (
            MetadataError::BadMagic { found: *b"abcd" },
            &["not a ringxfer metadata blob", "61"],
        ),
        (
            MetadataError::UnsupportedVersion { found: 2, supported: 1 },
            &["version 2", "version 1"],
        ),
        (
            MetadataError::ChecksumMismatch {
                expected: 0xdead_beef,
                computed: 1,
            },
            &["checksum", "0xdeadbeef"],
        ),
        (
            MetadataError::TooLarge {
                what: "region count",
                len: 9,
                max: 8,
            },
            &["region count", "9", "8"],
        ),
        (MetadataError::TrailingBytes { extra: 5 }, &["5 extra bytes"]),
    ];
    for (err, needles) in cases {
        let msg = err.to_string();
        for needle in needles {
            assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        }
    }
}

fn arb_region() -> impl Strategy<Value = RegionInfo> {
    let kind = prop_oneof![Just(MemKind::Dram), Just(MemKind::Vram), Just(MemKind::File)];
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        kind,
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(|(id, addr, len, kind, device, remote_key)| {
            let len = 1 + len % (u64::MAX - addr).max(1);
            let addr = addr.min(u64::MAX - len);
            RegionInfo {
                id,
                addr,
                len,
                kind,
                device,
                remote_key,
            }
        })
}

fn arb_backend() -> impl Strategy<Value = BackendInfo> {
    let kind = prop_oneof![
        Just(BackendKind::Local),
        Just(BackendKind::Fabric),
        Just(BackendKind::Cuda),
        Just(BackendKind::File)
    ];
    (kind, prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(kind, conn)| BackendInfo { kind, conn })
}

fn arb_metadata() -> impl Strategy<Value = Metadata> {
    (
        "\\PC{0,60}",
        any::<u64>(),
        any::<u32>(),
        prop::collection::vec(arb_backend(), 0..4),
        prop::collection::vec(arb_region(), 0..50),
    )
        .prop_map(|(engine_name, engine_id, process_id, backends, regions)| Metadata {
            engine_name,
            engine_id,
            process_id,
            backends,
            regions,
        })
}

/// If `blob` decodes, it is canonical: re-encoding gives the same bytes.
fn assert_canonical_if_valid(blob: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(md) = Metadata::decode(blob) {
        let again = md.encode();
        prop_assert_eq!(again.as_deref(), Ok(blob));
    }
    Ok(())
}

proptest! {
    #[test]
    fn round_trip_generated(md in arb_metadata()) {
        let blob = md.encode().unwrap();
        prop_assert_eq!(Metadata::decode(&blob), Ok(md));
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        assert_canonical_if_valid(&bytes)?;
    }

    #[test]
    fn random_bytes_behind_a_valid_header_prefix_never_panic(
        tail in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut blob = b"RXMD\x01\x00\x00\x00".to_vec();
        blob.extend_from_slice(&tail);
        assert_canonical_if_valid(&blob)?;
    }

    #[test]
    fn sealed_random_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let blob = seal(&body);
        // The header is right, so whatever fails is the body's fault.
        match Metadata::decode(&blob) {
            Ok(md) => prop_assert_eq!(md.encode().unwrap(), blob),
            Err(e) => prop_assert!(
                matches!(e, MetadataError::Truncated { .. } | MetadataError::TooLarge { .. } | MetadataError::Malformed { .. }),
                "{:?}", e
            ),
        }
    }

    #[test]
    fn sealed_mutated_valid_bodies_never_panic(
        md in arb_metadata(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let blob = md.encode().unwrap();
        let mut body = blob[HEADER..].to_vec();
        for (at, byte) in edits {
            let i = at.index(body.len());
            body[i] = byte;
        }
        if do_cut {
            body.truncate(cut.index(body.len() + 1));
        }
        assert_canonical_if_valid(&seal(&body))?;
    }
}
