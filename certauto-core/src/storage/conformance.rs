//! The storage conformance suite: one call that checks a [`Storage`] backend
//! against the whole [contract](Storage#contract), locks and fencing
//! included.
//!
//! Compiled with the `conformance` cargo feature (and in this crate's own
//! tests). [`run`] drives a backend through a [`ConformanceBackend`], which
//! hands out independent clients of the same backend and can make a lock's
//! lease run out on demand, and panics with a message naming the failed
//! check and the backend. The checks, in order:
//!
//! - **values**: `store` / `load` / `exists`, replacing a value, empty values;
//! - **not found**: `load` and `stat` of a missing key give
//!   [`StorageError::NotFound`]; `delete` of one is `Ok` or `NotFound`;
//! - **list**: recursive and not, full keys returned, no confusion between
//!   `a` and `a-b` or `a0`, an unknown prefix gives `NotFound` or an empty list;
//! - **stat**: size, `is_terminal`, a `modified` time for values (a cleaner
//!   ages values by it), `size` 0 and not terminal for "directories";
//! - **delete**: a "directory" goes with everything below it, and only that;
//! - **key characters**: keys with every character [`validate_key`]
//!   allows (unicode, spaces, `*`, `?`, `[`, `:`, `%`, `@`, `+`, `=`, dots
//!   inside components, a 1024-byte key) round-trip through store, load,
//!   list, stat and delete; invalid keys are refused with
//!   [`StorageError::InvalidKey`] by every operation;
//! - **atomic replacement**: readers in many tasks see only a whole old or a
//!   whole new value while a writer replaces it;
//! - **lock exclusion**: tasks of one client, and tasks of two clients,
//!   increment a counter under a lock with no lost update;
//! - **lock timeout**: a held lock makes `lock` fail with
//!   [`StorageError::LockTimeout`] after the client's wait timeout, for
//!   another client and for the holder's own; other names are independent;
//!   an empty lock name is [`StorageError::InvalidKey`];
//! - **release**: a released lock, and a guard dropped unreleased (or a
//!   `lock` call cancelled part-way, or while waiting), free the lock for
//!   another client;
//! - **expiry and takeover**: after [`ConformanceBackend::expire_lock`],
//!   another client acquires at once, and the old holder's release does not
//!   free the new holder's lock;
//! - **lost lock**: the old holder's guard reports the loss
//!   ([`LockGuard::lost`] resolves, [`LockGuard::ensure_held`] fails);
//! - **fencing**: the old holder, whose keepalive has not run (paused),
//!   cannot [`store_fenced`](Storage::store_fenced) over the new holder's
//!   value, and [fences](LockGuard::fence) strictly increase;
//! - **fenced delete**: the holder's [`delete_fenced`](Storage::delete_fenced)
//!   removes a value; the taken-over holder's is refused with
//!   [`StorageError::LockLost`], for a value and for a "directory", and the
//!   new holder's value stays;
//! - **cross-process** (when [`ConformanceBackend::child_command`] gives a
//!   child): a lock held by another process excludes this one until released
//!   (the waiter's fence is higher than the child's), and the lock of a
//!   process killed with `SIGKILL` is taken over once its lease (a short
//!   one, given to the child with `--lease-ms`) runs out on its own.
//!
//! Every wait is bounded and awaits a state (no sleeps, no timed
//! assertions). Each check uses its own key prefix and lock names, unique to
//! the run, so a shared backend (a Redis server) can run the suite again and
//! again; a run removes the keys it wrote.
//!
//! # Running it for a backend
//!
//! ```no_run
//! # extern crate certauto_core as certauto;
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use certauto::storage::conformance::{self, ConformanceBackend, LockTimings};
//! use certauto::{FileStorage, Storage, StorageError};
//!
//! struct MyBackend(std::path::PathBuf);
//!
//! #[async_trait]
//! impl ConformanceBackend for MyBackend {
//!     async fn client(&self, t: LockTimings) -> Result<Arc<dyn Storage>, StorageError> {
//!         Ok(Arc::new(
//!             FileStorage::builder(&self.0)
//!                 .lock_stale_after(t.lease)
//!                 .lock_keepalive(t.keepalive)
//!                 .lock_poll_interval(t.poll)
//!                 .lock_wait_timeout(Some(t.wait_timeout))
//!                 .build(),
//!         ))
//!     }
//!     async fn expire_lock(&self, name: &str) -> Result<(), StorageError> {
//!         // Make the lock look abandoned: for a Redis backend, e.g., delete its key.
//!         # let _ = name;
//!         Ok(())
//!     }
//!     fn child_command(&self) -> Option<std::process::Command> {
//!         // A binary that opens the same backend and calls `conformance::child_main`.
//!         None
//!     }
//! }
//!
//! # async fn demo() {
//! conformance::run(&MyBackend("/tmp/conformance".into())).await;
//! # }
//! ```
//!
//! [`FileBackend`] and [`MemoryBackend`] are the ready-made backends of this
//! crate's own storages.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::{FileStorage, LockGuard, MemoryStorage, Storage, StorageError, validate_key};
use crate::error::ErrorChain;

/// The lock timings of a client the suite asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockTimings {
    /// How long a lock not kept alive lasts before another client may take it.
    pub lease: Duration,
    /// How often the holder keeps its lock alive.
    pub keepalive: Duration,
    /// How often a waiting client checks a held lock again (at most).
    pub poll: Duration,
    /// How long `lock` waits for a held lock before [`StorageError::LockTimeout`].
    pub wait_timeout: Duration,
}

impl LockTimings {
    /// Long lease, keepalive every second, waits up to 10 minutes (longer than
    /// any check's bound, so a check never passes by timing out).
    const PATIENT: Self = Self {
        lease: Duration::from_secs(3600),
        keepalive: Duration::from_secs(1),
        poll: Duration::from_millis(10),
        wait_timeout: Duration::from_secs(600),
    };
    /// As [`PATIENT`](Self::PATIENT), but gives up waiting after 200 ms.
    const IMPATIENT: Self = Self {
        wait_timeout: Duration::from_millis(200),
        ..Self::PATIENT
    };
    /// A holder whose keepalive never runs during a check: as if paused.
    const PAUSED: Self = Self {
        keepalive: Duration::from_secs(3000),
        ..Self::PATIENT
    };
    /// A holder that notices a loss quickly.
    const WATCHFUL: Self = Self {
        keepalive: Duration::from_millis(50),
        ..Self::PATIENT
    };
}

