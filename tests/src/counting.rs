//! [`CountingStorage`]: a [`MemoryStorage`] that counts reads, for tests and
//! benchmarks that must show a path touched no storage.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use certauto::{KeyInfo, LockGuard, MemoryStorage, Storage, StorageError};

/// A [`MemoryStorage`] counting its reads (`load`, `exists`, `list`, `stat`).
#[derive(Debug, Default)]
pub struct CountingStorage {
    inner: MemoryStorage,
    reads: AtomicU64,
}

impl CountingStorage {
    /// An empty storage, no reads counted.
    pub fn new() -> Self {
        Self::default()
    }

    /// The reads so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    fn read(&self) {
        self.reads.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Storage for CountingStorage {
    async fn store(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.inner.store(key, value).await
    }
    async fn store_fenced(
        &self,
        guard: &LockGuard,
        key: &str,
        value: &[u8],
    ) -> Result<(), StorageError> {
        self.inner.store_fenced(guard, key, value).await
    }
    async fn load(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        self.read();
        self.inner.load(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }
    async fn delete_fenced(&self, guard: &LockGuard, key: &str) -> Result<(), StorageError> {
        self.inner.delete_fenced(guard, key).await
    }
    async fn remove_stale_temporaries(
        &self,
        older_than: std::time::Duration,
    ) -> Result<certauto::TemporariesSweep, StorageError> {
        self.inner.remove_stale_temporaries(older_than).await
    }
    fn local_path(&self, key: &str) -> Option<std::path::PathBuf> {
        self.inner.local_path(key)
    }
    async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        self.read();
        self.inner.exists(key).await
    }
    async fn list(&self, prefix: &str, recursive: bool) -> Result<Vec<String>, StorageError> {
        self.read();
        self.inner.list(prefix, recursive).await
    }
    async fn stat(&self, key: &str) -> Result<KeyInfo, StorageError> {
        self.read();
        self.inner.stat(key).await
    }
    async fn lock(&self, name: &str) -> Result<LockGuard, StorageError> {
        self.inner.lock(name).await
    }
}
