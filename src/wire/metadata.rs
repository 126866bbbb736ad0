//! The metadata blob: what an engine publishes so a peer can reach its memory.
//!
//! A blob is versioned, length-prefixed and checksummed. [`Metadata::encode`] writes
//! it and [`Metadata::decode`] reads it back; decoding takes bytes from the network or
//! from storage as untrusted, never panics, never allocates more than the blob can
//! actually hold, and reports every problem as a typed [`MetadataError`].
//!
//! # Format (version 1)
//!
//! All integers are little-endian. The blob is a fixed 16-byte header followed by the
//! body.
//!
//! | offset | size | field | rule |
//! | --- | --- | --- | --- |
//! | 0 | 4 | magic | `b"RXMD"` ([`MAGIC`]) |
//! | 4 | 2 | version | `u16`, [`VERSION`] (= 1) |
//! | 6 | 2 | flags | `u16`, must be 0 |
//! | 8 | 4 | total length | `u32`, the whole blob in bytes including the header; ≤ [`MAX_BLOB_BYTES`] |
//! | 12 | 4 | checksum | `u32`, CRC-32 (IEEE, as `crc32fast`) of every byte after the header |
//! | 16 | 1 | name length | `u8`, ≤ [`MAX_NAME_BYTES`] |
//! | 17 | n | engine name | UTF-8 |
//! | | 8 | engine id | `u64` |
//! | | 4 | process id | `u32` |
//! | | 2 | backend count | `u16`, ≤ [`MAX_BACKENDS`] |
//! | | | per backend: | |
//! | | 1 | — kind | `u8`, a [`BackendKind`] (1–4) |
//! | | 2 | — connection length | `u16`, ≤ [`MAX_CONN_BYTES`] |
//! | | c | — connection info | opaque bytes |
//! | | 4 | region count | `u32`, ≤ [`MAX_REGIONS`] |
//! | | | per region (37 bytes): | |
//! | | 8 | — id | `u64` |
//! | | 8 | — address | `u64` |
//! | | 8 | — length | `u64`, nonzero; address + length must not overflow `u64` |
//! | | 1 | — memory kind | `u8`, a [`MemKind`] (1–3) |
//! | | 4 | — device | `u32` |
//! | | 8 | — remote key | `u64` |
//!
//! The body ends exactly after the last region: no padding, no trailing bytes. The
//! encoding is canonical — a blob that decodes re-encodes to the same bytes.
//!
//! # Decoding order
//!
//! 1. at least a whole header ([`MetadataError::Truncated`]);
//! 2. magic ([`MetadataError::BadMagic`]), version ([`MetadataError::UnsupportedVersion`]),
//!    flags ([`MetadataError::Malformed`]);
//! 3. declared length against the buffer ([`MetadataError::Truncated`] if the buffer is
//!    shorter, [`MetadataError::TrailingBytes`] if longer), then against
//!    [`MAX_BLOB_BYTES`] ([`MetadataError::TooLarge`]);
//! 4. checksum ([`MetadataError::ChecksumMismatch`]);
//! 5. body fields in order, each count checked against its limit and against the bytes
//!    left before anything is allocated for it;
//! 6. no bytes left inside the body after the last region.

/// The first four bytes of every blob.
pub const MAGIC: [u8; 4] = *b"RXMD";
/// The format version this build writes and reads.
pub const VERSION: u16 = 1;
/// The largest blob, header included, in bytes (16 MiB).
pub const MAX_BLOB_BYTES: usize = 16 << 20;
/// The longest engine name, in UTF-8 bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// The longest connection info of one backend, in bytes.
pub const MAX_CONN_BYTES: usize = 4096;
/// The most backends one engine can list.
pub const MAX_BACKENDS: usize = 16;
/// The most memory regions one engine can list (the blob size limit may bind first).
pub const MAX_REGIONS: usize = 1 << 20;

