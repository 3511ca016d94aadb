//! [`CertCache`]: certificates ready for TLS handshakes, indexed by name.
//!
//! Lookups are exact match first, then a one-label wildcard (`a.example.com`
//! is served by `*.example.com`, `a.b.example.com` is not); names are
//! case-insensitive. The handshake path takes one uncontended read lock and
//! allocates nothing for lower-case SNI (rustls lower-cases it).
//!
//! The cache holds at most [`capacity`](CertCache::with_capacity) certificates
//! (default 100,000). Eviction rule: when a new certificate would exceed the
//! capacity, the cached certificate that expires first is evicted, unmanaged
//! (on-demand) certificates before managed ones.
//!
//! ```
//! use certauto_core::CertCache;
//! let cache = CertCache::new();
//! assert!(cache.get("example.com").is_none());
//! ```

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use tokio::sync::watch;

use crate::acme::http::crypto_provider;
use crate::certificate::Certificate;
use crate::clock::Clock;
use crate::error::CertificateError;
use crate::identifier::Identifier;
use crate::name_table::NameTable;

/// The default capacity of a [`CertCache`].
pub const DEFAULT_CACHE_CAPACITY: usize = 100_000;

/// A certificate in the cache: what the handshake needs, and the facts maintenance needs.
pub struct CachedCert {
    certified_key: Arc<CertifiedKey>,
    names: Vec<Identifier>,
    not_before: SystemTime,
    not_after: SystemTime,
    serial: String,
    issuer_key: String,
    ari_cert_id: Option<String>,
    ocsp_urls: Vec<String>,
    managed: bool,
}

impl fmt::Debug for CachedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedCert")
            .field("names", &self.names)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("managed", &self.managed)
            .finish_non_exhaustive()
    }
}

impl CachedCert {
    /// Builds the rustls key (ring provider) from a certificate.
    pub fn new(cert: &Certificate, managed: bool) -> Result<Self, CertificateError> {
        // `Certificate::from_pem` checked the key already: decode the PEM and
        // let rustls parse it (once), instead of parsing it twice.
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem().as_bytes())
            .map_err(|_| CertificateError::InvalidKey(crate::error::KeyError::InvalidPem))?;
        let certified_key = CertifiedKey::from_der(cert.chain().to_vec(), key, &crypto_provider())
            .map_err(|e| CertificateError::Parse(Box::new(e)))?;
        Ok(Self {
            certified_key: Arc::new(certified_key),
            names: cert.names().to_vec(),
            not_before: cert.not_before(),
            not_after: cert.not_after(),
            serial: cert.serial_hex(),
            issuer_key: cert.issuer_key().to_owned(),
            ari_cert_id: cert.ari_cert_id(),
            ocsp_urls: cert.ocsp_urls().to_vec(),
            managed,
        })
    }

    /// The rustls certified key served in handshakes.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }

    /// The names covered.
    pub fn names(&self) -> &[Identifier] {
        &self.names
    }

    /// Start of validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Serial number (hex).
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The issuer it came from.
    pub fn issuer_key(&self) -> &str {
        &self.issuer_key
    }

    /// The ARI CertID, if the certificate has an AKI.
    pub fn ari_cert_id(&self) -> Option<&str> {
        self.ari_cert_id.as_deref()
    }

    /// OCSP responder URLs.
    pub fn ocsp_urls(&self) -> &[String] {
        &self.ocsp_urls
    }

    /// Whether the certificate is managed (renewed by maintenance) rather than on-demand.
    pub fn is_managed(&self) -> bool {
        self.managed
    }

    /// A copy with `staple` as the OCSP response served in handshakes.
    pub fn with_ocsp(&self, staple: Option<Vec<u8>>) -> Self {
        let mut ck = (*self.certified_key).clone();
        ck.ocsp = staple;
        Self {
            certified_key: Arc::new(ck),
            names: self.names.clone(),
            serial: self.serial.clone(),
            issuer_key: self.issuer_key.clone(),
            ari_cert_id: self.ari_cert_id.clone(),
            ocsp_urls: self.ocsp_urls.clone(),
            ..*self
        }
    }
}

type EntryId = usize;

fn id_of(e: &Arc<CachedCert>) -> EntryId {
    Arc::as_ptr(e) as EntryId
}

/// Names to values: exact names, and wildcards keyed by the name below the
/// `*` (`example.com` for `*.example.com`).
struct Names<V> {
    exact: NameTable<V>,
    wildcard: NameTable<V>,
}

