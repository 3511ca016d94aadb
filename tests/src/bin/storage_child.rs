//! Run by the storage conformance tests (not by hand): the child process of the
//! suite's cross-process checks, on the storage the parent tests.
//!
//! ```text
//! storage-child file DIR
//! ```
//!
//! `file` opens a [`FileStorage`] on the folder `DIR` (default lock timings,
//! except a 10 ms poll) and serves
//! [`conformance::child_main`]'s line protocol on stdin / stdout until told to exit.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use certauto::storage::conformance;
use certauto::{FileStorage, Storage};

/// Opens the storage the arguments name.
fn open(args: &[String]) -> Result<Arc<dyn Storage>, String> {
    match args {
        [kind, dir] if kind == "file" => Ok(Arc::new(
            FileStorage::builder(dir)
                .lock_poll_interval(Duration::from_millis(10))
                .build(),
        )),
        _ => Err(format!("usage: storage-child file DIR (got {args:?})")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match open(&args) {
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