/// Size of the fixed header: magic, version, flags, total length, checksum.
const HEADER_BYTES: usize = 4 + 2 + 2 + 4 + 4;
/// Size of one encoded region.
const REGION_BYTES: usize = 8 + 8 + 8 + 1 + 4 + 8;
/// Smallest encoded backend: kind and connection length, no connection bytes.
const MIN_BACKEND_BYTES: usize = 1 + 2;

/// What an engine publishes about itself: who it is, how to connect to it, and which
/// memory regions a peer may read or write.
///
/// # Example
///
/// ```
/// use ringxfer::wire::metadata::{BackendInfo, BackendKind, MemKind, Metadata, RegionInfo};
///
/// let md = Metadata {
///     engine_name: "prefill-0".to_owned(),
///     engine_id: 42,
///     process_id: 1234,
///     backends: vec![BackendInfo { kind: BackendKind::Local, conn: b"/tmp/rx.sock".to_vec() }],
///     regions: vec![RegionInfo {
///         id: 7,
///         addr: 0x7f00_0000_0000,
///         len: 1 << 20,
///         kind: MemKind::Dram,
///         device: 0,
///         remote_key: 0xdead_beef,
///     }],
/// };
/// let blob = md.encode()?;
/// assert_eq!(&blob[..4], b"RXMD");
/// assert_eq!(Metadata::decode(&blob)?, md);
/// # Ok::<(), ringxfer::wire::metadata::MetadataError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// A human-readable engine name, at most [`MAX_NAME_BYTES`] bytes of UTF-8.
    pub engine_name: String,
    /// The engine's unique id.
    pub engine_id: u64,
    /// The operating-system id of the engine's process.
    pub process_id: u32,
    /// The transports the engine can be reached through, at most [`MAX_BACKENDS`].
    pub backends: Vec<BackendInfo>,
    /// The memory regions a peer may access, at most [`MAX_REGIONS`].
    pub regions: Vec<RegionInfo>,
}

/// One transport an engine can be reached through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    /// Which transport.
    pub kind: BackendKind,
    /// Opaque connection info for that transport, at most [`MAX_CONN_BYTES`] bytes.
    pub conn: Vec<u8>,
}

/// A transport kind; the discriminant is its byte on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BackendKind {
    /// Same-host shared memory.
    Local = 1,
    /// A network fabric (libfabric).
    Fabric = 2,
    /// CUDA peer-to-peer or IPC.
    Cuda = 3,
    /// POSIX file I/O.
    File = 4,
}

impl BackendKind {
    fn from_wire(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Local),
            2 => Some(Self::Fabric),
            3 => Some(Self::Cuda),
            4 => Some(Self::File),
            _ => None,
        }
    }
}

/// One memory region a peer may access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfo {
    /// The region's id, as the engine names it.
    pub id: u64,
    /// Start address (or file offset) of the region.
    pub addr: u64,
    /// Length in bytes; nonzero, and `addr + len` must not overflow `u64`.
    pub len: u64,
    /// Where the memory lives.
    pub kind: MemKind,
    /// Device index (GPU ordinal, NUMA node, …), meaningful for the memory kind.
    pub device: u32,
    /// The key a peer presents to access the region remotely.
    pub remote_key: u64,
}

/// Where a region's memory lives; the discriminant is its byte on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MemKind {
    /// Host memory.
    Dram = 1,
    /// GPU memory.
    Vram = 2,
    /// A file.
    File = 3,
}

impl MemKind {
    fn from_wire(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Dram),
            2 => Some(Self::Vram),
            3 => Some(Self::File),
            _ => None,
        }
    }
}

