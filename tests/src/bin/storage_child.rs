//! Run by the storage tests (not by hand): the child process of their
//! cross-process checks, on the storage the parent tests.
//!
//! ```text
//! storage-child file DIR [--lease-ms N]
//! storage-child redis URL PREFIX [--lease-ms N]
//! storage-child redis-cluster PREFIX NODE_URL... [--lease-ms N]
//! storage-child redis-fenced URL PREFIX LEASE_MS
//! ```
//!
//! `file` opens a [`FileStorage`] on the folder `DIR`, `redis` a [`RedisStorage`] on the
//! server `URL` under the key prefix `PREFIX`, `redis-cluster` a [`RedisStorage`] on the
//! Redis Cluster the node URLs lead to (default lock timings, except a 10 ms poll, and
//! with `--lease-ms N` (anywhere) a lock lease / stale age of `N` ms kept alive every
//! third of it), and serves [`conformance::child_main`]'s line protocol on stdin / stdout
//! until told to exit. Exits non-zero when the storage cannot be opened.
//!
//! `redis-fenced` (tests/redis_cluster.rs) opens a [`RedisStorage`] whose locks have a
//! lease of `LEASE_MS` milliseconds (kept alive every third of it) and serves this line
//! protocol:
//!
//! ```text
//! child:  ready
//! parent: lock <name>               child: locked <fence> | error <message>
//! parent: store <name> <key> <file> child: stored | refused <LockLost message> | error <message>
//! parent: exit
//! ```
//!
//! `store` writes the contents of `<file>` at `<key>` through `store_fenced` with the guard
//! of lock `<name>` (held since `lock`), as lifecycle writes a certificate record.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use certauto::storage::conformance;
use certauto::{ErrorChain, FileStorage, LockGuard, RedisStorage, Storage, StorageError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The poll interval of the child's lock waits.
const POLL: Duration = Duration::from_millis(10);
/// The most commands `redis-fenced` serves (a test sends a handful).
const MAX_COMMANDS: usize = 1000;

/// Opens the storage the arguments name.
async fn open(mut args: Vec<String>) -> Result<Arc<dyn Storage>, String> {
    let lease = conformance::child_lease(&mut args)?;
    let redis = |builder: certauto::RedisStorageBuilder| match lease {
        Some(lease) => builder.lock_lease(lease).lock_keepalive(lease / 3),
        None => builder,
    };
    match args.as_slice() {
        [kind, dir] if kind == "file" => {
            let mut builder = FileStorage::builder(dir).lock_poll_interval(POLL);
            if let Some(lease) = lease {
                builder = builder.lock_stale_after(lease).lock_keepalive(lease / 3);
            }
            Ok(Arc::new(builder.build()))
        }
        [kind, url, prefix] if kind == "redis" => redis(RedisStorage::builder(url))
            .key_prefix(prefix)
            .lock_poll_interval(POLL)
            .build()
            .await
            .map(|s| Arc::new(s) as Arc<dyn Storage>)
            .map_err(|e| ErrorChain(&e).to_string()),
        [kind, prefix, nodes @ ..] if kind == "redis-cluster" && !nodes.is_empty() => {
            let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
            redis(RedisStorage::cluster_builder(&nodes))
                .key_prefix(prefix)
                .lock_poll_interval(POLL)
                .build()
                .await
                .map(|s| Arc::new(s) as Arc<dyn Storage>)
                .map_err(|e| ErrorChain(&e).to_string())
        }
        _ => Err(format!(
            "usage: storage-child file DIR | redis URL PREFIX | redis-cluster PREFIX NODE_URL... \
             [--lease-ms N] | redis-fenced URL PREFIX LEASE_MS (got {} arguments)",
            args.len()
        )),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [kind, url, prefix, lease] = args.as_slice()
        && kind == "redis-fenced"
    {
        let Ok(lease) = lease.parse::<u64>() else {
            eprintln!("storage-child: LEASE_MS is a number of milliseconds");
            return ExitCode::from(2);
        };
        let built = RedisStorage::builder(url)
            .key_prefix(prefix)
            .lock_lease(Duration::from_millis(lease))
            .build()
            .await;
        return match built {
            Ok(storage) => {
                fenced_main(storage).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("storage-child: {}", ErrorChain(&e));
                ExitCode::FAILURE
            }
        };
    }
    match open(args).await {
        Ok(storage) => {
            conformance::child_main(storage).await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("storage-child: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The `redis-fenced` protocol (see the file's docs).
async fn fenced_main(storage: RedisStorage) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let mut held: HashMap<String, LockGuard> = HashMap::new();
    let _ = stdout.write_all(b"ready\n").await;
    let _ = stdout.flush().await;
    for _ in 0..MAX_COMMANDS {
        let Ok(Some(line)) = lines.next_line().await else {
            break;
        };
        let words: Vec<&str> = line.split(' ').collect();
        let reply = match words.as_slice() {
            ["lock", name] => match storage.lock(name).await {
                Ok(guard) => {
                    let fence = guard.fence().unwrap_or(0);
                    held.insert((*name).to_owned(), guard);
                    format!("locked {fence}")
                }
                Err(e) => format!("error {}", ErrorChain(&e)),
            },
            ["store", name, key, file] => match (held.get(*name), std::fs::read(file)) {
                (None, _) => format!("error lock {name:?} is not held"),
                (_, Err(e)) => format!("error reading {file}: {e}"),
                (Some(guard), Ok(value)) => match storage.store_fenced(guard, key, &value).await {
                    Ok(()) => "stored".to_owned(),
                    Err(e @ StorageError::LockLost(..)) => format!("refused {}", ErrorChain(&e)),
                    Err(e) => format!("error {}", ErrorChain(&e)),
                },
            },
            ["exit"] => break,
            _ => format!("error unknown command {line:?}"),
        };
        if stdout
            .write_all(format!("{reply}\n").as_bytes())
            .await
            .is_err()
            || stdout.flush().await.is_err()
        {
            break;
        }
    }
    for (_, guard) in held.drain() {
        let _ = guard.release().await;
    }
}
