//! The storage conformance suite (`certauto::storage::conformance`) on
//! `FileStorage`, with its cross-process checks: the child is the
//! `storage-child` binary on the same folder (another process holding and
//! releasing a lock, and one killed with SIGKILL while holding it).
//!
//! `MemoryStorage` runs the suite in certauto-core's own tests (it cannot be
//! shared across processes).
#![allow(clippy::unwrap_used)]

use certauto::storage::conformance::{self, FileBackend};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_storage_conforms_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let child_root = root.clone();
    let backend = FileBackend::new(&root).with_child(move || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_storage-child"));
        command.arg("file").arg(&child_root);
        command
    });
    conformance::run(&backend).await;
}