/// Why a blob could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The bytes end before the blob (or a field inside it) does.
    #[error(
        "metadata truncated: needs {needed} bytes, has {available} (the blob was cut short; fetch it again from the engine that published it)"
    )]
    Truncated {
        /// How many bytes the blob would need to hold what was read so far.
        needed: usize,
        /// How many bytes there are.
        available: usize,
    },
    /// The bytes do not start with [`MAGIC`]: this is not a metadata blob.
    #[error(
        "not a ringxfer metadata blob (magic {found:02x?}, expected {MAGIC:02x?} = \"RXMD\"); check where these bytes came from"
    )]
    BadMagic {
        /// The first four bytes found.
        found: [u8; 4],
    },
    /// The blob was written by a build with another format version.
    #[error(
        "metadata format version {found} is not supported (this build reads version {supported}); run the same ringxfer version on both engines"
    )]
    UnsupportedVersion {
        /// The version in the blob.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// The body does not match its checksum: the blob was corrupted.
    #[error(
        "metadata checksum mismatch (header says {expected:#010x}, body gives {computed:#010x}); the blob was corrupted, fetch it again"
    )]
    ChecksumMismatch {
        /// The checksum stored in the header.
        expected: u32,
        /// The checksum of the body as received.
        computed: u32,
    },
    /// A count or size exceeds its limit.
    #[error("metadata {what} is {len}, over the limit of {max}")]
    TooLarge {
        /// What is too large, e.g. "region count".
        what: &'static str,
        /// Its actual (or declared) value.
        len: usize,
        /// The largest value allowed.
        max: usize,
    },
    /// A field holds a value the format does not allow.
    #[error("malformed metadata: {what}")]
    Malformed {
        /// What is wrong, e.g. "unknown backend kind".
        what: &'static str,
    },
    /// The buffer holds more bytes than the blob's declared length.
    #[error(
        "metadata blob is followed by {extra} extra bytes past its declared length; pass exactly the bytes of one blob"
    )]
    TrailingBytes {
        /// How many bytes follow the blob.
        extra: usize,
    },
}

/// `TooLarge::what` for the blob size.
const WHAT_BLOB: &str = "blob size (bytes)";
/// `TooLarge::what` for one backend's connection info.
const WHAT_CONN: &str = "backend connection info length (bytes)";

/// Checks `len <= max` and converts it to the wire integer `T`.
fn fit<T: TryFrom<usize>>(what: &'static str, len: usize, max: usize) -> Result<T, MetadataError> {
    let too_large = MetadataError::TooLarge { what, len, max };
    if len > max {
        return Err(too_large);
    }
    T::try_from(len).map_err(|_| too_large)
}

/// Rules a region must meet on both sides of the wire.
fn check_region(region: &RegionInfo) -> Result<(), MetadataError> {
    if region.len == 0 {
        return Err(MetadataError::Malformed {
            what: "a region has length zero",
        });
    }
    if region.addr.checked_add(region.len).is_none() {
        return Err(MetadataError::Malformed {
            what: "a region's address + length overflows u64",
        });
    }
    Ok(())
}

