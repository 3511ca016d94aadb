//! Atomic, durable, private writes: a temporary file in the same folder,
//! flushed and renamed over the target, then the folder flushed.

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A string unique to this process and call (used in temporary file names).
pub(super) fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{n:x}{nanos:x}", std::process::id())
}

/// Whether a file name is one of our temporary files.
pub(super) fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && (name.contains(".tmp-") || name.contains(".stale-"))
}

/// Creates `dir` and its missing parents, private to the owner on Unix.
pub(super) fn create_private_dirs(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Creates a new file (failing if it exists), readable by the owner only on Unix.
pub(super) fn create_private_file(path: &Path) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Flushes a folder's entries (a rename in it) to disk.
#[cfg(unix)]
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    match fs::File::open(dir).and_then(|d| d.sync_all()) {
        Ok(()) => Ok(()),
        // Some file systems cannot fsync a folder; the rename is still atomic.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ) =>
        {
            tracing::debug!(dir = %dir.display(), error = %e, "file storage: cannot fsync folder");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Flushes a folder's entries to disk (not possible through std off Unix).
#[cfg(not(unix))]
pub(super) fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Atomically replaces the file at `path` with `value`, creating its folders.
pub(super) fn write_atomic(path: &Path, value: &[u8]) -> io::Result<()> {
    write_atomic_hooked(path, value, &|_| Ok(BeforeRename::Rename)).map(drop)
}

/// What [`write_atomic_hooked`] does once the temporary file is written.
pub(super) enum BeforeRename {
    /// Renames it over the target.
    Rename,
    /// Removes it and leaves the target alone.
    Refuse,
    /// Stops, leaving it behind as a crash would (for tests).
    #[cfg(test)]
    Crash,
}

/// [`write_atomic`], asking `before_rename` (with the temporary file, once
/// it is written and flushed) whether to go on. Returns whether the value
/// was renamed into place (`false`: refused, nothing changed); an error from
/// `before_rename` removes the temporary file and is returned.
pub(super) fn write_atomic_hooked(
    path: &Path,
    value: &[u8],
    before_rename: &dyn Fn(&Path) -> io::Result<BeforeRename>,
) -> io::Result<bool> {
    let (Some(dir), Some(leaf)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "storage path has no parent folder or file name",
        ));
    };
    create_private_dirs(dir)?;
    let leaf: String = leaf.to_string_lossy().chars().take(64).collect();
    let (tmp, mut file) = {
        let mut attempt = 0;
        loop {
            let tmp = dir.join(format!(".{leaf}.tmp-{}", unique_suffix()));
            match create_private_file(&tmp) {
                Ok(file) => break (tmp, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    };
    let written = file.write_all(value).and_then(|()| file.sync_all());
    drop(file);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    match before_rename(&tmp) {
        Ok(BeforeRename::Rename) => {}
        Ok(BeforeRename::Refuse) => {
            let _ = fs::remove_file(&tmp);
            return Ok(false);
        }
        #[cfg(test)]
        Ok(BeforeRename::Crash) => return Err(io::Error::other("write interrupted before rename")),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)?;
    Ok(true)
}