/// A backend under test: hands out clients and controls lock leases.
#[async_trait]
pub trait ConformanceBackend: Send + Sync {
    /// A new, independent client of the same backend (same folder / server /
    /// key prefix) with these lock timings.
    async fn client(&self, timings: LockTimings) -> Result<Arc<dyn Storage>, StorageError>;
    /// Makes lock `name`'s lease run out now, as if its holder stopped keeping
    /// it alive (holder paused or dead).
    async fn expire_lock(&self, name: &str) -> Result<(), StorageError>;
    /// A child process that opens the same backend and runs
    /// [`child_main`] (cross-process tests); `None` only for backends that
    /// cannot be shared across processes ([`MemoryStorage`]).
    ///
    /// The suite may append the two arguments `--lease-ms <N>` to the
    /// command: the child MUST then open its storage with a lock lease of
    /// `N` milliseconds (keepalive a third of it), so that the lock of a
    /// killed child runs out on its own (see [`child_lease`]).
    fn child_command(&self) -> Option<std::process::Command>;
}

/// The lock lease the suite gives a child it kills (`--lease-ms`).
const CHILD_LEASE: Duration = Duration::from_secs(2);

/// For a child binary: removes `--lease-ms <N>` from `args` (wherever it
/// is) and returns the lease it asks for, `Ok(None)` when absent, and an
/// error naming the problem when `N` is not a number of milliseconds.
pub fn child_lease(args: &mut Vec<String>) -> Result<Option<Duration>, String> {
    let Some(at) = args.iter().position(|a| a == "--lease-ms") else {
        return Ok(None);
    };
    let value = args
        .get(at + 1)
        .cloned()
        .ok_or_else(|| "--lease-ms needs a number of milliseconds".to_owned())?;
    let ms: u64 = value
        .parse()
        .map_err(|_| format!("--lease-ms {value:?} is not a number of milliseconds"))?;
    args.drain(at..at + 2);
    Ok(Some(Duration::from_millis(ms)))
}

/// Upper bound on any wait of the suite; only a hung backend reaches it.
const HANG: Duration = Duration::from_secs(60);
/// The most bytes of one line of the child protocol.
const MAX_LINE: u64 = 4096;

/// Runs every check against `backend`, in order.
///
/// # Panics
///
/// On the first failed check, with a message naming the check, the backend
/// (its client's `Debug`) and what went wrong.
pub async fn run(backend: &dyn ConformanceBackend) {
    let ctx = Ctx {
        backend,
        run: run_id(),
        name: String::new(),
    };
    let name = match ctx.backend.client(LockTimings::PATIENT).await {
        Ok(client) => format!("{client:?}").chars().take(300).collect(),
        Err(e) => panic!(
            "storage conformance: could not open a client: {}",
            ErrorChain(&e)
        ),
    };
    let ctx = Ctx { name, ..ctx };
    macro_rules! checks {
        ($($check:ident),* $(,)?) => {$(
            tracing::info!(check = stringify!($check), "storage conformance");
            if let Err(message) = $check(&ctx).await {
                panic!(
                    "storage conformance: check `{}` failed on {}: {message}",
                    stringify!($check),
                    ctx.name
                );
            }
        )*};
    }
    checks!(
        values,
        not_found,
        list,
        stat,
        delete_tree,
        key_characters,
        invalid_keys,
        atomic_replacement,
        lock_exclusion_tasks,
        lock_exclusion_clients,
        lock_timeout,
        release_frees,
        dropped_guard_frees,
        expiry_and_takeover,
        lost_lock_signalled,
        fencing,
        fenced_delete,
        cross_process,
        killed_process,
    );
    // Leave nothing behind on a shared backend.
    if let Ok(client) = ctx.backend.client(LockTimings::PATIENT).await {
        let _ = client.delete(&ctx.root()).await;
    }
}

/// What a check runs with.
struct Ctx<'a> {
    backend: &'a dyn ConformanceBackend,
    /// Unique to this run.
    run: String,
    /// The backend, for messages.
    name: String,
}

impl Ctx<'_> {
    /// The key prefix of the whole run.
    fn root(&self) -> String {
        format!("conformance-{}", self.run)
    }

    /// The key prefix of one check.
    fn prefix(&self, check: &str) -> String {
        format!("{}/{check}", self.root())
    }

    /// A lock name of one check.
    fn lock_name(&self, check: &str) -> String {
        format!("conformance-{}-{check}", self.run)
    }

    async fn client(&self, timings: LockTimings) -> Result<Arc<dyn Storage>, String> {
        bounded("open a client", self.backend.client(timings))
            .await?
            .op("open a client")
    }

    async fn expire(&self, name: &str) -> Result<(), String> {
        bounded("expire_lock", self.backend.expire_lock(name))
            .await?
            .op("expire_lock")
    }
}

type Checked = Result<(), String>;

/// Fails the check with a message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Turns a storage result into a check result naming the operation.
trait Op<T> {
    fn op(self, what: &str) -> Result<T, String>;
}

impl<T> Op<T> for Result<T, StorageError> {
    fn op(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: unexpected error: {}", ErrorChain(&e)))
    }
}

/// Awaits `fut` for at most [`HANG`].
async fn bounded<F: Future>(what: &str, fut: F) -> Result<F::Output, String> {
    tokio::time::timeout(HANG, fut)
        .await
        .map_err(|_| format!("{what}: did not finish within {HANG:?}"))
}

/// A random hex id for this run.
fn run_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        return format!("{}-{nanos:x}", std::process::id());
    }
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn sorted(mut keys: Vec<String>) -> Vec<String> {
    keys.sort();
    keys
}

/// `list` of `prefix` is empty or `NotFound`.
async fn lists_nothing(s: &dyn Storage, prefix: &str, recursive: bool) -> Checked {
    match s.list(prefix, recursive).await {
        Ok(keys) => ensure!(
            keys.is_empty(),
            "list({prefix:?}, {recursive}) should be empty or NotFound, got {keys:?}"
        ),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(format!("list({prefix:?}): {}", ErrorChain(&e))),
    }
    Ok(())
}

/// `delete` of a missing key is `Ok` or `NotFound`.
async fn delete_missing(s: &dyn Storage, key: &str) -> Checked {
    match s.delete(key).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(format!("delete of missing {key:?}: {}", ErrorChain(&e))),
    }
}

