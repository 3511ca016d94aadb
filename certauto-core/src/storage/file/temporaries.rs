//! Finding and removing the temporary files a crash left behind.
//!
//! [`write_atomic`](super::atomic::write_atomic) writes `.<leaf>.tmp-<suffix>`
//! next to its target and renames it over the target; a stale lock is
//! renamed aside to `.<name>.stale-<suffix>` before it is removed
//! ([`break_stale`](super::lock::break_stale)). A process that dies between
//! those steps leaves the file behind, and a temporary value may hold a
//! private key. [`remove_stale`] walks the root and removes such files older
//! than a given age: a write in progress renames its temporary file within
//! moments, so an old one is a crash's.
//!
//! The walk is bounded (depth, names read per folder, entries looked at,
//! files removed) and goes through each folder in name order, so a walk
//! stopped by a bound leaves a [`Cursor`] (the first entry it did not look
//! at) where the next walk resumes: over enough walks every entry of any
//! tree is reached. A folder that cannot be read is skipped and reported,
//! and the walk goes on.

use std::cmp::Ordering;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::atomic::is_temp_name;

/// How far one walk goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// The deepest folder the walk enters below the root (keys are a few
    /// components deep; this only bounds a strange tree).
    pub(crate) depth: usize,
    /// The most names read from one folder (the rest of a larger folder is
    /// never looked at; reported).
    pub(crate) folder_entries: usize,
    /// The most entries one walk looks at (the next walk resumes there).
    pub(crate) visited: usize,
    /// The most files one walk removes (the next walk removes the rest).
    pub(crate) removed: usize,
}

/// The bounds of [`remove_stale`].
pub(crate) const BOUNDS: Bounds = Bounds {
    depth: 32,
    folder_entries: 100_000,
    visited: 200_000,
    removed: 1_000,
};

/// Where the next walk starts: the path below the root (one name per
/// folder) of the first entry the last walk did not look at; `None` for the
/// beginning (the last walk went through the whole tree).
pub(super) type Cursor = Option<Vec<OsString>>;

/// What one walk did.
#[derive(Debug, Default)]
pub(super) struct Sweep {
    /// The removed files, as paths relative to the root.
    pub(super) removed: Vec<String>,
    /// What was skipped, as paths relative to the root (`""`: the root),
    /// with the error: folders that could not be read (or were too large
    /// to read whole), files that could not be looked at or removed.
    pub(super) skipped: Vec<(String, io::Error)>,
}

/// Removes the temporary files below `root` whose modification time is more
/// than `older_than` before `now`, within [`BOUNDS`], starting at `cursor`
/// and leaving there where the next walk starts. Symbolic links are neither
/// followed nor removed; a file that vanishes meanwhile is skipped. A root
/// that does not exist holds none.
pub(super) fn remove_stale(
    root: &Path,
    older_than: Duration,
    now: SystemTime,
    cursor: &mut Cursor,
) -> Sweep {
    remove_stale_within(root, older_than, now, cursor, BOUNDS)
}

/// [`remove_stale`] with the given bounds.
pub(super) fn remove_stale_within(
    root: &Path,
    older_than: Duration,
    now: SystemTime,
    cursor: &mut Cursor,
    bounds: Bounds,
) -> Sweep {
    let mut walk = Walk {
        root,
        older_than,
        now,
        bounds,
        visited: 0,
        sweep: Sweep::default(),
    };
    let mut path = Vec::new();
    let resume = cursor.take();
    *cursor = walk.folder(root, &mut path, 0, resume.as_deref());
    if cursor.is_some() {
        tracing::debug!(
            visited = walk.visited,
            removed = walk.sweep.removed.len(),
            "file storage: temporaries walk stopped at its bound; the next walk resumes there"
        );
    }
    walk.sweep
}

struct Walk<'a> {
    root: &'a Path,
    older_than: Duration,
    now: SystemTime,
    bounds: Bounds,
    visited: usize,
    sweep: Sweep,
}

