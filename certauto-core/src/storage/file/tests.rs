//! Tests of what only the file storage does: the layout on disk, private
//! files, atomic writes, lock files, the default root. The storage contract
//! is checked by the conformance suite (`storage::conformance`,
//! `FileBackend`; across processes in the tests crate).
#![allow(clippy::unwrap_used)]

use std::ffi::OsString;
use std::time::SystemTime;

use tokio::sync::oneshot;

use super::atomic::write_atomic_hooked;
use super::lock::{LockMeta, MAX_LOCK_NAME, lock_file_stem, unix_now};
use super::root::default_root_from;
use super::*;
use crate::storage::LockLoss;

/// Upper bound for anything that should finish promptly; only fails hung tests.
const HANG: Duration = Duration::from_secs(30);

fn storage(root: &Path) -> FileStorage {
    FileStorage::builder(root)
        .lock_poll_interval(Duration::from_millis(5))
        .build()
}

fn read_lock(path: &Path) -> LockMeta {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// Where keys, lock files and fence files live, and what `list` skips.
#[tokio::test]
async fn layout_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let s = storage(&root);
    assert!(
        s.list("", true).await.unwrap().is_empty(),
        "a missing root lists as empty"
    );
    s.store("a/b/c", b"one").await.unwrap();
    assert_eq!(fs::read(root.join("a/b/c")).unwrap(), b"one");
    // Dot-files (as left by other tools or interrupted writes) are not listed.
    fs::write(root.join("a/.hidden"), b"x").unwrap();
    assert_eq!(s.list("a", true).await.unwrap(), vec!["a/b/c"]);
    assert_eq!(s.list("a", false).await.unwrap(), vec!["a/b"]);

    let locks = root.join("locks");
    let lock = s.lock("cert_example.com").await.unwrap();
    let meta = read_lock(&locks.join("cert_example.com.lock"));
    // The fence is in the lock file; the one counter of the root holds the last.
    assert_eq!(Some(meta.fence), lock.fence());
    let counter = || -> u64 {
        String::from_utf8(fs::read(locks.join(".fences")).unwrap())
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(counter(), meta.fence);
    lock.release().await.unwrap();
    assert!(!locks.join("cert_example.com.lock").exists());
    let other = s.lock("other").await.unwrap();
    let again = s.lock("cert_example.com").await.unwrap();
    assert!(again.fence().unwrap() > other.fence().unwrap());
    assert!(other.fence().unwrap() > meta.fence);
    again.release().await.unwrap();
    other.release().await.unwrap();
    // No file per lock name is left behind (review 6).
    let mut left: Vec<_> = fs::read_dir(&locks)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, vec![".fences".to_owned()]);

    assert_eq!(s.root(), root);
    assert!(format!("{s:?}").contains("FileStorage"));
}

/// A fenced write refused because the lock file is now another owner's
/// changes nothing and leaves no temporary file; a guard without a fence
/// is refused too.
#[tokio::test]
async fn refused_fenced_write_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = storage(dir.path());
    s.store("k/v", b"old").await.unwrap();
    let lock = s.lock("l").await.unwrap();
    s.store_fenced(&lock, "k/v", b"mine").await.unwrap();
    let path = dir.path().join("locks/l.lock");
    write_lock_file(&path, "someone-else", SystemTime::now());
    assert!(matches!(
        s.store_fenced(&lock, "k/v", b"new").await,
        Err(StorageError::LockLost(n)) if n == "l"
    ));
    assert_eq!(s.load("k/v").await.unwrap(), b"mine");
    let names: Vec<_> = fs::read_dir(dir.path().join("k"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![OsString::from("v")], "no temporary file left");
    let foreign = LockGuard::new("l", &LockLoss::new(), || async { Ok(()) });
    assert!(matches!(
        s.store_fenced(&foreign, "k/v", b"x").await,
        Err(StorageError::LockLost(_))
    ));
    lock.release().await.unwrap();
    assert_eq!(read_lock(&path).owner, "someone-else");
}