impl<V> Default for Names<V> {
    fn default() -> Self {
        Self {
            exact: NameTable::default(),
            wildcard: NameTable::default(),
        }
    }
}

impl<V> Names<V> {
    /// The table and key that hold `id`.
    fn slot(&mut self, id: &Identifier) -> (&mut NameTable<V>, String) {
        let name = id.as_str();
        match name.strip_prefix("*.") {
            Some(base) => (&mut self.wildcard, base.to_owned()),
            None => (&mut self.exact, name.into_owned()),
        }
    }

    /// The value serving `name` (an SNI value): exact match, then a
    /// one-label wildcard; case-insensitive, a trailing dot ignored.
    fn find(&self, name: &str) -> Option<&V> {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.find(&name.to_ascii_lowercase());
        }
        if let Some(value) = self.exact.get(name) {
            return Some(value);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent)
    }
}

#[derive(Default)]
struct Index {
    /// The entry serving each name.
    entries: Names<Arc<CachedCert>>,
    /// The handshake path's copy of `entries`: certified keys stored inline
    /// with their names, one cold cache line per hit fewer.
    keys: Names<Arc<CertifiedKey>>,
    /// Every entry still serving a name, with how many names it serves.
    live: HashMap<EntryId, (Arc<CachedCert>, usize)>,
    /// Eviction order: unmanaged first, then earliest expiry.
    order: BTreeSet<(bool, SystemTime, EntryId)>,
    /// Managed entries that stopped serving any name since the last
    /// [`CertCache::expiry_changes`] (for the expiry gauge).
    departed: Vec<Arc<CachedCert>>,
}

impl Index {
    /// Whether `entry` is what serves `id`.
    fn serves(&mut self, id: &Identifier, entry: &Arc<CachedCert>) -> bool {
        let (table, key) = self.entries.slot(id);
        table.get(&key).is_some_and(|e| Arc::ptr_eq(e, entry))
    }

    fn put(&mut self, id: &Identifier, entry: &Arc<CachedCert>) {
        let (table, key) = self.entries.slot(id);
        let old = table.insert(&key, entry.clone());
        let (keys, _) = self.keys.slot(id);
        keys.insert(&key, entry.certified_key.clone());
        self.retain(entry);
        if let Some(old) = old {
            self.release(&old);
        }
    }

    fn retain(&mut self, e: &Arc<CachedCert>) {
        let id = id_of(e);
        match self.live.get_mut(&id) {
            Some((_, slots)) => *slots += 1,
            None => {
                self.live.insert(id, (e.clone(), 1));
                self.order.insert((e.managed, e.not_after, id));
            }
        }
    }

    fn release(&mut self, e: &Arc<CachedCert>) {
        let id = id_of(e);
        if let Some((_, slots)) = self.live.get_mut(&id) {
            *slots -= 1;
            if *slots == 0 {
                self.live.remove(&id);
                self.order.remove(&(e.managed, e.not_after, id));
                if e.managed {
                    self.departed.push(e.clone());
                }
            }
        }
    }

    fn remove_entry(&mut self, entry: &Arc<CachedCert>) {
        for id in &entry.names {
            if self.serves(id, entry) {
                let (table, key) = self.entries.slot(id);
                table.remove(&key);
                let (keys, _) = self.keys.slot(id);
                keys.remove(&key);
                self.release(entry);
            }
        }
    }
}

/// In-memory certificates for TLS handshakes. Cheap to clone (shared).
#[derive(Clone)]
pub struct CertCache {
    inner: Arc<Inner>,
}

struct Inner {
    index: RwLock<Index>,
    count: std::sync::atomic::AtomicUsize,
    capacity: usize,
    stop: watch::Sender<bool>,
    /// Set when the expiry gauge is kept: the clock it counts from.
    expiry_clock: OnceLock<Arc<dyn Clock>>,
}

/// A change of the expiry gauge: a primary name and its seconds until
/// expiry, `None` when no certificate serves it any more.
type ExpiryChange = (String, Option<f64>);

/// Seconds from `now` until `not_after`, negative once it passed.
fn seconds_until(not_after: SystemTime, now: SystemTime) -> f64 {
    match not_after.duration_since(now) {
        Ok(left) => left.as_secs_f64(),
        Err(past) => -past.duration().as_secs_f64(),
    }
}

