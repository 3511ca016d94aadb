//! Run by the storage tests (not by hand): the child process of their
//! cross-process checks.
//!
//! ```text
//! storage-child file <root>
//! storage-child redis <url> <key prefix>
//! storage-child redis-fenced <url> <key prefix> <lease ms>
//! ```
//!
//! `file` and `redis` serve `certauto::storage::conformance::child_main` on stdin / stdout
//! with a storage opened on the same backend as the parent, with the backend's default lock
//! timings.
//!
//! `redis-fenced` (tests/redis_cluster.rs) opens a `RedisStorage` whose locks have the given
//! lease (kept alive every third of it) and serves this line protocol:
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
//!
//! Exits non-zero when the storage cannot be opened.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use certauto::storage::conformance::child_main;
use certauto::{ErrorChain, FileStorage, LockGuard, RedisStorage, Storage, StorageError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The most commands `redis-fenced` serves (a test sends a handful).
const MAX_COMMANDS: usize = 1000;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let storage: Arc<dyn Storage> = match args.as_slice() {
        [kind, root] if kind == "file" => Arc::new(FileStorage::new(root)),
        [kind, url, prefix] if kind == "redis" => {
            match RedisStorage::builder(url).key_prefix(prefix).build().await {
                Ok(storage) => Arc::new(storage),
                Err(e) => {
                    eprintln!("storage-child: {}", ErrorChain(&e));
                    return ExitCode::FAILURE;
                }
            }
        }
        [kind, url, prefix, lease] if kind == "redis-fenced" => {
            let Ok(lease) = lease.parse::<u64>() else {
                eprintln!("storage-child: the lease is a number of milliseconds");
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
        _ => {
            eprintln!(
                "usage: storage-child file <root> | redis <url> <key prefix> \
                 | redis-fenced <url> <key prefix> <lease ms>"
            );
            return ExitCode::from(2);
        }
    };
    child_main(storage).await;
    ExitCode::SUCCESS
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