/// The fence is read from the lock file alone (review 12): a fence record
/// written beside it by a stalled acquirer (the old `<name>.fence` file) or a
/// bump of the root's counter by another acquisition does not fence out the
/// holder, and a lock file of another acquisition does.
#[tokio::test]
async fn fence_is_read_from_the_lock_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = storage(dir.path());
    let lock = s.lock("l").await.unwrap();
    let fence = lock.fence().unwrap();
    let locks = dir.path().join("locks");
    fs::write(
        locks.join("l.fence"),
        format!(r#"{{"fence":{},"owner":"late"}}"#, fence + 1),
    )
    .unwrap();
    fs::write(locks.join(".fences"), (fence + 100).to_string()).unwrap();
    s.store_fenced(&lock, "k", b"mine").await.unwrap();
    assert_eq!(s.load("k").await.unwrap(), b"mine");
    // The next acquisition continues above the counter.
    lock.release().await.unwrap();
    let next = s.lock("l").await.unwrap();
    assert!(next.fence().unwrap() > fence + 100);
    next.release().await.unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let s = storage(&root);
    s.store("x/y/secret.key", b"PRIVATE").await.unwrap();
    let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(root.join("x/y/secret.key")), 0o600);
    // Overwriting an existing file with looser permissions makes it private.
    fs::set_permissions(
        root.join("x/y/secret.key"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    s.store("x/y/secret.key", b"NEW").await.unwrap();
    assert_eq!(mode(root.join("x/y/secret.key")), 0o600);
    assert_eq!(mode(root.clone()), 0o700);
    assert_eq!(mode(root.join("x")), 0o700);
    assert_eq!(mode(root.join("x/y")), 0o700);

    let lock = s.lock("l").await.unwrap();
    assert_eq!(mode(root.join("locks")), 0o700);
    assert_eq!(mode(root.join("locks/l.lock")), 0o600);
    lock.release().await.unwrap();
}

#[tokio::test]
async fn keys_cannot_escape_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStorage::new(dir.path().join("root"));
    let bad = [
        "../evil",
        "a/../../evil",
        "/etc/passwd",
        "a\\..\\..\\evil",
        "a/./b",
        "a//b",
        "",
        "a/.x.tmp-1-2",
    ];
    for key in bad {
        let invalid =
            |r: Result<(), StorageError>| matches!(r, Err(StorageError::InvalidKey { .. }));
        assert!(invalid(s.store(key, b"x").await), "store {key:?}");
        assert!(invalid(s.load(key).await.map(drop)), "load {key:?}");
        assert!(invalid(s.delete(key).await), "delete {key:?}");
        assert!(invalid(s.exists(key).await.map(drop)), "exists {key:?}");
        assert!(invalid(s.stat(key).await.map(drop)), "stat {key:?}");
        if !key.is_empty() {
            assert!(invalid(s.list(key, true).await.map(drop)), "list {key:?}");
        }
    }
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(names.is_empty(), "nothing written: {names:?}");
}