async fn values(ctx: &Ctx<'_>) -> Checked {
    let s = ctx.client(LockTimings::PATIENT).await?;
    let p = ctx.prefix("values");
    let k = format!("{p}/a/b/c");
    s.store(&k, b"one").await.op("store")?;
    ensure!(s.load(&k).await.op("load")? == b"one", "load after store");
    s.store(&k, b"second").await.op("store again")?;
    ensure!(
        s.load(&k).await.op("load")? == b"second",
        "load after replacing the value"
    );
    let empty = format!("{p}/empty");
    s.store(&empty, b"").await.op("store an empty value")?;
    ensure!(
        s.load(&empty).await.op("load")?.is_empty(),
        "an empty value loads as empty"
    );
    let binary: Vec<u8> = (0..=255u8).collect();
    let bin = format!("{p}/binary");
    s.store(&bin, &binary).await.op("store binary")?;
    ensure!(
        s.load(&bin).await.op("load")? == binary,
        "every byte value round-trips"
    );
    ensure!(s.exists(&k).await.op("exists")?, "exists of a value");
    ensure!(
        s.exists(&format!("{p}/a")).await.op("exists")?,
        "exists of a key with keys below it"
    );
    ensure!(
        !s.exists(&format!("{p}/a/x")).await.op("exists")?,
        "exists of a missing key"
    );
    // Another client sees the same values.
    let other = ctx.client(LockTimings::PATIENT).await?;
    ensure!(
        other.load(&k).await.op("load from another client")? == b"second",
        "another client sees the value"
    );
    s.delete(&p).await.op("clean up")?;
    Ok(())
}

async fn not_found(ctx: &Ctx<'_>) -> Checked {
    let s = ctx.client(LockTimings::PATIENT).await?;
    let p = ctx.prefix("not_found");
    s.store(&format!("{p}/ab"), b"x").await.op("store")?;
    s.store(&format!("{p}/d/v"), b"x").await.op("store")?;
    for missing in [format!("{p}/a"), format!("{p}/nope/deeper")] {
        ensure!(
            matches!(s.load(&missing).await, Err(StorageError::NotFound(_))),
            "load of missing {missing:?} should be NotFound"
        );
        ensure!(
            matches!(s.stat(&missing).await, Err(StorageError::NotFound(_))),
            "stat of missing {missing:?} should be NotFound"
        );
        ensure!(
            !s.exists(&missing).await.op("exists")?,
            "exists of missing {missing:?}"
        );
        delete_missing(s.as_ref(), &missing).await?;
        lists_nothing(s.as_ref(), &missing, false).await?;
        lists_nothing(s.as_ref(), &missing, true).await?;
    }
    // A "directory" holds no value.
    ensure!(
        matches!(
            s.load(&format!("{p}/d")).await,
            Err(StorageError::NotFound(_))
        ),
        "load of a key that only has keys below it should be NotFound"
    );
    s.delete(&p).await.op("clean up")?;
    Ok(())
}

async fn list(ctx: &Ctx<'_>) -> Checked {
    let s = ctx.client(LockTimings::PATIENT).await?;
    let p = ctx.prefix("list");
    let k = |rel: &str| format!("{p}/{rel}");
    let ks = |rels: &[&str]| rels.iter().map(|r| k(r)).collect::<Vec<_>>();
    for rel in ["a/x", "a/b/c", "a/b/d/e", "a-b/z", "a0", "b"] {
        s.store(&k(rel), rel.as_bytes()).await.op("store")?;
    }
    let cases: [(&str, bool, Vec<String>); 6] = [
        ("a", false, ks(&["a/b", "a/x"])),
        ("a", true, ks(&["a/b/c", "a/b/d/e", "a/x"])),
        ("a/b", false, ks(&["a/b/c", "a/b/d"])),
        ("a/b", true, ks(&["a/b/c", "a/b/d/e"])),
        ("", false, ks(&["a", "a-b", "a0", "b"])),
        (
            "",
            true,
            ks(&["a-b/z", "a/b/c", "a/b/d/e", "a/x", "a0", "b"]),
        ),
    ];
    for (rel, recursive, want) in cases {
        let prefix = if rel.is_empty() { p.clone() } else { k(rel) };
        let got = sorted(s.list(&prefix, recursive).await.op("list")?);
        ensure!(
            got == sorted(want.clone()),
            "list({prefix:?}, recursive: {recursive}): want {want:?}, got {got:?}"
        );
    }
    // A value has nothing below it; an unknown prefix lists nothing.
    lists_nothing(s.as_ref(), &k("a/x"), false).await?;
    lists_nothing(s.as_ref(), &k("a/x"), true).await?;
    lists_nothing(s.as_ref(), &k("nope"), false).await?;
    lists_nothing(s.as_ref(), &k("a/nope"), true).await?;
    s.delete(&p).await.op("clean up")?;
    Ok(())
}

async fn stat(ctx: &Ctx<'_>) -> Checked {
    let s = ctx.client(LockTimings::PATIENT).await?;
    let p = ctx.prefix("stat");
    let k = format!("{p}/dir/value");
    // Clocks of a shared backend may differ from ours by a little.
    let slack = Duration::from_secs(300);
    let before = SystemTime::now() - slack;
    s.store(&k, b"12345").await.op("store")?;
    let info = s.stat(&k).await.op("stat")?;
    ensure!(info.key == k, "stat gives the key: {info:?}");
    ensure!(info.is_terminal, "a value is terminal: {info:?}");
    ensure!(info.size == 5, "size of a 5-byte value: {info:?}");
    let after = SystemTime::now() + slack;
    ensure!(
        info.modified.is_some_and(|m| m >= before && m <= after),
        "a value has a modified time, about now: {info:?}"
    );
    s.store(&k, b"").await.op("store empty")?;
    let info = s.stat(&k).await.op("stat")?;
    ensure!(
        info.size == 0 && info.is_terminal,
        "an empty value: {info:?}"
    );
    let dir = format!("{p}/dir");
    let info = s.stat(&dir).await.op("stat of a directory")?;
    ensure!(info.key == dir, "stat gives the key: {info:?}");
    ensure!(
        !info.is_terminal && info.size == 0,
        "a key with keys below it is not terminal and has size 0: {info:?}"
    );
    s.delete(&p).await.op("clean up")?;
    Ok(())
}

async fn delete_tree(ctx: &Ctx<'_>) -> Checked {
    let s = ctx.client(LockTimings::PATIENT).await?;
    let p = ctx.prefix("delete_tree");
    let k = |rel: &str| format!("{p}/{rel}");
    for rel in ["a/b/c", "a/b/d/e", "a/e", "ab", "a-b/c", "a0"] {
        s.store(&k(rel), b"v").await.op("store")?;
    }
    s.delete(&k("a/e")).await.op("delete a value")?;
    ensure!(
        matches!(s.load(&k("a/e")).await, Err(StorageError::NotFound(_))),
        "a deleted value is NotFound"
    );
    s.delete(&k("a/b")).await.op("delete a directory")?;
    for gone in ["a/b/c", "a/b/d/e", "a/b/d", "a/b"] {
        ensure!(
            !s.exists(&k(gone)).await.op("exists")?,
            "{gone} still exists after deleting a/b"
        );
    }
    s.store(&k("a/f"), b"v").await.op("store")?;
    s.delete(&k("a")).await.op("delete a directory")?;
    ensure!(!s.exists(&k("a")).await.op("exists")?, "a still exists");
    ensure!(
        !s.exists(&k("a/f")).await.op("exists")?,
        "a/f still exists after deleting a"
    );
    for kept in ["ab", "a-b/c", "a0"] {
        ensure!(
            s.load(&k(kept)).await.op("load")? == b"v",
            "{kept} was removed by deleting a"
        );
    }
    delete_missing(s.as_ref(), &k("a")).await?;
    s.delete(&p).await.op("clean up")?;
    lists_nothing(s.as_ref(), &p, true).await?;
    Ok(())
}

