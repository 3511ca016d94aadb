//! Run by the storage conformance tests (not by hand): the child process of the
//! suite's cross-process checks, on the storage the parent tests.
//!
//! ```text
//! storage-child file DIR [--lease-ms N]
//! storage-child redis URL PREFIX [--lease-ms N]
//! storage-child redis-cluster PREFIX NODE_URL... [--lease-ms N]
//! ```
//!
//! `file` opens a [`FileStorage`] on the folder `DIR`, `redis` a [`RedisStorage`] on the
//! server `URL` under the key prefix `PREFIX`, `redis-cluster` a [`RedisStorage`] on the
//! Redis Cluster the node URLs lead to (default lock timings, except a 10 ms poll, and
//! with `--lease-ms N` (anywhere) a lock lease / stale age of `N` ms kept alive every
//! third of it), and serves [`conformance::child_main`]'s line protocol on stdin / stdout
//! until told to exit. Exits non-zero when the storage cannot be opened.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use certauto::storage::conformance;
use certauto::{FileStorage, RedisStorage, Storage};

/// The poll interval of the child's lock waits.
const POLL: Duration = Duration::from_millis(10);

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
            .map_err(|e| certauto::ErrorChain(&e).to_string()),
        [kind, prefix, nodes @ ..] if kind == "redis-cluster" && !nodes.is_empty() => {
            let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
            redis(RedisStorage::cluster_builder(&nodes))
                .key_prefix(prefix)
                .lock_poll_interval(POLL)
                .build()
                .await
                .map(|s| Arc::new(s) as Arc<dyn Storage>)
                .map_err(|e| certauto::ErrorChain(&e).to_string())
        }
        _ => Err(format!(
            "usage: storage-child file DIR | redis URL PREFIX | redis-cluster PREFIX NODE_URL... [--lease-ms N] (got {} arguments)",
            args.len()
        )),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