impl Metadata {
    /// Encodes the metadata as a blob.
    ///
    /// Fails with [`MetadataError::TooLarge`] if a limit is exceeded (name longer than
    /// [`MAX_NAME_BYTES`], more than [`MAX_BACKENDS`] backends or [`MAX_REGIONS`]
    /// regions, connection info longer than [`MAX_CONN_BYTES`], blob over
    /// [`MAX_BLOB_BYTES`]), and with [`MetadataError::Malformed`] for a region that
    /// [`decode`](Self::decode) would reject (zero length, or `addr + len` overflowing).
    pub fn encode(&self) -> Result<Vec<u8>, MetadataError> {
        let name = self.engine_name.as_bytes();
        let name_len: u8 = fit("engine name length (bytes)", name.len(), MAX_NAME_BYTES)?;
        let backend_count: u16 = fit("backend count", self.backends.len(), MAX_BACKENDS)?;
        let region_count: u32 = fit("region count", self.regions.len(), MAX_REGIONS)?;
        self.regions.iter().try_for_each(check_region)?;

        // Every term is bounded by the limits checked above or below; saturating keeps
        // an absurd input from wrapping and turns it into a TooLarge from `fit`.
        let mut body_len = (1 + 8 + 4 + 2 + 4usize).saturating_add(name.len());
        for backend in &self.backends {
            fit::<u16>(WHAT_CONN, backend.conn.len(), MAX_CONN_BYTES)?;
            body_len = body_len
                .saturating_add(MIN_BACKEND_BYTES)
                .saturating_add(backend.conn.len());
        }
        body_len = body_len.saturating_add(self.regions.len().saturating_mul(REGION_BYTES));
        let total_len: u32 = fit(WHAT_BLOB, body_len.saturating_add(HEADER_BYTES), MAX_BLOB_BYTES)?;

        let mut body = Vec::with_capacity(body_len);
        body.push(name_len);
        body.extend_from_slice(name);
        body.extend_from_slice(&self.engine_id.to_le_bytes());
        body.extend_from_slice(&self.process_id.to_le_bytes());
        body.extend_from_slice(&backend_count.to_le_bytes());
        for backend in &self.backends {
            let conn_len: u16 = fit(WHAT_CONN, backend.conn.len(), MAX_CONN_BYTES)?;
            body.push(backend.kind as u8);
            body.extend_from_slice(&conn_len.to_le_bytes());
            body.extend_from_slice(&backend.conn);
        }
        body.extend_from_slice(&region_count.to_le_bytes());
        for region in &self.regions {
            body.extend_from_slice(&region.id.to_le_bytes());
            body.extend_from_slice(&region.addr.to_le_bytes());
            body.extend_from_slice(&region.len.to_le_bytes());
            body.push(region.kind as u8);
            body.extend_from_slice(&region.device.to_le_bytes());
            body.extend_from_slice(&region.remote_key.to_le_bytes());
        }

        let mut blob = Vec::with_capacity(HEADER_BYTES.saturating_add(body.len()));
        blob.extend_from_slice(&MAGIC);
        blob.extend_from_slice(&VERSION.to_le_bytes());
        blob.extend_from_slice(&0u16.to_le_bytes());
        blob.extend_from_slice(&total_len.to_le_bytes());
        blob.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        blob.extend_from_slice(&body);
        Ok(blob)
    }