/// Keys that use every kind of character the key rules allow, below `p`.
fn unusual_keys(p: &str) -> Vec<String> {
    let mut keys: Vec<String> = [
        "ünïcødé/日本語/ключ",
        "emoji 🔐/e\u{301}",
        "with space/ leading and trailing ",
        "star*/question?/[brackets]/{braces}",
        "colon:/percent%41%/at@/plus+/equals=",
        "dots.inside/a.b.c/x..y/x.",
        "punct/!\"#$&'(),;<>^`|~",
        "glob/*",
        "glob/a*",
        "wildcard_.example.com/_acme-challenge",
    ]
    .iter()
    .map(|rel| format!("{p}/{rel}"))
    .collect();
    // Exactly the 1024-byte limit, in components short enough for any file system.
    let mut long = format!("{p}/long");
    while long.len() < 1024 {
        let room = 1024 - long.len() - 1;
        long.push('/');
        long.push_str(&"k".repeat(room.clamp(1, 200)));
    }
    keys.push(long);
    keys
}

async fn key_characters(ctx: &Ctx<'_>) -> Checked {
    let s = ctx.client(LockTimings::PATIENT).await?;
    let p = ctx.prefix("key_characters");
    let keys = unusual_keys(&p);
    for key in &keys {
        ensure!(
            validate_key(key).is_ok(),
            "the suite's own key {key:?} is not valid"
        );
        s.store(key, key.as_bytes())
            .await
            .op(&format!("store {key:?}"))?;
    }
    for key in &keys {
        ensure!(
            s.load(key).await.op(&format!("load {key:?}"))? == key.as_bytes(),
            "{key:?} does not round-trip"
        );
        let info = s.stat(key).await.op(&format!("stat {key:?}"))?;
        ensure!(
            info.key == *key && info.is_terminal && info.size == key.len() as u64,
            "stat of {key:?}: {info:?}"
        );
        ensure!(s.exists(key).await.op("exists")?, "{key:?} does not exist");
    }
    let listed = sorted(s.list(&p, true).await.op("list")?);
    ensure!(
        listed == sorted(keys.clone()),
        "recursive list: want {keys:?}, got {listed:?}"
    );
    // Glob characters are not patterns: `glob/*` lists only what is below it.
    let glob = format!("{p}/glob");
    let listed = sorted(s.list(&glob, false).await.op("list")?);
    let want = vec![format!("{glob}/*"), format!("{glob}/a*")];
    ensure!(
        listed == want,
        "list of {glob:?}: want {want:?}, got {listed:?}"
    );
    lists_nothing(s.as_ref(), &format!("{glob}/*"), true).await?;
    for key in &keys {
        s.delete(key).await.op(&format!("delete {key:?}"))?;
        ensure!(
            !s.exists(key).await.op("exists")?,
            "{key:?} exists after delete"
        );
    }
    let left = s.list(&p, true).await.unwrap_or_default();
    ensure!(left.is_empty(), "keys left after deleting all: {left:?}");
    let _ = s.delete(&p).await;
    Ok(())
}

async fn invalid_keys(ctx: &Ctx<'_>) -> Checked {
    let s = ctx.client(LockTimings::PATIENT).await?;
    let p = ctx.prefix("invalid_keys");
    let mut bad = vec![
        String::new(),
        format!("/{p}"),
        format!("{p}/"),
        format!("{p}//b"),
        format!("{p}/../b"),
        format!("{p}/./b"),
        format!("{p}/.."),
        format!("{p}\\b"),
        format!("{p}/a\0b"),
        format!("{p}/a\nb"),
        format!("{p}/a\u{7f}"),
    ];
    let mut too_long = format!("{p}/long");
    while too_long.len() <= 1024 {
        too_long.push_str("/kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk");
    }
    bad.push(too_long);
    let invalid = |r: Result<(), StorageError>| matches!(r, Err(StorageError::InvalidKey { .. }));
    for key in &bad {
        ensure!(
            invalid(s.store(key, b"x").await),
            "store of {key:?} not refused with InvalidKey"
        );
        ensure!(
            invalid(s.load(key).await.map(drop)),
            "load of {key:?} not refused with InvalidKey"
        );
        ensure!(
            invalid(s.delete(key).await),
            "delete of {key:?} not refused with InvalidKey"
        );
        ensure!(
            invalid(s.exists(key).await.map(drop)),
            "exists of {key:?} not refused with InvalidKey"
        );
        ensure!(
            invalid(s.stat(key).await.map(drop)),
            "stat of {key:?} not refused with InvalidKey"
        );
        if !key.is_empty() {
            ensure!(
                invalid(s.list(key, true).await.map(drop)),
                "list of {key:?} not refused with InvalidKey"
            );
        }
    }
    lists_nothing(s.as_ref(), &p, true).await?;
    Ok(())
}

async fn atomic_replacement(ctx: &Ctx<'_>) -> Checked {
    const ROUNDS: usize = 40;
    const READERS: usize = 4;
    const MAX_READS: usize = 100_000;
    let s = ctx.client(LockTimings::PATIENT).await?;
    let p = ctx.prefix("atomic_replacement");
    let key = format!("{p}/value");
    let old = Arc::new(vec![b'o'; 64 * 1024]);
    let new = Arc::new(vec![b'n'; 96 * 1024 + 7]);
    s.store(&key, &old).await.op("store")?;
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let (s, key, old, new, done) = (
            s.clone(),
            key.clone(),
            old.clone(),
            new.clone(),
            done.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut reads = 0;
            while !done.load(Ordering::SeqCst) && reads < MAX_READS {
                let value = s.load(&key).await.op("load during replacement")?;
                ensure!(
                    value == *old || value == *new,
                    "a reader saw a value that is neither whole: {} bytes",
                    value.len()
                );
                reads += 1;
                tokio::task::yield_now().await;
            }
            Ok(())
        }));
    }
    let writer = {
        let (s, key, done) = (s.clone(), key.clone(), done.clone());
        tokio::spawn(async move {
            let result = async {
                for round in 0..ROUNDS {
                    let value = if round % 2 == 0 { &new } else { &old };
                    s.store(&key, value).await.op("store during reads")?;
                }
                Ok::<(), String>(())
            }
            .await;
            done.store(true, Ordering::SeqCst);
            result
        })
    };
    bounded("writer", writer)
        .await?
        .map_err(|e| format!("writer task: {e}"))??;
    for reader in readers {
        bounded("reader", reader)
            .await?
            .map_err(|e| format!("reader task: {e}"))??;
    }
    s.delete(&p).await.op("clean up")?;
    Ok(())
}