impl Walk<'_> {
    fn shown(&self, path: &Path) -> String {
        path.strip_prefix(self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }

    fn skip(&mut self, path: &Path, error: io::Error) {
        let shown = self.shown(path);
        tracing::warn!(path = %shown, %error, "file storage: temporaries walk skipped an entry");
        self.sweep.skipped.push((shown, error));
    }

    /// The names in `dir` (at most the bound), sorted, with their types
    /// (not following symbolic links).
    fn read_folder(&mut self, dir: &Path) -> Vec<(OsString, fs::FileType)> {
        let mut entries = Vec::new();
        let read = match fs::read_dir(dir) {
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return entries,
            Err(e) => {
                self.skip(dir, e);
                return entries;
            }
        };
        for entry in read {
            if entries.len() >= self.bounds.folder_entries {
                let error = io::Error::other(format!(
                    "more than {} entries: the rest is not looked at",
                    self.bounds.folder_entries
                ));
                self.skip(dir, error);
                break;
            }
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    self.skip(dir, e);
                    break;
                }
            };
            match entry.file_type() {
                Ok(kind) => entries.push((entry.file_name(), kind)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => self.skip(&entry.path(), e),
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries
    }

    /// Walks `dir` (`path`: its names below the root), from `resume` (names
    /// below `dir`) when given. Returns where the next walk starts when a
    /// bound stopped this one.
    fn folder(
        &mut self,
        dir: &Path,
        path: &mut Vec<OsString>,
        depth: usize,
        resume: Option<&[OsString]>,
    ) -> Cursor {
        let mut resume = resume.and_then(|r| r.split_first());
        for (name, kind) in self.read_folder(dir) {
            // Before the cursor: looked at by an earlier walk. At it: into
            // the folder it points inside, or looked at from here on.
            let mut inside = None;
            if let Some((first, rest)) = resume {
                match name.cmp(first) {
                    Ordering::Less => continue,
                    Ordering::Equal if !rest.is_empty() && kind.is_dir() => inside = Some(rest),
                    _ => {}
                }
                resume = None;
            }
            let entry = dir.join(&name);
            if inside.is_none() {
                // A folder the cursor points inside was counted by the walk
                // that left the cursor: every walk makes progress.
                self.visited += 1;
                if self.visited > self.bounds.visited
                    || self.sweep.removed.len() >= self.bounds.removed
                {
                    let mut at = path.clone();
                    at.push(name);
                    return Some(at);
                }
            }
            if kind.is_dir() {
                if depth < self.bounds.depth {
                    path.push(name);
                    let stopped = self.folder(&entry, path, depth + 1, inside);
                    path.pop();
                    if stopped.is_some() {
                        return stopped;
                    }
                }
                continue;
            }
            if kind.is_file() && name.to_str().is_some_and(is_temp_name) {
                self.remove_if_old(&entry);
            }
        }
        None
    }

    fn remove_if_old(&mut self, file: &Path) {
        let meta = match fs::symlink_metadata(file) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => return self.skip(file, e),
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| self.now.duration_since(m).ok())
            .is_some_and(|age| age > self.older_than);
        if !meta.is_file() || !old {
            return;
        }
        match fs::remove_file(file) {
            Ok(()) => {
                let shown = self.shown(file);
                tracing::info!(file = %shown, "file storage: removed a temporary file left by a crash");
                self.sweep.removed.push(shown);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => self.skip(file, e),
        }
    }
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
        let mut cursor = None;
        let sweep = remove_stale(
            root,
            Duration::from_secs(3600),
            SystemTime::now(),
            &mut cursor,
        );
        assert!(sweep.skipped.is_empty() && cursor.is_none(), "{sweep:?}");
        let mut removed = sweep.removed;
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
        let sweep = remove_stale(&missing, Duration::ZERO, SystemTime::now(), &mut cursor);
        assert!(sweep.removed.is_empty() && sweep.skipped.is_empty());
    }

    /// Six folders, each with an old and a fresh temporary and a value, below
    /// bounds far smaller than the tree: walk after walk resumes where the
    /// last stopped, and every old temporary goes (only those).
    #[test]
    fn a_tree_larger_than_the_bounds_is_covered_over_several_walks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut old = Vec::new();
        let mut kept = Vec::new();
        for folder in ["a", "b", "c", "d", "e", "f"] {
            let nested = root.join(folder).join("name.test");
            fs::create_dir_all(&nested).unwrap();
            let (stale, fresh, value) = (
                nested.join(".v.pem.tmp-1-1"),
                nested.join(".v.pem.tmp-2-2"),
                nested.join("v.pem"),
            );
            for path in [&stale, &fresh, &value] {
                fs::write(path, b"secret").unwrap();
            }
            set_age(&stale, Duration::from_secs(7200));
            set_age(&value, Duration::from_secs(7200));
            old.push(format!("{folder}/name.test/.v.pem.tmp-1-1"));
            kept.extend([fresh, value]);
        }
        let bounds = Bounds {
            depth: 32,
            folder_entries: 100,
            visited: 5,
            removed: 2,
        };
        let mut cursor = None;
        let mut removed = Vec::new();
        let mut walks = 0;
        while removed.len() < old.len() {
            walks += 1;
            assert!(walks <= 20, "not covered in 20 walks: {removed:?}");
            let sweep = remove_stale_within(
                root,
                Duration::from_secs(3600),
                SystemTime::now(),
                &mut cursor,
                bounds,
            );
            assert!(sweep.skipped.is_empty(), "{sweep:?}");
            assert!(sweep.removed.len() <= bounds.removed);
            removed.extend(sweep.removed);
        }
        assert!(walks > 1, "the bounds bit");
        removed.sort();
        assert_eq!(removed, old);
        assert!(kept.iter().all(|path| path.exists()));
    }

    /// Makes `root/<long>/.../<long>/<child>` whose full path is longer than
    /// the system allows (PATH_MAX, 4096 bytes on Linux), so reading the
    /// child folder fails (with ENAMETOOLONG) even for root, for whom no
    /// permission bits make a folder unreadable. Returns the child's path
    /// relative to `root`.
    fn unreadable_folder(root: &Path) -> String {
        let target = 4090;
        let mut names = Vec::new();
        let mut len = root.as_os_str().len();
        while len + 201 < target - 50 {
            names.push("l".repeat(200));
            len += 201;
        }
        names.push("l".repeat(target - len - 1));
        let child = "q".repeat(20);
        let mut short = root.to_path_buf();
        for _ in &names {
            short.push("d");
        }
        fs::create_dir_all(short.join(&child)).unwrap();
        fs::write(short.join(&child).join(".v.tmp-1-1"), b"secret").unwrap();
        let mut current = root.to_path_buf();
        for name in &names {
            fs::rename(current.join("d"), current.join(name)).unwrap();
            current.push(name);
        }
        assert!(fs::read_dir(&current).is_ok());
        assert!(fs::read_dir(current.join(&child)).is_err());
        let mut relative: Vec<&str> = names.iter().map(String::as_str).collect();
        relative.push(&child);
        relative.join("/")
    }

    /// A folder that cannot be read is skipped and reported (through
    /// `FileStorage`, naming it), and the walk goes on past it.
    #[tokio::test]
    async fn an_unreadable_folder_is_skipped_and_reported() {
        use crate::storage::{FileStorage, Storage, StorageError};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let unreadable = unreadable_folder(root);
        let mut old = Vec::new();
        for folder in ["a", "z"] {
            fs::create_dir_all(root.join(folder)).unwrap();
            let path = root.join(folder).join(".v.pem.tmp-1-1");
            fs::write(&path, b"secret").unwrap();
            set_age(&path, Duration::from_secs(7200));
            old.push(format!("{folder}/.v.pem.tmp-1-1"));
        }
        let storage = FileStorage::new(root);
        let sweep = storage
            .remove_stale_temporaries(Duration::from_secs(3600))
            .await
            .unwrap();
        let mut removed = sweep.removed.clone();
        removed.sort();
        assert_eq!(removed, old);
        match sweep.skipped.as_slice() {
            [StorageError::Io { key, source }] => {
                assert_eq!(key, &unreadable);
                assert!(source.raw_os_error().is_some(), "{source}");
            }
            other => panic!("one unreadable folder: {other:?}"),
        }
    }
}