    /// Decodes a blob.
    ///
    /// `bytes` must be exactly one blob. Never panics, whatever the input; every
    /// problem is a [`MetadataError`], checked in the order the
    /// [module docs](self) give.
    pub fn decode(bytes: &[u8]) -> Result<Metadata, MetadataError> {
        if bytes.len() < HEADER_BYTES {
            return Err(MetadataError::Truncated {
                needed: HEADER_BYTES,
                available: bytes.len(),
            });
        }
        let mut r = Reader::new(bytes);
        let magic: [u8; 4] = r.array()?;
        if magic != MAGIC {
            return Err(MetadataError::BadMagic { found: magic });
        }
        let version = r.u16()?;
        if version != VERSION {
            return Err(MetadataError::UnsupportedVersion {
                found: version,
                supported: VERSION,
            });
        }
        if r.u16()? != 0 {
            return Err(MetadataError::Malformed {
                what: "header flags are set (must be 0 in version 1)",
            });
        }
        let declared = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
        if declared < HEADER_BYTES {
            return Err(MetadataError::Malformed {
                what: "declared length is shorter than the header",
            });
        }
        if declared > bytes.len() {
            return Err(MetadataError::Truncated {
                needed: declared,
                available: bytes.len(),
            });
        }
        if declared < bytes.len() {
            return Err(MetadataError::TrailingBytes {
                extra: bytes.len().saturating_sub(declared),
            });
        }
        if declared > MAX_BLOB_BYTES {
            return Err(MetadataError::TooLarge {
                what: WHAT_BLOB,
                len: declared,
                max: MAX_BLOB_BYTES,
            });
        }
        let expected = r.u32()?;
        let computed = crc32fast::hash(r.rest);
        if expected != computed {
            return Err(MetadataError::ChecksumMismatch { expected, computed });
        }

        let name_len = usize::from(r.u8()?);
        let engine_name = std::str::from_utf8(r.bytes(name_len)?)
            .map_err(|_| MetadataError::Malformed {
                what: "the engine name is not valid UTF-8",
            })?
            .to_owned();
        let engine_id = r.u64()?;
        let process_id = r.u32()?;

        let backend_count = usize::from(r.u16()?);
        if backend_count > MAX_BACKENDS {
            return Err(MetadataError::TooLarge {
                what: "backend count",
                len: backend_count,
                max: MAX_BACKENDS,
            });
        }
        r.ensure_room(backend_count, MIN_BACKEND_BYTES)?;
        let mut backends = Vec::with_capacity(backend_count);
        for _ in 0..backend_count {
            let kind = BackendKind::from_wire(r.u8()?).ok_or(MetadataError::Malformed {
                what: "unknown backend kind (expected 1 to 4)",
            })?;
            let conn_len = usize::from(r.u16()?);
            if conn_len > MAX_CONN_BYTES {
                return Err(MetadataError::TooLarge {
                    what: WHAT_CONN,
                    len: conn_len,
                    max: MAX_CONN_BYTES,
                });
            }
            let conn = r.bytes(conn_len)?.to_vec();
            backends.push(BackendInfo { kind, conn });
        }

        let region_count = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
        if region_count > MAX_REGIONS {
            return Err(MetadataError::TooLarge {
                what: "region count",
                len: region_count,
                max: MAX_REGIONS,
            });
        }
        r.ensure_room(region_count, REGION_BYTES)?;
        let mut regions = Vec::with_capacity(region_count);
        for _ in 0..region_count {
            let id = r.u64()?;
            let addr = r.u64()?;
            let len = r.u64()?;
            let kind = MemKind::from_wire(r.u8()?).ok_or(MetadataError::Malformed {
                what: "unknown memory kind (expected 1 to 3)",
            })?;
            let device = r.u32()?;
            let remote_key = r.u64()?;
            let region = RegionInfo {
                id,
                addr,
                len,
                kind,
                device,
                remote_key,
            };
            check_region(&region)?;
            regions.push(region);
        }

        if !r.rest.is_empty() {
            return Err(MetadataError::Malformed {
                what: "bytes after the last region",
            });
        }
        Ok(Metadata {
            engine_name,
            engine_id,
            process_id,
            backends,
            regions,
        })
    }
}

/// A bounds-checked cursor over a blob (also the fabric transport's wire formats).
pub(crate) struct Reader<'a> {
    /// Length of the whole blob, for error reports.
    total: usize,
    /// What is left to read.
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(blob: &'a [u8]) -> Self {
        Reader {
            total: blob.len(),
            rest: blob,
        }
    }

    /// The error for wanting `more` bytes past the current position.
    fn short(&self, more: usize) -> MetadataError {
        let offset = self.total.saturating_sub(self.rest.len());
        MetadataError::Truncated {
            needed: offset.saturating_add(more),
            available: self.total,
        }
    }

    /// Fails unless `count` items of at least `each` bytes can fit in what is left.
    pub(crate) fn ensure_room(&self, count: usize, each: usize) -> Result<(), MetadataError> {
        match count.checked_mul(each) {
            Some(need) if need <= self.rest.len() => Ok(()),
            need => Err(self.short(need.unwrap_or(usize::MAX))),
        }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], MetadataError> {
        let (head, rest) = self.rest.split_at_checked(n).ok_or_else(|| self.short(n))?;
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MetadataError> {
        let (head, rest) = self.rest.split_first_chunk::<N>().ok_or_else(|| self.short(N))?;
        self.rest = rest;
        Ok(*head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, MetadataError> {
        self.array().map(u8::from_le_bytes)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, MetadataError> {
        self.array().map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, MetadataError> {
        self.array().map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, MetadataError> {
        self.array().map(u64::from_le_bytes)
    }

    /// Whether everything was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}