/// `tasks` tasks, task `i` on `clients[i % len]`, each `rounds` times
/// increment a stored counter under lock `name`; checks that no update was
/// lost and that no two tasks were inside at once.
async fn count_under_lock(
    clients: &[Arc<dyn Storage>],
    name: &str,
    key: &str,
    tasks: usize,
    rounds: usize,
) -> Checked {
    let inside = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for i in 0..tasks {
        let Some(s) = clients.get(i % clients.len().max(1)).cloned() else {
            return Err("no client".to_owned());
        };
        let (inside, name, key) = (inside.clone(), name.to_owned(), key.to_owned());
        handles.push(tokio::spawn(async move {
            for _ in 0..rounds {
                let guard = s.lock(&name).await.op("lock")?;
                ensure!(
                    inside.fetch_add(1, Ordering::SeqCst) == 0,
                    "two holders of lock {name:?} at once"
                );
                let count: usize = match s.load(&key).await {
                    Ok(v) => String::from_utf8_lossy(&v)
                        .parse()
                        .map_err(|_| format!("the counter value is garbled: {v:?}"))?,
                    Err(e) if e.is_not_found() => 0,
                    Err(e) => return Err(format!("load counter: {}", ErrorChain(&e))),
                };
                tokio::task::yield_now().await;
                s.store_fenced(&guard, &key, count.saturating_add(1).to_string().as_bytes())
                    .await
                    .op("store_fenced the counter")?;
                inside.fetch_sub(1, Ordering::SeqCst);
                guard.release().await.op("release")?;
            }
            Ok(())
        }));
    }
    for handle in handles {
        bounded("a counting task", handle)
            .await?
            .map_err(|e| format!("counting task: {e}"))??;
    }
    let Some(s) = clients.first() else {
        return Err("no client".to_owned());
    };
    let count = String::from_utf8_lossy(&s.load(key).await.op("load counter")?).into_owned();
    ensure!(
        count == (tasks * rounds).to_string(),
        "lost updates: counter {count}, want {}",
        tasks * rounds
    );
    Ok(())
}

async fn lock_exclusion_tasks(ctx: &Ctx<'_>) -> Checked {
    let s = ctx.client(LockTimings::PATIENT).await?;
    let p = ctx.prefix("lock_exclusion_tasks");
    let name = ctx.lock_name("lock_exclusion_tasks");
    count_under_lock(
        std::slice::from_ref(&s),
        &name,
        &format!("{p}/counter"),
        8,
        10,
    )
    .await?;
    s.delete(&p).await.op("clean up")?;
    Ok(())
}

async fn lock_exclusion_clients(ctx: &Ctx<'_>) -> Checked {
    let a = ctx.client(LockTimings::PATIENT).await?;
    let b = ctx.client(LockTimings::PATIENT).await?;
    let p = ctx.prefix("lock_exclusion_clients");
    let name = ctx.lock_name("lock_exclusion_clients");
    count_under_lock(&[a.clone(), b], &name, &format!("{p}/counter"), 4, 5).await?;
    a.delete(&p).await.op("clean up")?;
    Ok(())
}

async fn lock_timeout(ctx: &Ctx<'_>) -> Checked {
    let a = ctx.client(LockTimings::IMPATIENT).await?;
    let b = ctx.client(LockTimings::IMPATIENT).await?;
    let name = ctx.lock_name("lock_timeout");
    let held = bounded("lock", a.lock(&name)).await?.op("lock")?;
    for (who, client) in [("another client", &b), ("the holder's own client", &a)] {
        match bounded("lock while held", client.lock(&name)).await? {
            Err(StorageError::LockTimeout(n)) => {
                ensure!(n == name, "LockTimeout names {n:?}, not {name:?}");
            }
            Ok(_) => return Err(format!("{who} acquired a held lock")),
            Err(e) => {
                return Err(format!("{who}: want LockTimeout, got {}", ErrorChain(&e)));
            }
        }
    }
    ensure!(
        matches!(
            bounded("lock with an empty name", b.lock("")).await?,
            Err(StorageError::InvalidKey { .. })
        ),
        "an empty lock name should be refused with InvalidKey"
    );
    // Another name is independent.
    let other = bounded("lock another name", b.lock(&format!("{name}-other")))
        .await?
        .op("lock another name while one is held")?;
    other.release().await.op("release")?;
    held.release().await.op("release")?;
    let again = bounded("lock after release", b.lock(&name))
        .await?
        .op("lock after release")?;
    again.release().await.op("release")?;
    Ok(())
}

async fn release_frees(ctx: &Ctx<'_>) -> Checked {
    let a = ctx.client(LockTimings::PATIENT).await?;
    let b = ctx.client(LockTimings::PATIENT).await?;
    let c = ctx.client(LockTimings::IMPATIENT).await?;
    let name = ctx.lock_name("release_frees");
    let held = bounded("lock", a.lock(&name)).await?.op("lock")?;
    let held_fence = fence_of(&held)?;
    let waiter = {
        let (b, name) = (b.clone(), name.clone());
        tokio::spawn(async move { b.lock(&name).await.op("lock of the waiter") })
    };
    // The lock is held (another client times out), and the waiter, which had
    // that long to get it, has not.
    expect_timeout(c.as_ref(), &name, "a held lock").await?;
    ensure!(
        !waiter.is_finished(),
        "the waiter's lock returned while the lock was held"
    );
    held.release().await.op("release")?;
    let guard = bounded("the waiter's lock after release", waiter)
        .await?
        .map_err(|e| format!("waiter task: {e}"))??;
    let waiter_fence = fence_of(&guard)?;
    ensure!(
        waiter_fence > held_fence,
        "the waiter's acquisition ({waiter_fence}) is not later than the holder's ({held_fence})"
    );
    guard.release().await.op("release")?;
    // The same client can take it again at once too.
    let again = bounded("lock again", a.lock(&name))
        .await?
        .op("lock again")?;
    again.release().await.op("release")?;
    Ok(())
}

/// The fence of `guard`; every backend gives one.
fn fence_of(guard: &LockGuard) -> Result<u64, String> {
    guard
        .fence()
        .ok_or_else(|| format!("lock {:?} has no fence", guard.name()))
}

/// `client`'s `lock(name)` fails with `LockTimeout` (the lock is held elsewhere).
async fn expect_timeout(client: &dyn Storage, name: &str, what: &str) -> Checked {
    match bounded(&format!("lock of {what}"), client.lock(name)).await? {
        Err(StorageError::LockTimeout(n)) => {
            ensure!(n == name, "LockTimeout names {n:?}, not {name:?}");
            Ok(())
        }
        Ok(_) => Err(format!("acquired {what}")),
        Err(e) => Err(format!(
            "lock of {what}: want LockTimeout, got {}",
            ErrorChain(&e)
        )),
    }
}