impl fmt::Debug for CertCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertCache")
            .field("len", &self.len())
            .field("capacity", &self.inner.capacity)
            .finish()
    }
}

impl Default for CertCache {
    fn default() -> Self {
        Self::new()
    }
}

impl CertCache {
    /// An empty cache with the default capacity.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CACHE_CAPACITY)
    }

    /// An empty cache holding at most `capacity` certificates (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                index: RwLock::new(Index::default()),
                count: std::sync::atomic::AtomicUsize::new(0),
                capacity: capacity.max(1),
                stop: watch::channel(false).0,
                expiry_clock: OnceLock::new(),
            }),
        }
    }

    /// Adds a certificate of the application's own, which CertAuto serves
    /// but does not renew (replacing, for each of its names, what served
    /// that name). When the cache is full, unmanaged certificates are evicted
    /// first.
    pub fn add_unmanaged(&self, cert: &Certificate) -> Result<Arc<CachedCert>, CertificateError> {
        self.insert(cert, false)
    }

    /// Adds a certificate (replacing, for each of its names, what served that name).
    pub(crate) fn insert(
        &self,
        cert: &Certificate,
        managed: bool,
    ) -> Result<Arc<CachedCert>, CertificateError> {
        let entry = Arc::new(CachedCert::new(cert, managed)?);
        self.insert_entry(entry.clone());
        Ok(entry)
    }

    /// Keeps the [`CERTIFICATE_EXPIRY_SECONDS`](crate::metrics::CERTIFICATE_EXPIRY_SECONDS)
    /// gauge of every managed certificate from now on, counting from
    /// `clock` (the first clock given wins for a cache shared by configs).
    /// Without the `metrics` feature, nothing is kept.
    pub(crate) fn track_expiry(&self, clock: Arc<dyn Clock>) {
        if cfg!(feature = "metrics") && self.inner.expiry_clock.set(clock).is_ok() {
            self.refresh_expiry_metric();
        }
    }

    /// Sets the expiry gauge of every managed certificate in the cache
    /// (each maintenance renewal check calls it, so the seconds stay current).
    pub(crate) fn refresh_expiry_metric(&self) {
        let Some(clock) = self.inner.expiry_clock.get() else {
            return;
        };
        let now = clock.now();
        let changes: Vec<ExpiryChange> = {
            let index = self.inner.index.read().unwrap_or_else(|e| e.into_inner());
            index
                .live
                .values()
                .filter(|(e, _)| e.managed)
                .filter_map(|(e, _)| {
                    let primary = e.names.first()?;
                    Some((
                        primary.as_str().into_owned(),
                        Some(seconds_until(e.not_after, now)),
                    ))
                })
                .collect()
        };
        publish_expiry(changes);
    }

    /// After a change of `index` that added `added`: the expiry gauge
    /// changes (empty when the gauge is not kept). Drains `departed`.
    fn expiry_changes(&self, index: &mut Index, added: &[&Arc<CachedCert>]) -> Vec<ExpiryChange> {
        let departed = std::mem::take(&mut index.departed);
        let Some(clock) = self.inner.expiry_clock.get() else {
            return Vec::new();
        };
        let now = clock.now();
        let mut changes = Vec::new();
        for gone in departed {
            let Some(primary) = gone.names.first() else {
                continue;
            };
            // Still the primary name of a managed certificate serving it
            // (a renewal): that one's value is set below, not NaN.
            let name = primary.as_str();
            let replaced = index
                .entries
                .find(&name)
                .is_some_and(|e| e.managed && e.names.first().is_some_and(|p| p == primary));
            if !replaced {
                changes.push((name.into_owned(), None));
            }
        }
        for entry in added {
            if !entry.managed || !index.live.contains_key(&id_of(entry)) {
                continue;
            }
            if let Some(primary) = entry.names.first() {
                changes.push((
                    primary.as_str().into_owned(),
                    Some(seconds_until(entry.not_after, now)),
                ));
            }
        }
        changes
    }

    /// Adds a prepared entry. Not part of the API: the benchmarks time the
    /// cache's insertion apart from parsing.
    #[doc(hidden)]
    pub fn insert_entry(&self, entry: Arc<CachedCert>) {
        let changes = self.insert_locked(&entry);
        publish_expiry(changes);
    }

    fn insert_locked(&self, entry: &Arc<CachedCert>) -> Vec<ExpiryChange> {
        let mut index = self.inner.index.write().unwrap_or_else(|e| e.into_inner());
        // Each name now points at the new entry; an old entry serving no name is dropped.
        for id in &entry.names {
            index.put(id, entry);
        }
        while index.live.len() > self.inner.capacity {
            let new_id = id_of(entry);
            let victim = index
                .order
                .iter()
                .find(|(_, _, id)| *id != new_id)
                .and_then(|(_, _, id)| index.live.get(id))
                .map(|(e, _)| e.clone());
            let Some(victim) = victim else { break };
            tracing::debug!(names = ?victim.names, "cache full: evicting the certificate that expires first");
            index.remove_entry(&victim);
        }
        self.inner
            .count
            .store(index.live.len(), std::sync::atomic::Ordering::Relaxed);
        self.expiry_changes(&mut index, &[entry])
    }

    /// Replaces `current` by `new` (for example the same certificate with a
    /// fresh OCSP staple), but only if `current` still serves its first name:
    /// a certificate renewed in the meantime is never put back. Returns
    /// whether it replaced.
    pub(crate) fn replace_entry(&self, current: &Arc<CachedCert>, new: Arc<CachedCert>) -> bool {
        let Some(first) = current.names.first() else {
            return false;
        };
        let changes = {
            let mut index = self.inner.index.write().unwrap_or_else(|e| e.into_inner());
            if !index.serves(first, current) {
                return false;
            }
            for id in &new.names {
                index.put(id, &new);
            }
            self.inner
                .count
                .store(index.live.len(), std::sync::atomic::Ordering::Relaxed);
            self.expiry_changes(&mut index, &[&new])
        };
        publish_expiry(changes);
        true
    }

    /// The entry serving `name`: exact match, then a one-label wildcard.
    pub fn get(&self, name: &str) -> Option<Arc<CachedCert>> {
        let index = self.inner.index.read().unwrap_or_else(|e| e.into_inner());
        index.entries.find(name).cloned()
    }

    /// The certified key for an SNI value: the handshake path.
    pub fn certified_key(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let index = self.inner.index.read().unwrap_or_else(|e| e.into_inner());
        index.keys.find(sni).cloned()
    }

    /// Removes every entry covering `name` exactly.
    pub fn remove(&self, name: &str) -> Option<Arc<CachedCert>> {
        let id = Identifier::parse(name).ok()?;
        let (entry, changes) = {
            let mut index = self.inner.index.write().unwrap_or_else(|e| e.into_inner());
            let (table, key) = index.entries.slot(&id);
            let entry = table.get(&key).cloned()?;
            index.remove_entry(&entry);
            self.inner
                .count
                .store(index.live.len(), std::sync::atomic::Ordering::Relaxed);
            let changes = self.expiry_changes(&mut index, &[]);
            (entry, changes)
        };
        publish_expiry(changes);
        Some(entry)
    }

    /// Every distinct cached certificate.
    pub fn entries(&self) -> Vec<Arc<CachedCert>> {
        self.inner
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .live
            .values()
            .map(|(e, _)| e.clone())
            .collect()
    }

    /// The number of distinct certificates.
    pub fn len(&self) -> usize {
        self.inner.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Signals background maintenance to stop.
    pub fn stop(&self) {
        self.inner.stop.send_replace(true);
    }

    /// Whether [`stop`](Self::stop) was called.
    pub fn is_stopped(&self) -> bool {
        *self.inner.stop.borrow()
    }

    /// A receiver that changes to `true` when [`stop`](Self::stop) is called.
    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.inner.stop.subscribe()
    }
}