#[tokio::test]
async fn crash_before_rename_keeps_old_value() {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStorage::new(dir.path());
    s.store("certs/site.key", b"old").await.unwrap();
    let path = s.key_path("certs/site.key").unwrap();

    let crashed = write_atomic_hooked(&path, b"new value", &|tmp| {
        // The new value is fully on disk in the temporary file at this point.
        assert_eq!(fs::read(tmp).unwrap(), b"new value");
        Ok(super::atomic::BeforeRename::Crash)
    });
    assert!(crashed.is_err());

    let leftovers: Vec<String> = fs::read_dir(dir.path().join("certs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "site.key")
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "the interrupted write left its temporary file"
    );
    assert!(leftovers[0].starts_with(".site.key.tmp-"));

    assert_eq!(s.load("certs/site.key").await.unwrap(), b"old");
    assert_eq!(
        s.list("certs", false).await.unwrap(),
        vec!["certs/site.key"]
    );
    assert_eq!(s.list("", true).await.unwrap(), vec!["certs/site.key"]);
    let tmp_key = format!("certs/{}", leftovers[0]);
    assert!(matches!(
        s.load(&tmp_key).await,
        Err(StorageError::InvalidKey { .. })
    ));

    // Later writes still work.
    s.store("certs/site.key", b"newer").await.unwrap();
    assert_eq!(s.load("certs/site.key").await.unwrap(), b"newer");
}

fn write_lock_file(path: &Path, owner: &str, modified: SystemTime) {
    let meta = LockMeta {
        created: unix_now(),
        pid: 1,
        owner: owner.to_owned(),
        fence: 0,
    };
    fs::write(path, serde_json::to_vec(&meta).unwrap()).unwrap();
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(modified)
        .unwrap();
}

#[tokio::test]
async fn stale_lock_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStorage::builder(dir.path())
        .lock_stale_after(Duration::from_secs(5))
        .lock_poll_interval(Duration::from_millis(5))
        .build();
    let locks = dir.path().join("locks");
    fs::create_dir_all(&locks).unwrap();

    // A holder that died an hour ago.
    write_lock_file(
        &locks.join("dead.lock"),
        "dead",
        SystemTime::now() - Duration::from_secs(3600),
    );
    let lock = tokio::time::timeout(HANG, s.lock("dead"))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(read_lock(&locks.join("dead.lock")).owner, "dead");
    lock.release().await.unwrap();

    // An unreadable lock file, judged by its modification time.
    let garbage = locks.join("garbage.lock");
    fs::write(&garbage, b"not json").unwrap();
    fs::File::options()
        .write(true)
        .open(&garbage)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    tokio::time::timeout(HANG, s.lock("garbage"))
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();

    // A fresh lock file is not broken.
    write_lock_file(&locks.join("alive.lock"), "alive", SystemTime::now());
    let impatient = FileStorage::builder(dir.path())
        .lock_stale_after(Duration::from_secs(3600))
        .lock_wait_timeout(Some(Duration::ZERO))
        .build();
    assert!(matches!(
        impatient.lock("alive").await,
        Err(StorageError::LockTimeout(_))
    ));
    assert_eq!(read_lock(&locks.join("alive.lock")).owner, "alive");
    // Nothing was left behind by breaking locks.
    let mut names: Vec<_> = fs::read_dir(&locks)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != ".fences")
        .collect();
    names.sort();
    assert_eq!(names, vec!["alive.lock"]);
}

/// A dead holder's lock stamped an hour in the future (the clock was
/// stepped back since) is broken once it has stayed unchanged for the
/// stale age, measured on the waiter's monotonic clock.
#[tokio::test(start_paused = true)]
async fn lock_from_the_future_does_not_wedge() {
    let dir = tempfile::tempdir().unwrap();
    let locks = dir.path().join("locks");
    fs::create_dir_all(&locks).unwrap();
    write_lock_file(
        &locks.join("future.lock"),
        "dead",
        SystemTime::now() + Duration::from_secs(3600),
    );
    let s = FileStorage::builder(dir.path())
        .lock_stale_after(Duration::from_secs(10))
        .lock_poll_interval(Duration::from_millis(100))
        .build();
    let lock = s.lock("future").await.unwrap();
    assert_ne!(read_lock(&locks.join("future.lock")).owner, "dead");
    lock.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_keeps_lock_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let stale_after = Duration::from_millis(500);
    let make = || {
        FileStorage::builder(dir.path())
            .lock_stale_after(stale_after)
            .lock_keepalive(Duration::from_millis(20))
            .lock_poll_interval(Duration::from_millis(5))
            .build()
    };
    let a = make();
    let b = make();
    let mut refreshes = a.inner.refreshed.subscribe();
    let held = a.lock("k").await.unwrap();
    let path = dir.path().join("locks/k.lock");
    let first = read_lock(&path);
    let mtime = || fs::metadata(&path).unwrap().modified().unwrap();
    let first_mtime = mtime();

    let (acquired_tx, mut acquired_rx) = oneshot::channel();
    let waiter = tokio::spawn(async move {
        let lock = b.lock("k").await.unwrap();
        acquired_tx.send(()).unwrap();
        lock
    });

    // Wait (by keepalive events, not by time) until the lock has been held
    // longer than `stale_after`: without keepalive it would now be broken.
    tokio::time::timeout(HANG, async {
        loop {
            refreshes.changed().await.unwrap();
            let meta = read_lock(&path);
            assert_eq!(meta.created, first.created);
            assert_eq!(meta.owner, first.owner);
            if mtime().duration_since(first_mtime).unwrap_or_default() > 2 * stale_after {
                break;
            }
        }
    })
    .await
    .unwrap();
    assert!(
        acquired_rx.try_recv().is_err(),
        "a kept-alive lock was broken"
    );
    assert!(!waiter.is_finished());
    assert!(!held.is_lost());

    held.release().await.unwrap();
    let second = tokio::time::timeout(HANG, waiter).await.unwrap().unwrap();
    acquired_rx.await.unwrap();
    second.release().await.unwrap();
}