async fn dropped_guard_frees(ctx: &Ctx<'_>) -> Checked {
    let a = ctx.client(LockTimings::PATIENT).await?;
    let b = ctx.client(LockTimings::PATIENT).await?;
    let name = ctx.lock_name("dropped_guard_frees");
    // A guard dropped unreleased, as by a cancelled future.
    let held = bounded("lock", a.lock(&name)).await?.op("lock")?;
    drop(held);
    let guard = bounded(
        "lock by another client after the guard was dropped (the lease is an hour: only a release frees it)",
        b.lock(&name),
    )
    .await?
    .op("lock after drop")?;
    guard.release().await.op("release")?;
    // A `lock` call cancelled while it waits for a held lock leaves nothing held.
    let held = bounded("lock", a.lock(&name)).await?.op("lock")?;
    let waiting = {
        let (b, lock_name) = (b.clone(), name.clone());
        tokio::spawn(async move { b.lock(&lock_name).await.map(drop) })
    };
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    waiting.abort();
    let _ = waiting.await;
    held.release().await.op("release")?;
    let guard = bounded("lock after a cancelled wait", a.lock(&name))
        .await?
        .op("lock after a cancelled wait")?;
    guard.release().await.op("release")?;
    // `lock` calls cancelled at varied points leave nothing held.
    for round in 0..20 {
        let (a, lock_name) = (a.clone(), name.clone());
        let task = tokio::spawn(async move { a.lock(&lock_name).await.map(drop) });
        for _ in 0..round % 7 {
            tokio::task::yield_now().await;
        }
        task.abort();
        let _ = task.await;
        let guard = bounded(
            &format!("lock after a cancelled lock call (round {round})"),
            b.lock(&name),
        )
        .await?
        .op("lock after a cancelled lock call")?;
        guard.release().await.op("release")?;
    }
    Ok(())
}

async fn expiry_and_takeover(ctx: &Ctx<'_>) -> Checked {
    let a = ctx.client(LockTimings::PAUSED).await?;
    let b = ctx.client(LockTimings::PATIENT).await?;
    let c = ctx.client(LockTimings::IMPATIENT).await?;
    let name = ctx.lock_name("expiry_and_takeover");
    let old = bounded("lock", a.lock(&name)).await?.op("lock")?;
    ctx.expire(&name).await?;
    // B waits up to 10 minutes: acquiring within the bound means it took over.
    let new = bounded("takeover of an expired lock", b.lock(&name))
        .await?
        .op("takeover of an expired lock")?;
    // The old holder's release must not free the new holder's lock.
    let _ = old.release().await;
    match bounded("lock while taken over", c.lock(&name)).await? {
        Err(StorageError::LockTimeout(_)) => {}
        Ok(_) => return Err("the old holder's release freed the new holder's lock".to_owned()),
        Err(e) => return Err(format!("want LockTimeout, got {}", ErrorChain(&e))),
    }
    new.release().await.op("release")?;
    let last = bounded("lock after release", c.lock(&name))
        .await?
        .op("lock after release")?;
    last.release().await.op("release")?;
    Ok(())
}

/// Expires lock `name` (held by another client) and takes it with `client`,
/// retrying when the holder's keepalive renewed it in between.
async fn take_over(ctx: &Ctx<'_>, client: &dyn Storage, name: &str) -> Result<LockGuard, String> {
    for _ in 0..50 {
        ctx.expire(name).await?;
        match bounded("takeover", client.lock(name)).await? {
            Ok(guard) => return Ok(guard),
            Err(StorageError::LockTimeout(_)) => {}
            Err(e) => return Err(format!("takeover: {}", ErrorChain(&e))),
        }
    }
    Err(format!(
        "could not take over lock {name:?} after expiring it 50 times"
    ))
}

async fn lost_lock_signalled(ctx: &Ctx<'_>) -> Checked {
    let a = ctx.client(LockTimings::WATCHFUL).await?;
    let b = ctx.client(LockTimings::IMPATIENT).await?;
    let p = ctx.prefix("lost_lock_signalled");
    let name = ctx.lock_name("lost_lock_signalled");
    let old = bounded("lock", a.lock(&name)).await?.op("lock")?;
    ensure!(!old.is_lost(), "a fresh lock is lost");
    old.ensure_held().op("ensure_held of a fresh lock")?;
    let new = take_over(ctx, b.as_ref(), &name).await?;
    bounded("the old holder's lost()", old.lost()).await?;
    ensure!(old.is_lost(), "is_lost after lost() resolved");
    ensure!(
        matches!(old.ensure_held(), Err(StorageError::LockLost(ref n)) if *n == name),
        "ensure_held of a lost lock should be LockLost naming it"
    );
    ensure!(
        matches!(
            a.store_fenced(&old, &format!("{p}/v"), b"old").await,
            Err(StorageError::LockLost(_))
        ),
        "store_fenced with a lost guard should be LockLost"
    );
    ensure!(!new.is_lost(), "the new holder's lock is lost");
    new.ensure_held().op("ensure_held of the new holder")?;
    let _ = old.release().await;
    new.release().await.op("release")?;
    let _ = a.delete(&p).await;
    Ok(())
}

async fn fencing(ctx: &Ctx<'_>) -> Checked {
    let a = ctx.client(LockTimings::PAUSED).await?;
    let b = ctx.client(LockTimings::PAUSED).await?;
    let p = ctx.prefix("fencing");
    let key = format!("{p}/record");
    let name = ctx.lock_name("fencing");
    let old = bounded("lock", a.lock(&name)).await?.op("lock")?;
    let old_fence = fence_of(&old)?;
    a.store_fenced(&old, &key, b"A1")
        .await
        .op("store_fenced by the holder")?;
    ctx.expire(&name).await?;
    let new = bounded("takeover", b.lock(&name)).await?.op("takeover")?;
    let new_fence = fence_of(&new)?;
    ensure!(
        new_fence > old_fence,
        "fences must increase: {old_fence} then {new_fence}"
    );
    b.store_fenced(&new, &key, b"B")
        .await
        .op("store_fenced by the new holder")?;
    // The old holder has not noticed (its keepalive has not run)...
    match a.store_fenced(&old, &key, b"A2").await {
        Err(StorageError::LockLost(_)) => {}
        Ok(()) => {
            return Err(
                "the paused old holder overwrote the new holder's value (no fencing)".to_owned(),
            );
        }
        Err(e) => return Err(format!("want LockLost, got {}", ErrorChain(&e))),
    }
    ensure!(
        a.load(&key).await.op("load")? == b"B",
        "the new holder's value was not kept"
    );
    let _ = old.release().await;
    new.release().await.op("release")?;
    // Refused too once the lock is free, and fences keep increasing.
    let next = bounded("lock again", a.lock(&name))
        .await?
        .op("lock again")?;
    let next_fence = fence_of(&next)?;
    ensure!(
        next_fence > new_fence,
        "fences must increase: {new_fence} then {next_fence}"
    );
    next.release().await.op("release")?;
    let last = bounded("lock again", b.lock(&name))
        .await?
        .op("lock again")?;
    let last_fence = fence_of(&last)?;
    ensure!(
        last_fence > next_fence,
        "fences must increase across clients: {next_fence} then {last_fence}"
    );
    last.release().await.op("release")?;
    a.delete(&p).await.op("clean up")?;
    Ok(())
}

