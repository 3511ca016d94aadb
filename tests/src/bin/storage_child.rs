//! Run by the storage conformance suite (not by hand): the child process of its
//! cross-process checks, serving `certauto::storage::conformance::child_main` on
//! stdin / stdout with a storage opened on the same backend as the parent.
//!
//! ```text
//! storage-child file <root>
//! storage-child redis <url> <key prefix>
//! storage-child redis-cluster <key prefix> <node url>...
//! ```
//!
//! Both use the backend's default lock timings. Exits non-zero when the storage cannot be
//! opened.

use std::process::ExitCode;
use std::sync::Arc;

use certauto::storage::conformance::child_main;
use certauto::{FileStorage, RedisStorage, Storage};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let storage: Arc<dyn Storage> = match args.as_slice() {
        [kind, root] if kind == "file" => Arc::new(FileStorage::new(root)),
        [kind, url, prefix] if kind == "redis" => {
            match RedisStorage::builder(url).key_prefix(prefix).build().await {
                Ok(storage) => Arc::new(storage),
                Err(e) => {
                    eprintln!("storage-child: {}", certauto::ErrorChain(&e));
                    return ExitCode::FAILURE;
                }
            }
        }
        [kind, prefix, nodes @ ..] if kind == "redis-cluster" && !nodes.is_empty() => {
            let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
            match RedisStorage::cluster_builder(&nodes)
                .key_prefix(prefix)
                .build()
                .await
            {
                Ok(storage) => Arc::new(storage),
                Err(e) => {
                    eprintln!("storage-child: {}", certauto::ErrorChain(&e));
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => {
            eprintln!(
                "usage: storage-child file <root> | redis <url> <key prefix> \
                 | redis-cluster <key prefix> <node url>..."
            );
            return ExitCode::from(2);
        }
    };
    child_main(storage).await;
    ExitCode::SUCCESS
}
