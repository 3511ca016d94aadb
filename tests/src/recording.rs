//! [`RecordingStorage`]: a [`Storage`] wrapper that records every call, for
//! benchmarks and tests that must show which keys a path touched (or that it
//! touched none).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use certauto::{KeyInfo, LockGuard, Storage, StorageError};

/// A [`Storage`] that delegates every call to `inner` and records it (kind and key).
#[derive(Debug)]
pub struct RecordingStorage {
    inner: Arc<dyn Storage>,
    calls: Mutex<Vec<(&'static str, String)>>,
}

impl RecordingStorage {
    /// A wrapper around `inner` that has recorded nothing yet.
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        Self {
            inner,
            calls: Mutex::new(Vec::new()),
        }
    }

    fn record(&self, op: &'static str, key: &str) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((op, key.to_owned()));
    }

    /// The calls recorded since the last `take` (kind and key, oldest first);
    /// forgets them.
    pub fn take(&self) -> Vec<(&'static str, String)> {
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[async_trait]
impl Storage for RecordingStorage {
    async fn store(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.record("store", key);
        self.inner.store(key, value).await
    }

    async fn store_fenced(
        &self,
        guard: &LockGuard,
        key: &str,
        value: &[u8],
    ) -> Result<(), StorageError> {
        self.record("store", key);
        self.inner.store_fenced(guard, key, value).await
    }

    async fn load(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        self.record("load", key);
        self.inner.load(key).await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.record("delete", key);
        self.inner.delete(key).await
    }

    async fn delete_fenced(&self, guard: &LockGuard, key: &str) -> Result<(), StorageError> {
        self.record("delete", key);
        self.inner.delete_fenced(guard, key).await
    }

    async fn remove_stale_temporaries(
        &self,
        older_than: Duration,
    ) -> Result<certauto::TemporariesSweep, StorageError> {
        self.inner.remove_stale_temporaries(older_than).await
    }

    async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        self.record("exists", key);
        self.inner.exists(key).await
    }

    async fn list(&self, prefix: &str, recursive: bool) -> Result<Vec<String>, StorageError> {
        self.record("list", prefix);
        self.inner.list(prefix, recursive).await
    }

    async fn stat(&self, key: &str) -> Result<KeyInfo, StorageError> {
        self.record("stat", key);
        self.inner.stat(key).await
    }

    async fn lock(&self, name: &str) -> Result<LockGuard, StorageError> {
        self.record("lock", name);
        self.inner.lock(name).await
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.inner.local_path(key)
    }
}