async fn fenced_delete(ctx: &Ctx<'_>) -> Checked {
    let a = ctx.client(LockTimings::PAUSED).await?;
    let b = ctx.client(LockTimings::PAUSED).await?;
    let p = ctx.prefix("fenced_delete");
    let (dir, key, other) = (
        format!("{p}/dir"),
        format!("{p}/dir/record"),
        format!("{p}/dir/other"),
    );
    let name = ctx.lock_name("fenced_delete");
    let old = bounded("lock", a.lock(&name)).await?.op("lock")?;
    a.store_fenced(&old, &key, b"A")
        .await
        .op("store_fenced by the holder")?;
    a.store_fenced(&old, &other, b"A")
        .await
        .op("store_fenced by the holder")?;
    a.delete_fenced(&old, &other)
        .await
        .op("delete_fenced by the holder")?;
    ensure!(
        !a.exists(&other).await.op("exists")?,
        "the holder's delete_fenced left the value"
    );
    ctx.expire(&name).await?;
    let new = bounded("takeover", b.lock(&name)).await?.op("takeover")?;
    b.store_fenced(&new, &key, b"B")
        .await
        .op("store_fenced by the new holder")?;
    // The old holder has not noticed (its keepalive has not run)...
    for target in [&key, &dir] {
        match a.delete_fenced(&old, target).await {
            Err(StorageError::LockLost(_)) => {}
            Ok(()) => {
                return Err(format!(
                    "the paused old holder's delete_fenced of {target:?} went through (no fencing)"
                ));
            }
            Err(e) => {
                return Err(format!(
                    "delete_fenced of {target:?}: want LockLost, got {}",
                    ErrorChain(&e)
                ));
            }
        }
    }
    ensure!(
        a.load(&key).await.op("load")? == b"B",
        "the new holder's value was not kept"
    );
    let _ = old.release().await;
    b.delete_fenced(&new, &dir)
        .await
        .op("delete_fenced of a directory by the new holder")?;
    ensure!(
        !b.exists(&dir).await.op("exists")?,
        "the new holder's delete_fenced of a directory left it"
    );
    new.release().await.op("release")?;
    let _ = a.delete(&p).await;
    Ok(())
}

/// A child process speaking [`child_main`]'s protocol.
struct Child {
    process: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: BufReader<tokio::process::ChildStdout>,
}

impl Child {
    async fn spawn(command: std::process::Command) -> Result<Self, String> {
        let mut command = tokio::process::Command::from(command);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut process = command
            .spawn()
            .map_err(|e| format!("could not start the child process: {e}"))?;
        let (Some(stdin), Some(stdout)) = (process.stdin.take(), process.stdout.take()) else {
            return Err("the child has no stdin or stdout".to_owned());
        };
        let mut child = Self {
            process,
            stdin,
            stdout: BufReader::new(stdout),
        };
        child.expect("ready").await?;
        Ok(child)
    }

