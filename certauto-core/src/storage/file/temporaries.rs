//! Finding and removing the temporary files a crash left behind.
//!
//! [`write_atomic`](super::atomic::write_atomic) writes `.<leaf>.tmp-<suffix>`
//! next to its target and renames it over the target; a stale lock is
//! renamed aside to `.<name>.stale-<suffix>` before it is removed
//! ([`break_stale`](super::lock::break_stale)). A process that dies between
//! those steps leaves the file behind, and a temporary value may hold a
//! private key. [`remove_stale`] walks the root (bounded in depth, entries
//! and removals) and removes such files older than a given age: a write in
//! progress renames its temporary file within moments, so an old one is a
//! crash's.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::atomic::is_temp_name;

/// The deepest folder the walk enters below the root (keys are a few
/// components deep; this only bounds a strange tree).
const MAX_DEPTH: usize = 32;
/// The most folder entries one walk looks at.
const MAX_VISITED: usize = 200_000;
/// The most files one walk removes (the next walk removes the rest).
const MAX_REMOVED: usize = 1_000;

/// Removes the temporary files below `root` whose modification time is more
/// than `older_than` before `now`, and returns their paths relative to
/// `root`. Symbolic links are neither followed nor removed; a file that
/// vanishes meanwhile is skipped. A root that does not exist holds none.
pub(super) fn remove_stale(
    root: &Path,
    older_than: Duration,
    now: SystemTime,
) -> io::Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut visited = 0usize;
    let mut folders: Vec<(PathBuf, usize)> = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = folders.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            visited += 1;
            if visited > MAX_VISITED || removed.len() >= MAX_REMOVED {
                tracing::debug!(
                    visited,
                    removed = removed.len(),
                    "file storage: temporaries walk stopped at its bound"
                );
                return Ok(removed);
            }
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let path = entry.path();
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                if depth < MAX_DEPTH {
                    folders.push((path, depth + 1));
                }
                continue;
            }
            let is_temp = entry.file_name().to_str().is_some_and(is_temp_name);
            if !is_temp || !meta.is_file() {
                continue;
            }
            let old = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > older_than);
            if !old {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {
                    let shown = path.strip_prefix(root).unwrap_or(&path);
                    tracing::info!(file = %shown.display(), "file storage: removed a temporary file left by a crash");
                    removed.push(shown.to_string_lossy().into_owned());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn set_age(path: &Path, age: Duration) {
        let file = fs::OpenOptions::new().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
    }

    #[test]
    fn only_old_temporaries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let nested = root.join("certificates").join("ca").join("a.test");
        fs::create_dir_all(&nested).unwrap();
        let old_tmp = nested.join(".a.test.pem.tmp-1-2");
        let fresh_tmp = nested.join(".a.test.pem.tmp-3-4");
        let old_value = nested.join("a.test.pem");
        let old_stale_lock = root.join(".x.lock.stale-5-6");
        let old_dotfile = root.join(".hidden");
        for path in [
            &old_tmp,
            &fresh_tmp,
            &old_value,
            &old_stale_lock,
            &old_dotfile,
        ] {
            fs::write(path, b"secret").unwrap();
        }
        for path in [&old_tmp, &old_value, &old_stale_lock, &old_dotfile] {
            set_age(path, Duration::from_secs(7200));
        }
        let mut removed = remove_stale(root, Duration::from_secs(3600), SystemTime::now()).unwrap();
        removed.sort();
        assert_eq!(
            removed,
            vec![
                ".x.lock.stale-5-6".to_owned(),
                "certificates/ca/a.test/.a.test.pem.tmp-1-2".to_owned()
            ]
        );
        assert!(!old_tmp.exists() && !old_stale_lock.exists());
        assert!(fresh_tmp.exists() && old_value.exists() && old_dotfile.exists());
        // A missing root holds nothing.
        let missing = root.join("nope");
        assert!(
            remove_stale(&missing, Duration::ZERO, SystemTime::now())
                .unwrap()
                .is_empty()
        );
    }
}
