//! Shared-memory segments: files in a tmpfs directory, mapped shared by every process
//! that opens them.
//!
//! The directory is `$RINGXFER_SHM_DIR`, else `/dev/shm`, else the system temp
//! directory. A segment's creator unlinks it when dropped; a process that opens a
//! segment keeps its mapping valid after that (the memory lives until the last
//! mapping goes), so a peer that outlives the owner never touches freed memory.
//!
//! Segments hold KV-cache bytes, notifications and registration tables: they are
//! created readable and writable by their owner only (mode 0600), and a segment that
//! another user owns, or that group or others may read or write, is refused when
//! opened. Peers sharing memory through segments run as the same user.

// Unsafe code: mapping shared-memory segments (the crate root denies it elsewhere).
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{Error, Result};

/// The directory segments live in.
pub(crate) fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RINGXFER_SHM_DIR") {
        return PathBuf::from(d);
    }
    let dev_shm = Path::new("/dev/shm");
    if dev_shm.is_dir() {
        dev_shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// A mapped segment.
pub(crate) struct Segment {
    map: MmapRaw,
    path: PathBuf,
    owner: bool,
}

impl Segment {
    /// Creates (replacing a stale file of the same name) and maps `len` zeroed bytes.
    pub(crate) fn create(dir: &Path, name: &str, len: usize) -> Result<Segment> {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("creating a shared-memory segment", &e))?;
        file.set_len(len as u64).map_err(|e| {
            let _ = std::fs::remove_file(&path);
            Error::io("sizing a shared-memory segment", &e)
        })?;
        let map = Self::map(&file, len).inspect_err(|_| {
            let _ = std::fs::remove_file(&path);
        })?;
        Ok(Segment { map, path, owner: true })
    }

    /// Maps an existing segment, which must hold at least `len` bytes.
    pub(crate) fn open(path: &Path, len: usize) -> Result<Segment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io("opening a peer's shared-memory segment", &e))?;
        let meta = file.metadata().map_err(|e| Error::io("reading a segment's size", &e))?;
        check_private(&meta)?;
        let actual = meta.len();
        if actual < len as u64 {
            return Err(Error::InvalidDescriptor {
                reason: "a peer's shared-memory segment is smaller than its metadata says",
            });
        }
        Ok(Segment {
            map: Self::map(&file, len)?,
            path: path.to_path_buf(),
            owner: false,
        })
    }

    fn map(file: &File, len: usize) -> Result<MmapRaw> {
        MmapOptions::new()
            .len(len)
            .map_raw(file)
            .map_err(|e| Error::io("mapping a shared-memory segment", &e))
    }

    /// The first byte of the mapping.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// The mapping's length.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// Refuses a segment this process's user does not own, or that anyone else may read
/// or write: its bytes are another tenant's (or readable by one).
fn check_private(meta: &std::fs::Metadata) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let refuse = |message: String| Error::Io {
        context: "opening a peer's shared-memory segment",
        kind: std::io::ErrorKind::PermissionDenied,
        message,
    };
    if meta.uid() != me {
        return Err(refuse(format!(
            "it belongs to uid {}, not to this process's uid {me}: peers sharing memory run as one user",
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(refuse(format!(
            "its mode {:o} lets other users read or write it (segments are created 0600)",
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.owner {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes segments left in `dir` by engines whose process is gone (killed before
/// they could unlink them). Segment names start `ringxfer-` and 16 hex digits of the
/// engine id, whose high 32 bits are the owner's pid. Returns how many were removed.
pub(crate) fn sweep_dead(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix("ringxfer-"))
            .and_then(|n| n.get(..16))
        else {
            continue;
        };
        let Ok(engine_id) = u64::from_str_radix(id, 16) else {
            continue;
        };
        let Ok(pid) = libc::pid_t::try_from(engine_id >> 32) else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the pid exists.
        let dead =
            unsafe { libc::kill(pid, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if dead && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}