/// A lock broken under its holder (here: its file replaced by another
/// client's) is reported lost at the next refresh; the refresh does not
/// touch the other client's file, and releasing leaves it in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_lock_is_reported_lost() {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStorage::builder(dir.path())
        .lock_keepalive(Duration::from_millis(10))
        .build();
    let held = s.lock("k").await.unwrap();
    let path = dir.path().join("locks/k.lock");
    let long_ago = SystemTime::now() - Duration::from_secs(3600);
    write_lock_file(&path, "someone-else", long_ago);
    tokio::time::timeout(HANG, held.lost()).await.unwrap();
    assert!(matches!(held.ensure_held(), Err(StorageError::LockLost(_))));
    // Never refreshed: the modification time is still the other's.
    assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), long_ago);
    held.release().await.unwrap();
    assert_eq!(read_lock(&path).owner, "someone-else");
}

/// A lock whose file vanished (broken as stale) is reported lost too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_lock_is_reported_lost() {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStorage::builder(dir.path())
        .lock_keepalive(Duration::from_millis(10))
        .build();
    let held = s.lock("k").await.unwrap();
    fs::remove_file(dir.path().join("locks/k.lock")).unwrap();
    tokio::time::timeout(HANG, held.lost()).await.unwrap();
    held.release().await.unwrap();
}

/// A refresh that keeps failing (the lock folder became unwritable) is
/// retried, and the lock counts as lost once refreshes failed for longer
/// than the stale age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_refresh_is_retried_then_lost() {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStorage::builder(dir.path())
        .lock_keepalive(Duration::from_millis(10))
        .lock_stale_after(Duration::from_millis(200))
        .build();
    let mut refreshes = s.inner.refreshed.subscribe();
    let held = s.lock("k").await.unwrap();
    let path = dir.path().join("locks/k.lock");
    // A directory in place of the file: opening it for writing fails
    // with an error other than "not found", for root too.
    let saved = fs::read(&path).unwrap();
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    // At least two failed refreshes are retried before the loss.
    tokio::time::timeout(HANG, async {
        let mut failures = 0;
        while failures < 2 && !held.is_lost() {
            refreshes.changed().await.unwrap();
            failures += 1;
        }
    })
    .await
    .unwrap();
    tokio::time::timeout(HANG, held.lost()).await.unwrap();
    fs::remove_dir(&path).unwrap();
    fs::write(&path, saved).unwrap();
    held.release().await.unwrap();
}

#[test]
fn lock_names_are_sanitised() {
    assert_eq!(
        lock_file_stem("cert_*.example.com").unwrap(),
        "cert__.example.com"
    );
    assert_eq!(
        lock_file_stem("../../etc/passwd").unwrap(),
        ".._.._etc_passwd"
    );
    assert!(lock_file_stem("").is_err());
    let long = "x".repeat(300);
    let stem = lock_file_stem(&long).unwrap();
    assert_eq!(stem.len(), MAX_LOCK_NAME);
    assert_ne!(stem, lock_file_stem(&"x".repeat(301)).unwrap());
}

#[test]
fn default_root_follows_the_os() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    };
    if cfg!(windows) {
        assert_eq!(
            default_root_from(env(&[("APPDATA", r"C:\Users\me\AppData\Roaming")])),
            Some(PathBuf::from(r"C:\Users\me\AppData\Roaming\certauto"))
        );
    } else if cfg!(target_os = "macos") {
        assert_eq!(
            default_root_from(env(&[("HOME", "/Users/me")])),
            Some(PathBuf::from(
                "/Users/me/Library/Application Support/certauto"
            ))
        );
    } else {
        assert_eq!(
            default_root_from(env(&[("HOME", "/home/me"), ("XDG_DATA_HOME", "/data")])),
            Some(PathBuf::from("/data/certauto"))
        );
        assert_eq!(
            default_root_from(env(&[("HOME", "/home/me"), ("XDG_DATA_HOME", "relative")])),
            Some(PathBuf::from("/home/me/.local/share/certauto"))
        );
    }
    assert_eq!(default_root_from(env(&[])), None);
}
