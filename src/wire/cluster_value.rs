//! The value an engine stores under its cluster key (`ringxfer::cluster`): the magic
//! `RXE1`, a version (little-endian `u64`, one more on each re-publication), then the
//! engine's metadata blob. Kept apart from the etcd client so it builds, and is
//! fuzzed, without it.

use crate::wire::metadata::{Metadata, MetadataError};

/// What every value starts with.
pub const MAGIC: &[u8; 4] = b"RXE1";

/// The value for `version` of `blob`.
pub fn encode(version: u64, blob: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + blob.len());
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(blob);
    v
}

/// A stored value's version and metadata blob, checked: the blob decodes. Anything
/// else (a foreign value, a truncated one) is a [`MetadataError`].
pub fn decode(value: &[u8]) -> Result<(u64, &[u8], Metadata), MetadataError> {
    let Some((version, blob)) = value.strip_prefix(MAGIC).and_then(|rest| rest.split_first_chunk::<8>()) else {
        return Err(MetadataError::Malformed {
            what: "not a ringxfer cluster value (no RXE1 header)",
        });
    };
    let md = Metadata::decode(blob)?;
    Ok((u64::from_le_bytes(*version), blob, md))
}