/// Sets the expiry gauges (outside the cache's lock: a recorder may be slow).
fn publish_expiry(changes: Vec<ExpiryChange>) {
    for (name, seconds) in changes {
        crate::metrics::certificate_expiry(name, seconds);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::issuer::LocalCa;
    use crate::storage::MemoryStorage;

    /// The handshake path's tables agree with the bookkeeping maps.
    fn assert_consistent(cache: &CertCache, names: &[&str]) {
        for name in names {
            let via_entry = cache.get(name).map(|e| e.certified_key().clone());
            let via_key = cache.certified_key(name);
            match (via_entry, via_key) {
                (Some(a), Some(b)) => assert!(Arc::ptr_eq(&a, &b), "{name}"),
                (None, None) => {}
                (a, b) => panic!("{name}: entry {:?}, key {:?}", a.is_some(), b.is_some()),
            }
        }
    }

    async fn cert(ca: &LocalCa, names: &[&str]) -> Certificate {
        ca.issue_for(&Identifier::parse_all(names).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn exact_then_wildcard_case_insensitive() {
        let ca = LocalCa::new(Arc::new(MemoryStorage::new()));
        let cache = CertCache::new();
        cache
            .insert(&cert(&ca, &["*.example.com"]).await, true)
            .unwrap();
        let exact = cache
            .insert(&cert(&ca, &["www.example.com"]).await, true)
            .unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(
            cache.get("WWW.Example.com").unwrap().serial(),
            exact.serial()
        );
        assert_eq!(
            cache.get("www.example.com.").unwrap().serial(),
            exact.serial()
        );
        assert_ne!(
            cache.get("api.example.com").unwrap().serial(),
            exact.serial()
        );
        assert!(cache.get("a.b.example.com").is_none());
        assert!(cache.get("example.com").is_none());
        assert!(cache.certified_key("api.example.com").is_some());
        assert_consistent(
            &cache,
            &[
                "WWW.Example.com",
                "www.example.com.",
                "api.example.com",
                "API.EXAMPLE.COM",
                "a.b.example.com",
                "example.com",
            ],
        );
    }

    #[tokio::test]
    async fn replacing_a_name_drops_the_old_entry() {
        let ca = LocalCa::new(Arc::new(MemoryStorage::new()));
        let cache = CertCache::new();
        cache
            .insert(&cert(&ca, &["a.test", "b.test"]).await, true)
            .unwrap();
        let new = cache
            .insert(&cert(&ca, &["a.test", "b.test"]).await, true)
            .unwrap();
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get("b.test").unwrap().serial(), new.serial());
        assert_consistent(&cache, &["a.test", "b.test"]);
        assert!(cache.remove("a.test").is_some());
        assert!(cache.get("b.test").is_none());
        assert_consistent(&cache, &["a.test", "b.test"]);
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn capacity_evicts_the_earliest_expiry_unmanaged_first() {
        let ca = LocalCa::new(Arc::new(MemoryStorage::new()));
        let cache = CertCache::with_capacity(2);
        cache
            .insert(&cert(&ca, &["managed.test"]).await, true)
            .unwrap();
        cache
            .insert(&cert(&ca, &["ondemand.test"]).await, false)
            .unwrap();
        cache.insert(&cert(&ca, &["new.test"]).await, true).unwrap();
        assert_eq!(cache.len(), 2);
        assert!(cache.get("ondemand.test").is_none());
        assert!(cache.get("managed.test").is_some());
        assert!(cache.get("new.test").is_some());
        assert_consistent(&cache, &["managed.test", "ondemand.test", "new.test"]);
    }

    #[tokio::test]
    async fn ocsp_staple_is_carried_by_a_new_entry() {
        let ca = LocalCa::new(Arc::new(MemoryStorage::new()));
        let cache = CertCache::new();
        let e = cache.insert(&cert(&ca, &["o.test"]).await, true).unwrap();
        cache.insert_entry(Arc::new(e.with_ocsp(Some(vec![1, 2, 3]))));
        assert_eq!(
            cache.certified_key("o.test").unwrap().ocsp.as_deref(),
            Some(&[1u8, 2, 3][..])
        );
    }

    #[tokio::test]
    async fn replace_entry_only_replaces_what_still_serves() {
        let ca = LocalCa::new(Arc::new(MemoryStorage::new()));
        let cache = CertCache::new();
        let old = cache.insert(&cert(&ca, &["r.test"]).await, true).unwrap();
        let stapled = Arc::new(old.with_ocsp(Some(vec![7])));
        assert!(cache.replace_entry(&old, stapled.clone()));
        assert_eq!(cache.certified_key("r.test").unwrap().ocsp, Some(vec![7]));
        // A renewal replaced it: a late staple for the old entry is dropped.
        let renewed = cache.insert(&cert(&ca, &["r.test"]).await, true).unwrap();
        assert!(!cache.replace_entry(&stapled, Arc::new(stapled.with_ocsp(None))));
        assert_eq!(cache.get("r.test").unwrap().serial(), renewed.serial());
        assert_eq!(cache.len(), 1);
        assert_consistent(&cache, &["r.test"]);
    }

    #[test]
    fn stop_signal() {
        let cache = CertCache::new();
        let rx = cache.stop_signal();
        assert!(!cache.is_stopped());
        cache.clone().stop();
        assert!(cache.is_stopped());
        assert!(*rx.borrow());
    }
}