    async fn send(&mut self, line: &str) -> Result<(), String> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .and(self.stdin.flush().await)
            .map_err(|e| format!("writing to the child: {e}"))
    }

    async fn reply(&mut self) -> Result<String, String> {
        match bounded("the child's reply", read_line(&mut self.stdout)).await? {
            Ok(Some(line)) => Ok(line),
            Ok(None) => Err("the child exited without replying".to_owned()),
            Err(e) => Err(format!("reading from the child: {e}")),
        }
    }

    /// Reads a reply and checks that its first word is `word`; returns the rest.
    async fn expect(&mut self, word: &str) -> Result<String, String> {
        let line = self.reply().await?;
        let (first, rest) = line.split_once(' ').unwrap_or((&line, ""));
        ensure!(first == word, "the child said {line:?}, not {word:?}");
        Ok(rest.to_owned())
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes, without its newline;
/// `None` at end of input.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = (&mut *reader)
        .take(MAX_LINE)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

async fn cross_process(ctx: &Ctx<'_>) -> Checked {
    let Some(command) = ctx.backend.child_command() else {
        return Ok(());
    };
    let name = ctx.lock_name("cross_process");
    let impatient = ctx.client(LockTimings::IMPATIENT).await?;
    let patient = ctx.client(LockTimings::PATIENT).await?;
    let mut child = Child::spawn(command).await?;
    child.send(&format!("lock {name}")).await?;
    let child_fence: u64 = child
        .expect("locked")
        .await?
        .parse()
        .map_err(|_| "the child's fence is not a number".to_owned())?;
    let waiter = {
        let (patient, name) = (patient.clone(), name.clone());
        tokio::spawn(async move { patient.lock(&name).await.op("lock of the waiter") })
    };
    // Still held by the child, and the waiter, which had that long to get
    // it, has not.
    expect_timeout(impatient.as_ref(), &name, "a lock the child holds").await?;
    ensure!(
        !waiter.is_finished(),
        "the waiter's lock returned while the child held the lock"
    );
    child.send(&format!("release {name}")).await?;
    child.expect("released").await?;
    let guard = bounded("lock after the child released it", waiter)
        .await?
        .map_err(|e| format!("waiter task: {e}"))??;
    let fence = fence_of(&guard)?;
    ensure!(
        fence > child_fence,
        "fences must increase across processes: {child_fence} then {fence}"
    );
    guard.release().await.op("release")?;
    child.send("exit").await?;
    let status = bounded("the child's exit", child.process.wait())
        .await?
        .map_err(|e| format!("waiting for the child: {e}"))?;
    ensure!(status.success(), "the child exited with {status}");
    Ok(())
}

async fn killed_process(ctx: &Ctx<'_>) -> Checked {
    let Some(mut command) = ctx.backend.child_command() else {
        return Ok(());
    };
    command
        .arg("--lease-ms")
        .arg(CHILD_LEASE.as_millis().to_string());
    let name = ctx.lock_name("killed_process");
    let impatient = ctx.client(LockTimings::IMPATIENT).await?;
    // Waits up to 10 minutes; its lease (for backends where the waiter
    // judges staleness) is the child's.
    let patient = ctx
        .client(LockTimings {
            lease: CHILD_LEASE,
            keepalive: CHILD_LEASE / 3,
            ..LockTimings::PATIENT
        })
        .await?;
    let mut child = Child::spawn(command).await?;
    child.send(&format!("lock {name}")).await?;
    child.expect("locked").await?;
    expect_timeout(impatient.as_ref(), &name, "a lock the child holds").await?;
    // SIGKILL on Unix: no release, no keepalive any more.
    child
        .process
        .start_kill()
        .map_err(|e| format!("killing the child: {e}"))?;
    bounded("the killed child's exit", child.process.wait())
        .await?
        .map_err(|e| format!("waiting for the child: {e}"))?;
    // Nothing expires the lock but its lease running out.
    let guard = bounded(
        "takeover of a killed process's lock once its lease ran out",
        patient.lock(&name),
    )
    .await?
    .op("takeover of a killed process's lock")?;
    guard.release().await.op("release")?;
    Ok(())
}

/// The child's side of the cross-process checks: serves a line protocol on
/// stdin / stdout with `storage` until `exit` or the end of input. (The
/// child binary opens `storage` itself, honouring `--lease-ms`: see
/// [`ConformanceBackend::child_command`] and [`child_lease`].)
///
/// ```text
/// child:  ready
/// parent: lock <name>      child: locked <fence, or 0 without one> | error <message>
/// parent: release <name>   child: released | error <message>
/// parent: exit             (the child releases what it holds and returns)
/// ```
pub async fn child_main(storage: Arc<dyn Storage>) {
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut stdout = tokio::io::stdout();
    let mut held: HashMap<String, LockGuard> = HashMap::new();
    if !say(&mut stdout, "ready").await {
        return;
    }
    // Bounded: a test sends a handful of commands.
    for _ in 0..10_000 {
        let Ok(Some(line)) = read_line(&mut stdin).await else {
            break;
        };
        let (command, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let reply = match command {
            "lock" => match storage.lock(arg).await {
                Ok(guard) => {
                    let fence = guard.fence().unwrap_or(0);
                    held.insert(arg.to_owned(), guard);
                    format!("locked {fence}")
                }
                Err(e) => format!("error {}", ErrorChain(&e)),
            },
            "release" => match held.remove(arg) {
                Some(guard) => match guard.release().await {
                    Ok(()) => "released".to_owned(),
                    Err(e) => format!("error {}", ErrorChain(&e)),
                },
                None => format!("error lock {arg:?} is not held"),
            },
            "exit" => break,
            other => format!("error unknown command {other:?}"),
        };
        if !say(&mut stdout, &reply).await {
            break;
        }
    }
    for (_, guard) in held.drain() {
        let _ = guard.release().await;
    }
}

/// Writes one line of the child protocol; false when stdout is gone.
async fn say(stdout: &mut tokio::io::Stdout, line: &str) -> bool {
    let written = stdout.write_all(format!("{line}\n").as_bytes()).await;
    written.is_ok() && stdout.flush().await.is_ok()
}

/// [`MemoryStorage`] as a [`ConformanceBackend`]: clients are clones (same
/// values and locks); no child process.
#[derive(Debug, Default, Clone)]
pub struct MemoryBackend {
    storage: MemoryStorage,
}

impl MemoryBackend {
    /// A backend on a new, empty [`MemoryStorage`].
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ConformanceBackend for MemoryBackend {
    async fn client(&self, timings: LockTimings) -> Result<Arc<dyn Storage>, StorageError> {
        Ok(Arc::new(
            self.storage
                .clone()
                .with_lock_wait_timeout(timings.wait_timeout),
        ))
    }

    async fn expire_lock(&self, name: &str) -> Result<(), StorageError> {
        self.storage.expire_lock(name);
        Ok(())
    }

    fn child_command(&self) -> Option<std::process::Command> {
        None
    }
}

/// A function that builds the command of a child process.
type CommandFn = dyn Fn() -> std::process::Command + Send + Sync;

/// [`FileStorage`] on one folder as a [`ConformanceBackend`]: clients are
/// separate `FileStorage`s on the folder, [`expire_lock`] backdates the lock
/// file, and the child process is the command given to
/// [`with_child`](Self::with_child), if any.
///
/// [`expire_lock`]: ConformanceBackend::expire_lock
pub struct FileBackend {
    root: PathBuf,
    child: Option<Box<CommandFn>>,
}

impl std::fmt::Debug for FileBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBackend")
            .field("root", &self.root)
            .field("child", &self.child.is_some())
            .finish()
    }
}

impl FileBackend {
    /// A backend on the folder `root`, with no child process.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            child: None,
        }
    }

    /// Runs the cross-process checks with the child `command` builds (a
    /// process that opens a [`FileStorage`] on the same folder and calls
    /// [`child_main`]).
    pub fn with_child(
        mut self,
        command: impl Fn() -> std::process::Command + Send + Sync + 'static,
    ) -> Self {
        self.child = Some(Box::new(command));
        self
    }
}

#[async_trait]
impl ConformanceBackend for FileBackend {
    async fn client(&self, timings: LockTimings) -> Result<Arc<dyn Storage>, StorageError> {
        Ok(Arc::new(
            FileStorage::builder(&self.root)
                .lock_stale_after(timings.lease)
                .lock_keepalive(timings.keepalive)
                .lock_poll_interval(timings.poll)
                .lock_wait_timeout(Some(timings.wait_timeout))
                .build(),
        ))
    }

    async fn expire_lock(&self, name: &str) -> Result<(), StorageError> {
        FileStorage::new(&self.root).expire_lock_file(name).await
    }

    fn child_command(&self) -> Option<std::process::Command> {
        self.child.as_ref().map(|command| command())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn child_lease_argument() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let mut plain = args(&["file", "/d"]);
        assert_eq!(child_lease(&mut plain), Ok(None));
        assert_eq!(plain, args(&["file", "/d"]));
        let mut cluster = args(&["redis-cluster", "p", "n1", "--lease-ms", "1500", "n2"]);
        assert_eq!(
            child_lease(&mut cluster),
            Ok(Some(Duration::from_millis(1500)))
        );
        assert_eq!(cluster, args(&["redis-cluster", "p", "n1", "n2"]));
        assert!(child_lease(&mut args(&["file", "--lease-ms"])).is_err());
        assert!(child_lease(&mut args(&["file", "--lease-ms", "x"])).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_storage_conforms() {
        run(&MemoryBackend::new()).await;
    }

    /// In one process (the cross-process checks run from the tests crate,
    /// which has a child binary).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_storage_conforms() {
        let dir = tempfile::tempdir().unwrap();
        run(&FileBackend::new(dir.path().join("root"))).await;
    }
}
