//! Storage hygiene (CertMagic's `CleanStorage`): a pass that removes what
//! no managed name needs any more. What it removes, its bounds and its
//! safety rules are documented on [`StorageCleaning`] (public); the pass is
//! [`Config::clean_storage`], and maintenance runs it through
//! `Config::clean_storage_if_due` at most once per interval across the
//! cluster (the time of the next pass is kept in storage).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::certificate::Certificate;
use crate::config::Config;
use crate::error::{Error, ErrorChain, OcspError};
use crate::events::Event;
use crate::identifier::Identifier;
use crate::storage::{LockGuard, StorageError, certs, keys};

/// The default time between two cleaning passes of a cluster (a day).
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// The default time a certificate stays in storage after it expired (a day).
pub(crate) const DEFAULT_EXPIRED_GRACE: Duration = Duration::from_secs(24 * 3600);
/// The default age after which challenge state is stale (an hour).
pub(crate) const DEFAULT_CHALLENGE_MAX_AGE: Duration = crate::challenge::STALE_CHALLENGE_AGE;
/// The default age after which a temporary file is a crash's (an hour).
pub(crate) const DEFAULT_TEMPORARY_MAX_AGE: Duration = Duration::from_secs(3600);
/// The shortest ages and interval accepted (shorter values are raised).
pub(crate) const MIN_AGE: Duration = Duration::from_secs(60);
/// How often maintenance looks whether a pass is due (at most).
pub(crate) const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// When a pass that used up its budget is due again.
pub(crate) const RESUME_AFTER: Duration = Duration::from_secs(3600);
/// The most keys one pass removes (challenge records and temporary files
/// have their own bounds).
pub(crate) const MAX_REMOVALS_PER_PASS: usize = 1000;
/// The most keys one pass reads under `certificates/`, `ocsp/`,
/// `maintenance/retry/` and `acme/challenge_tokens/` each.
pub(crate) const MAX_SCANNED_PER_PREFIX: usize = 100_000;
/// How long a removal waits for a certificate's lock (an obtain in
/// progress): the certificate is skipped, and tried again next pass.
pub(crate) const CERT_LOCK_WAIT: Duration = Duration::from_secs(30);
/// A staple whose certificate is not in storage is removed only once it is
/// this old: its certificate may have been stored after the pass listed them.
pub(crate) const MIN_ORPHAN_STAPLE_AGE: Duration = Duration::from_secs(3600);

/// How storage cleaning (CertMagic's `CleanStorage`) runs, given to
/// [`ConfigBuilder::storage_cleaning`](crate::ConfigBuilder::storage_cleaning).
///
/// [Maintenance](crate::start_maintenance) runs a pass at its start and then
/// whenever one is due, at most once per [`interval`](Self::interval) across
/// every instance sharing the storage (the time of the next pass is kept in
/// storage at `maintenance/storage_clean.json`, written under the lock);
/// [`Config::clean_storage`] runs one now. A pass removes:
///
/// - **certificates** (the record, and the three keys of the 0.1 layout)
///   expired for longer than [`expired_grace`](Self::expired_grace) that no
///   managed name needs. A record is needed when the cache serves it
///   (certificates obtained on demand included, while cached), or when it
///   is the current record of a name this config manages (the one
///   [`Config::load`] finds), even expired: maintenance renews it. Another
///   issuer's record of a managed name, expired past the grace period, is
///   not needed. Each removal takes the certificate's storage lock, reads
///   the record again under it, and deletes through
///   [`Storage::delete_fenced`](crate::Storage::delete_fenced) with that
///   lock's guard, so a renewal stored meanwhile (or by the lock's next
///   holder, should the pass be paused past the lease) is never removed;
/// - **OCSP staples** (`ocsp/<name>-<hash>`) whose certificate is no longer
///   in storage (once the staple is an hour old: its certificate may have
///   been stored after the pass listed them), and staples whose
///   `nextUpdate` has passed;
/// - **challenge state** older than [`challenge_max_age`](Self::challenge_max_age):
///   records of challenges in progress, through the same stale cleanup as
///   [`Config::clean_stale_challenges`] (the solver that presented one
///   cleans it up, DNS records included), and HTTP-01 token keys
///   (`acme/challenge_tokens/<token>`) left behind, by their storage age;
/// - **retry state** (`maintenance/retry/<name>.json`) of names this config
///   does not manage and the cache does not serve, once the retry was due
///   more than the grace period ago (an instance managing the name would
///   have retried and rewritten it by then);
/// - **temporary files** a crash left behind (they may hold key material),
///   through [`Storage::remove_stale_temporaries`](crate::Storage::remove_stale_temporaries),
///   older than [`temporary_max_age`](Self::temporary_max_age).
///
/// Bounds and safety: the pass holds the storage lock `storage_clean`; once
/// it finds the lock lost it removes nothing more, and it records its run
/// with [`Storage::store_fenced`](crate::Storage::store_fenced). At most
/// 1,000 keys are removed per pass (challenge records and temporary files
/// have their own bounds); a pass that used up this budget is due again an
/// hour later. An error on one key is recorded in the
/// [`CleanReport`] and the pass goes on. Ages are by the config's
/// [clock](crate::ConfigBuilder::clock) (storage write times are compared
/// with it), except temporary files' ages (the file system's times, by the
/// system clock).
///
/// A pass only knows the names *its* config manages: instances sharing
/// storage should manage the same names (a name only another instance
/// manages loses its records once they are expired past the grace period,
/// and that instance obtains it anew at its next renewal).
///
/// ```
/// use std::time::Duration;
/// use certauto_core::{Config, StorageCleaning};
///
/// let config = Config::builder()
///     .storage_cleaning(StorageCleaning::new().expired_grace(Duration::from_secs(7 * 24 * 3600)))
///     .build();
/// assert!(config.storage_cleaning().is_enabled());
/// let quiet = Config::builder().storage_cleaning(StorageCleaning::disabled()).build();
/// assert!(!quiet.storage_cleaning().is_enabled());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageCleaning {
    enabled: bool,
    interval: Duration,
    expired_grace: Duration,
    challenge_max_age: Duration,
    temporary_max_age: Duration,
}

impl Default for StorageCleaning {
    fn default() -> Self {
        Self::new()
    }
}

impl StorageCleaning {
    /// The defaults: on, a pass at most once a day across the cluster,
    /// certificates kept a day after they expired, challenge state and
    /// temporary files stale after an hour.
    pub fn new() -> Self {
        Self {
            enabled: true,
            interval: DEFAULT_INTERVAL,
            expired_grace: DEFAULT_EXPIRED_GRACE,
            challenge_max_age: DEFAULT_CHALLENGE_MAX_AGE,
            temporary_max_age: DEFAULT_TEMPORARY_MAX_AGE,
        }
    }

    /// Maintenance never cleans storage (with the default ages, should
    /// [`Config::clean_storage`] be called).
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::new()
        }
    }

    /// The least time between two passes across every instance sharing the
    /// storage (default a day; clamped to between a minute and a year).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.clamp(MIN_AGE, crate::MAX_CHECK_INTERVAL);
        self
    }

    /// How long after it expired a certificate no managed name needs stays
    /// in storage (default a day).
    pub fn expired_grace(mut self, grace: Duration) -> Self {
        self.expired_grace = grace;
        self
    }

    /// How old challenge state is before it is removed (default an hour,
    /// at least a minute: a validation in progress is never that old).
    pub fn challenge_max_age(mut self, age: Duration) -> Self {
        self.challenge_max_age = age.max(MIN_AGE);
        self
    }

    /// How old a temporary file is before it is taken as a crash's and
    /// removed (default an hour, at least a minute).
    pub fn temporary_max_age(mut self, age: Duration) -> Self {
        self.temporary_max_age = age.max(MIN_AGE);
        self
    }

    /// Whether maintenance cleans storage.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The interval set with [`interval`](Self::interval).
    pub fn get_interval(&self) -> Duration {
        self.interval
    }

    /// The grace period set with [`expired_grace`](Self::expired_grace).
    pub fn get_expired_grace(&self) -> Duration {
        self.expired_grace
    }

    /// The age set with [`challenge_max_age`](Self::challenge_max_age).
    pub fn get_challenge_max_age(&self) -> Duration {
        self.challenge_max_age
    }

    /// The age set with [`temporary_max_age`](Self::temporary_max_age).
    pub fn get_temporary_max_age(&self) -> Duration {
        self.temporary_max_age
    }

    /// How often maintenance looks whether a pass is due.
    pub(crate) fn check_interval(&self) -> Duration {
        self.interval.min(MAX_CHECK_INTERVAL)
    }
}

/// What one cleaning pass removed, by category (storage keys, or paths for
/// temporary files), and what went wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CleanReport {
    /// Certificate keys removed (records and 0.1 layout keys).
    pub certificates: Vec<String>,
    /// OCSP staple keys removed.
    pub ocsp_staples: Vec<String>,
    /// Stale challenges cleaned up, as `<type> <identifier>` (see
    /// [`StaleChallenges`](crate::StaleChallenges)).
    pub challenges: Vec<String>,
    /// HTTP-01 token keys removed.
    pub challenge_tokens: Vec<String>,
    /// Retry state keys removed.
    pub retry_states: Vec<String>,
    /// Temporary files removed (paths or keys, as the backend reports them).
    pub temporaries: Vec<String>,
    /// What could not be removed or read, as `<key>: <error>` (kept for the
    /// next pass).
    pub errors: Vec<String>,
    /// The removal budget (1,000 keys) ran out: the rest is
    /// removed by the next pass, due an hour later.
    pub budget_exhausted: bool,
    /// The pass found its lock lost and stopped removing.
    pub lock_lost: bool,
}

impl CleanReport {
    /// How many keys and files were removed in all.
    pub fn removed(&self) -> usize {
        self.certificates.len()
            + self.ocsp_staples.len()
            + self.challenges.len()
            + self.challenge_tokens.len()
            + self.retry_states.len()
            + self.temporaries.len()
    }

    fn error(&mut self, key: &str, e: &(dyn std::error::Error + 'static)) {
        tracing::warn!(key, error = %ErrorChain(e), "storage cleaning: could not clean a key");
        self.errors.push(format!("{key}: {}", ErrorChain(e)));
    }
}

/// The cluster's cleaning schedule, kept at [`keys::STORAGE_CLEAN_STATE`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct CleanState {
    /// When the last pass ran, Unix seconds.
    last_run: u64,
    /// When the next pass is due, Unix seconds.
    next_run: u64,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Whether `t + d` is at or before `now` (a sum past the representable
/// future never is).
fn passed(t: SystemTime, d: Duration, now: SystemTime) -> bool {
    t.checked_add(d).is_some_and(|end| end <= now)
}

/// The identifier whose [`Identifier::storage_key`] is `key`, if any.
pub(crate) fn identifier_from_storage_key(key: &str) -> Option<Identifier> {
    // The mapped forms first (`ipv6_2001-db8--1`, `wildcard_.example.com`).
    let mut candidates = Vec::new();
    if let Some(rest) = key.strip_prefix("ipv6_") {
        candidates.push(rest.replace('-', ":"));
    }
    if let Some(rest) = key.strip_prefix("wildcard_.") {
        candidates.push(format!("*.{rest}"));
    }
    candidates.push(key.to_owned());
    candidates
        .iter()
        .filter_map(|c| Identifier::parse(c).ok())
        .find(|id| id.storage_key() == key)
}

/// The name part of a staple key `ocsp/<name>-<hash>`.
pub(crate) fn staple_name(key: &str) -> Option<&str> {
    key.strip_prefix(keys::OCSP_PREFIX)?
        .strip_prefix('/')?
        .rsplit_once('-')
        .map(|(name, _)| name)
}

/// What the certificate sweep leaves for the staple sweep: the staple key
/// of every certificate kept, with its leaf and issuer DER.
#[derive(Default)]
struct Kept {
    staples: HashMap<String, (Vec<u8>, Option<Vec<u8>>)>,
    /// Folder names whose certificate could not be read (their staples,
    /// by name, are kept).
    unreadable: HashSet<String>,
    /// Whether every certificate was read: only then is a staple whose
    /// certificate is not among them known to be an orphan.
    complete: bool,
}

impl Kept {
    fn keep(&mut self, cert: &Certificate) {
        let chain = cert.chain();
        if let (Some(leaf), Some(name)) = (chain.first(), cert.names().first()) {
            self.staples.insert(
                keys::ocsp_staple(name, leaf),
                (leaf.to_vec(), chain.get(1).map(|c| c.to_vec())),
            );
        }
    }
}

/// A key's age as storage reports it.
enum Age {
    /// Written this long ago (`None`: the backend keeps no write times).
    Known(Option<Duration>),
    /// The key no longer exists.
    Gone,
    /// Storage could not say (the error is in the report).
    Unknown,
}

/// One pass in progress: the lock, the budget and the report.
struct Pass<'a> {
    config: &'a Config,
    options: StorageCleaning,
    guard: &'a LockGuard,
    now: SystemTime,
    budget: usize,
    report: CleanReport,
}

impl Pass<'_> {
    /// Whether the pass may remove one more key (the lock held, budget left).
    fn may_remove(&mut self) -> bool {
        if self.guard.is_lost() {
            self.report.lock_lost = true;
            return false;
        }
        if self.budget == 0 {
            self.report.budget_exhausted = true;
            return false;
        }
        true
    }

    fn stopped(&self) -> bool {
        self.report.lock_lost
    }

    /// Lists the keys below `prefix` (none when it does not exist), at most
    /// [`MAX_SCANNED_PER_PREFIX`]; `None` after a storage error (recorded).
    async fn list(&mut self, prefix: &str) -> Option<(Vec<String>, bool)> {
        match self.config.storage().list(prefix, true).await {
            Ok(mut listed) => {
                let complete = listed.len() <= MAX_SCANNED_PER_PREFIX;
                listed.truncate(MAX_SCANNED_PER_PREFIX);
                Some((listed, complete))
            }
            Err(e) if e.is_not_found() => Some((Vec::new(), true)),
            Err(e) => {
                self.report.error(prefix, &e);
                None
            }
        }
    }

    /// Deletes `key` (a missing key is fine) as a write the pass's lock
    /// protects ([`Storage::delete_fenced`](crate::Storage::delete_fenced)),
    /// counting it against the budget.
    async fn delete(&mut self, key: &str) -> bool {
        let guard = self.guard;
        self.delete_under(guard, key).await
    }

    /// Deletes `key` (a missing key is fine) fenced by `guard`, counting it
    /// against the budget. A refusal because the pass's own lock was lost
    /// stops the pass; one because `guard` (another lock) was lost is
    /// recorded.
    async fn delete_under(&mut self, guard: &LockGuard, key: &str) -> bool {
        self.budget = self.budget.saturating_sub(1);
        match self.config.storage().delete_fenced(guard, key).await {
            Ok(()) => true,
            Err(e) if e.is_not_found() => true,
            Err(StorageError::LockLost(_)) if self.guard.is_lost() => {
                self.report.lock_lost = true;
                false
            }
            Err(e) => {
                self.report.error(key, &e);
                false
            }
        }
    }

    /// Whether both the pass's lock and `cert_guard` are still held (checked
    /// before each write under the certificate's lock); a loss is recorded.
    fn both_held(&mut self, cert_guard: &LockGuard, dir: &str) -> bool {
        if self.guard.ensure_held().is_err() {
            self.report.lock_lost = true;
            return false;
        }
        if let Err(e) = cert_guard.ensure_held() {
            self.report.error(dir, &e);
            return false;
        }
        true
    }

    /// How long ago storage says `key` was written: `Known(None)` when the
    /// backend keeps no write times. A key gone meanwhile is `Gone`; another
    /// error is recorded in the report and is `Unknown` (the key is kept).
    async fn age(&mut self, key: &str) -> Age {
        match self.config.storage().stat(key).await {
            Ok(info) => Age::Known(
                info.modified
                    .map(|m| self.now.duration_since(m).unwrap_or(Duration::ZERO)),
            ),
            Err(e) if e.is_not_found() => Age::Gone,
            Err(e) => {
                self.report.error(key, &e);
                Age::Unknown
            }
        }
    }

    fn expired_past_grace(&self, cert: &Certificate) -> bool {
        passed(cert.not_after(), self.options.expired_grace, self.now)
    }

    /// Whether the cache serves `cert`.
    fn served(&self, cert: &Certificate) -> bool {
        let serial = cert.serial_hex();
        cert.names().iter().any(|n| {
            self.config
                .cache()
                .get(&n.as_str())
                .is_some_and(|e| e.serial() == serial)
        })
    }

    async fn certificates(&mut self) -> Kept {
        let mut kept = Kept::default();
        let Some((listed, complete)) = self.list(keys::CERTIFICATES_PREFIX).await else {
            return kept;
        };
        kept.complete = complete;
        // certificates/<issuer>/<name>/<file>: one entry per folder.
        let mut folders: BTreeSet<(String, String)> = BTreeSet::new();
        for key in &listed {
            let parts: Vec<&str> = key.split('/').collect();
            if let [_, issuer, name, _file] = parts.as_slice() {
                folders.insert(((*issuer).to_owned(), (*name).to_owned()));
            }
        }
        let managed: HashMap<String, Vec<Identifier>> = self
            .config
            .managed_snapshot()
            .iter()
            .filter_map(|ids| Some((ids.first()?.storage_key(), ids.clone())))
            .collect();
        for (issuer, name) in folders {
            if self.stopped() {
                kept.complete = false;
                break;
            }
            let Some(id) = identifier_from_storage_key(&name) else {
                kept.unreadable.insert(name);
                continue;
            };
            let cert = match certs::load(self.config.storage().as_ref(), &issuer, &id).await {
                Ok(Some(cert)) => cert,
                // Only a 0.1 `.json` left, or nothing: no certificate here.
                Ok(None) => continue,
                Err(Error::Certificate(e)) => {
                    tracing::debug!(issuer, name, error = %ErrorChain(&e), "storage cleaning: unreadable certificate left for its renewal");
                    kept.unreadable.insert(name);
                    continue;
                }
                Err(e) => {
                    self.report.error(&keys::cert_dir(&issuer, &id), &e);
                    kept.complete = false;
                    continue;
                }
            };
            if !self.expired_past_grace(&cert) || self.served(&cert) {
                kept.keep(&cert);
                continue;
            }
            if let Some(ids) = managed.get(&name) {
                let current = self.config.load_ids(ids).await;
                let is_current = match &current {
                    Ok(Some(c)) => c.serial_hex() == cert.serial_hex() && c.issuer_key() == issuer,
                    Ok(None) => false,
                    // Unsure: keep it.
                    Err(_) => true,
                };
                if is_current {
                    kept.keep(&cert);
                    continue;
                }
            }
            if !self.may_remove() {
                kept.keep(&cert);
                continue;
            }
            if !self.remove_certificate(&issuer, &id, &cert).await {
                kept.keep(&cert);
            }
        }
        kept
    }

    /// Removes one certificate's keys under its lock, after reading it again
    /// there; whether it was removed.
    async fn remove_certificate(
        &mut self,
        issuer: &str,
        id: &Identifier,
        seen: &Certificate,
    ) -> bool {
        let storage = self.config.storage().clone();
        let dir = keys::cert_dir(issuer, id);
        let lock = tokio::time::timeout(
            CERT_LOCK_WAIT,
            crate::storage::lock::acquire(storage.as_ref(), &keys::cert_lock(id)),
        )
        .await;
        let cert_guard = match lock {
            Ok(Ok(guard)) => guard,
            Ok(Err(e)) => {
                self.report.error(&dir, &e);
                return false;
            }
            Err(_) => {
                self.report
                    .error(&dir, &StorageError::LockTimeout(keys::cert_lock(id)));
                return false;
            }
        };
        let removed = match certs::load(storage.as_ref(), issuer, id).await {
            Ok(Some(current))
                if current.serial_hex() == seen.serial_hex()
                    && self.expired_past_grace(&current) =>
            {
                let mut present = vec![keys::cert_record(issuer, id)];
                present.extend(keys::legacy_cert_keys(issuer, id));
                // Every delete is fenced by the certificate's lock: a pass
                // paused past that lock's lease must not remove what its
                // next holder stored meanwhile (the same key).
                let mut all = true;
                for key in present {
                    if !self.both_held(&cert_guard, &dir) {
                        all = false;
                        break;
                    }
                    match storage.exists(&key).await {
                        Ok(true) => {
                            if self.delete_under(&cert_guard, &key).await {
                                self.report.certificates.push(key);
                            } else {
                                all = false;
                                break;
                            }
                        }
                        Ok(false) => {}
                        Err(e) => {
                            self.report.error(&key, &e);
                            all = false;
                        }
                    }
                }
                // The folder, once empty (FileStorage keeps folders).
                if all
                    && matches!(storage.list(&dir, true).await, Ok(rest) if rest.is_empty())
                    && self.both_held(&cert_guard, &dir)
                {
                    let _ = storage.delete_fenced(&cert_guard, &dir).await;
                }
                all
            }
            // Renewed, replaced or removed meanwhile.
            Ok(_) => false,
            Err(e) => {
                self.report.error(&dir, &e);
                false
            }
        };
        let _ = cert_guard.release().await;
        removed
    }

    async fn staples(&mut self, kept: &Kept) {
        let Some((listed, _)) = self.list(keys::OCSP_PREFIX).await else {
            return;
        };
        for key in listed {
            if self.stopped() {
                break;
            }
            let remove = match kept.staples.get(&key) {
                Some((leaf, issuer)) => {
                    let Some(issuer) = issuer else { continue };
                    let der = match self.config.storage().load(&key).await {
                        Ok(der) => der,
                        Err(e) if e.is_not_found() => continue,
                        Err(e) => {
                            self.report.error(&key, &e);
                            continue;
                        }
                    };
                    matches!(
                        crate::ocsp::verify(&der, leaf, issuer, self.now),
                        Err(OcspError::Stale { .. })
                    )
                }
                None => {
                    let name_unreadable =
                        staple_name(&key).is_some_and(|n| kept.unreadable.contains(n));
                    // A backend without write times: old enough.
                    kept.complete
                        && !name_unreadable
                        && match self.age(&key).await {
                            Age::Known(age) => age.is_none_or(|age| age >= MIN_ORPHAN_STAPLE_AGE),
                            Age::Gone | Age::Unknown => false,
                        }
                }
            };
            if remove && self.may_remove() && self.delete(&key).await {
                self.report.ocsp_staples.push(key);
            }
        }
    }

    async fn challenges(&mut self) {
        let stale = self
            .config
            .clean_stale_challenges_older_than(self.options.challenge_max_age)
            .await;
        self.report.challenges.extend(stale.cleaned);
        self.report.errors.extend(stale.failed);
        let Some((listed, _)) = self.list(keys::CHALLENGE_TOKENS_PREFIX).await else {
            return;
        };
        if listed.is_empty() {
            return;
        }
        // A token whose challenge record remains is left to that record's
        // cleanup (it is removed with it).
        let Some((records, _)) = self.list(keys::CHALLENGES_PREFIX).await else {
            return;
        };
        let in_progress: HashSet<&str> = records
            .iter()
            .filter_map(|k| k.rsplit('/').next()?.strip_suffix(".json"))
            .collect();
        for key in listed {
            if self.stopped() {
                break;
            }
            let token = key.rsplit('/').next().unwrap_or_default();
            if in_progress.contains(token) {
                continue;
            }
            let max_age = self.options.challenge_max_age;
            let stale = matches!(self.age(&key).await, Age::Known(Some(age)) if age >= max_age);
            if stale && self.may_remove() && self.delete(&key).await {
                self.report.challenge_tokens.push(key);
            }
        }
    }

    async fn retry_states(&mut self) {
        let prefix = format!("{}/retry", keys::MAINTENANCE_PREFIX);
        let Some((listed, _)) = self.list(&prefix).await else {
            return;
        };
        let managed: HashSet<String> = self
            .config
            .managed_snapshot()
            .iter()
            .filter_map(|ids| Some(ids.first()?.storage_key()))
            .collect();
        for key in listed {
            if self.stopped() {
                break;
            }
            let Some(name) = key
                .strip_prefix(&prefix)
                .and_then(|k| k.strip_prefix('/'))
                .and_then(|k| k.strip_suffix(".json"))
            else {
                continue;
            };
            if managed.contains(name) {
                continue;
            }
            let id = identifier_from_storage_key(name);
            if id
                .as_ref()
                .is_some_and(|id| self.config.cache().get(&id.as_str()).is_some())
            {
                continue;
            }
            let abandoned = match self.config.storage().load(&key).await {
                Ok(bytes) => match serde_json::from_slice::<RetryDue>(&bytes) {
                    Ok(r) => UNIX_EPOCH
                        .checked_add(Duration::from_secs(r.next_attempt))
                        .is_some_and(|due| passed(due, self.options.expired_grace, self.now)),
                    // Unreadable state is ignored by its readers: garbage.
                    Err(_) => true,
                },
                Err(e) if e.is_not_found() => continue,
                Err(e) => {
                    self.report.error(&key, &e);
                    continue;
                }
            };
            if abandoned && self.may_remove() && self.delete(&key).await {
                self.report.retry_states.push(key);
            }
        }
    }

    async fn temporaries(&mut self) {
        if self.guard.is_lost() {
            self.report.lock_lost = true;
            return;
        }
        match self
            .config
            .storage()
            .remove_stale_temporaries(self.options.temporary_max_age)
            .await
        {
            Ok(sweep) => {
                self.report.temporaries.extend(sweep.removed);
                for e in &sweep.skipped {
                    self.report.error("temporary files", e);
                }
            }
            Err(e) => self.report.error("temporary files", &e),
        }
    }
}

/// The part of a retry schedule (`config/retry.rs`) cleaning reads.
#[derive(Deserialize)]
struct RetryDue {
    next_attempt: u64,
}

impl Config {
    /// How storage cleaning runs (see [`StorageCleaning`]).
    pub fn storage_cleaning(&self) -> StorageCleaning {
        self.storage_cleaning_options()
    }

    /// Runs one storage cleaning pass now (see [`StorageCleaning`] for what
    /// it removes), whether or not the interval since the
    /// cluster's last pass has passed, and even when cleaning is
    /// [`disabled`](StorageCleaning::disabled) for maintenance; the run is
    /// recorded, so maintenance's next pass (on any instance) comes an
    /// interval later. Waits for a pass another instance is running (the
    /// storage lock), then runs.
    ///
    /// Emits [`Event::StorageCleaned`] with the report. Fails only when the
    /// lock cannot be taken: errors on single keys are in the report's
    /// [`errors`](CleanReport::errors).
    pub async fn clean_storage(&self) -> Result<CleanReport, Error> {
        Ok(self.run_clean(true).await?.unwrap_or_default())
    }

    /// Maintenance's pass: runs only when the cluster's last pass is at
    /// least an interval ago; `None` when not due.
    pub(crate) async fn clean_storage_if_due(&self) -> Result<Option<CleanReport>, Error> {
        self.run_clean(false).await
    }

    async fn load_clean_state(&self) -> Result<Option<CleanState>, StorageError> {
        match self.storage().load(keys::STORAGE_CLEAN_STATE).await {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn run_clean(&self, force: bool) -> Result<Option<CleanReport>, Error> {
        let options = self.storage_cleaning_options();
        let due = |state: Option<CleanState>, now: SystemTime| {
            force || state.is_none_or(|s| unix(now) >= s.next_run)
        };
        // Not due: no lock taken (maintenance asks often).
        if !due(self.load_clean_state().await?, self.clock().now()) {
            return Ok(None);
        }
        let guard =
            crate::storage::lock::acquire(self.storage().as_ref(), keys::STORAGE_CLEAN_LOCK)
                .await?;
        let result = self.run_clean_locked(&guard, options, force, due).await;
        let _ = guard.release().await;
        let report = result?;
        if let Some(report) = &report {
            tracing::info!(
                certificates = report.certificates.len(),
                ocsp_staples = report.ocsp_staples.len(),
                challenges = report.challenges.len(),
                challenge_tokens = report.challenge_tokens.len(),
                retry_states = report.retry_states.len(),
                temporaries = report.temporaries.len(),
                errors = report.errors.len(),
                budget_exhausted = report.budget_exhausted,
                lock_lost = report.lock_lost,
                "storage cleaned"
            );
            self.emit(&Event::StorageCleaned {
                report: report.clone(),
            });
        }
        Ok(report)
    }

    async fn run_clean_locked(
        &self,
        guard: &LockGuard,
        options: StorageCleaning,
        force: bool,
        due: impl Fn(Option<CleanState>, SystemTime) -> bool,
    ) -> Result<Option<CleanReport>, Error> {
        let now = self.clock().now();
        // Another instance may have run while we waited for the lock.
        if !force && !due(self.load_clean_state().await?, now) {
            return Ok(None);
        }
        let mut pass = Pass {
            config: self,
            options,
            guard,
            now,
            budget: MAX_REMOVALS_PER_PASS,
            report: CleanReport::default(),
        };
        let kept = pass.certificates().await;
        if !pass.stopped() {
            pass.staples(&kept).await;
        }
        if !pass.stopped() {
            pass.challenges().await;
        }
        if !pass.stopped() {
            pass.retry_states().await;
        }
        if !pass.stopped() {
            pass.temporaries().await;
        }
        let mut report = pass.report;
        let next = if report.budget_exhausted {
            RESUME_AFTER
        } else {
            options.interval
        };
        let state = CleanState {
            last_run: unix(now),
            next_run: unix(now).saturating_add(next.as_secs()),
        };
        let bytes = serde_json::to_vec(&state).unwrap_or_default();
        match self
            .storage()
            .store_fenced(guard, keys::STORAGE_CLEAN_STATE, &bytes)
            .await
        {
            Ok(()) => {}
            Err(StorageError::LockLost(_)) => report.lock_lost = true,
            Err(e) => report.error(keys::STORAGE_CLEAN_STATE, &e),
        }
        Ok(Some(report))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::acme::types::ChallengeType;
    use crate::challenge::{Challenge, ChallengeTokens, DistributedSolver, Http01Solver, Solver};
    use crate::clock::{Clock, ManualClock};
    use crate::issuer::{IssueRequest, Issuer, LocalCa};
    use crate::keys::{CertificateKey, KeyType};
    use crate::storage::{FileStorage, LockLoss, MemoryStorage, Storage};

    const DAY: Duration = Duration::from_secs(24 * 3600);
    const HOUR: Duration = Duration::from_secs(3600);

    struct Setup {
        config: Config,
        events: Arc<Mutex<Vec<Event>>>,
    }

    fn setup(storage: Arc<dyn Storage>, clock: Arc<ManualClock>) -> Setup {
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        let config = Config::builder()
            .storage(storage.clone())
            .clock(clock.clone())
            .local_ca_leaf_lifetime(DAY)
            .on_event(move |e| seen.lock().unwrap().push(e.clone()))
            .build();
        Setup { config, events }
    }

    /// A local CA certificate for `name` valid for `lifetime` from now,
    /// stored as the record of `name` under `issuer_key`.
    async fn stored_cert(
        storage: &Arc<dyn Storage>,
        name: &str,
        lifetime: Duration,
        issuer_key: &str,
    ) -> Certificate {
        let ca = LocalCa::new(storage.clone()).leaf_lifetime(lifetime);
        let ids = vec![Identifier::parse(name).unwrap()];
        let key = CertificateKey::generate(KeyType::EcdsaP256).unwrap();
        let csr = key.csr(&ids).unwrap();
        let issued = ca.issue(&IssueRequest::new(&ids, &csr)).await.unwrap();
        let cert = Certificate::from_pem(&issued.chain_pem, &key.to_pem(), issuer_key).unwrap();
        let lock = storage.lock(&keys::cert_lock(&ids[0])).await.unwrap();
        certs::store(storage.as_ref(), &lock, &cert, &ids[0])
            .await
            .unwrap();
        lock.release().await.unwrap();
        cert
    }

    fn staple_key(cert: &Certificate) -> String {
        keys::ocsp_staple(&cert.names()[0], cert.leaf())
    }

    fn challenge(name: &str, token: &str) -> Challenge {
        Challenge::new(
            Identifier::parse(name).unwrap(),
            ChallengeType::Http01,
            token.to_owned(),
            format!("{token}.thumbprint"),
            format!("https://ca.test/chall/{token}"),
        )
    }

    async fn exists(storage: &Arc<dyn Storage>, key: &str) -> bool {
        storage.exists(key).await.unwrap()
    }

    /// Every category, on one storage: what is removed and what is kept.
    async fn removes_what_no_name_needs(storage: Arc<dyn Storage>) {
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let s = setup(storage.clone(), clock.clone());
        let local = crate::LOCAL_CA_ISSUER_KEY;
        // Managed: served from the cache; and one managed but not cached.
        s.config
            .manage(["managed.test", "uncached.test"])
            .await
            .unwrap();
        s.config.cache().remove("uncached.test").unwrap();
        let managed_id = Identifier::parse("managed.test").unwrap();
        let managed_key = keys::cert_record(local, &managed_id);
        let uncached_key = keys::cert_record(local, &Identifier::parse("uncached.test").unwrap());
        // Another issuer's record of a managed name, expired with the others.
        let other = stored_cert(&storage, "managed.test", DAY, "old-ca").await;
        let other_key = keys::cert_record("old-ca", &managed_id);
        // Unmanaged: expired past grace, expired within grace, valid.
        let gone = stored_cert(&storage, "gone.test", DAY, local).await;
        let gone_key = keys::cert_record(local, &Identifier::parse("gone.test").unwrap());
        let _within = stored_cert(&storage, "within.test", DAY * 2 + HOUR * 12, local).await;
        let within_key = keys::cert_record(local, &Identifier::parse("within.test").unwrap());
        let valid = stored_cert(&storage, "valid.test", DAY * 10, local).await;
        let valid_key = keys::cert_record(local, &Identifier::parse("valid.test").unwrap());
        // Staples: of a certificate that goes, of one kept, of none.
        for cert in [&gone, &valid, &other] {
            storage.store(&staple_key(cert), b"der").await.unwrap();
        }
        let orphan_staple = format!("{}/nothing.test-0011223344556677", keys::OCSP_PREFIX);
        storage.store(&orphan_staple, b"der").await.unwrap();
        // Retry state: of an unmanaged name and of a managed one.
        let retry = format!(r#"{{"attempts":1,"next_attempt":{}}}"#, unix(clock.now()));
        let gone_retry = keys::retry_schedule(&Identifier::parse("gone.test").unwrap());
        let managed_retry = keys::retry_schedule(&managed_id);
        for key in [&gone_retry, &managed_retry] {
            storage.store(key, retry.as_bytes()).await.unwrap();
        }
        // Challenges: one presented now (stale by the time of the pass),
        // a token left behind, and one presented just before the pass.
        let solver = DistributedSolver::new(
            Http01Solver::without_listener(ChallengeTokens::new()),
            storage.clone(),
        )
        .clock(clock.clone());
        solver
            .present(&challenge("a.test", "old-token"))
            .await
            .unwrap();
        let left_token = keys::challenge_token("left-token");
        storage.store(&left_token, b"ka").await.unwrap();

        clock.advance(DAY * 3);
        solver
            .present(&challenge("b.test", "new-token"))
            .await
            .unwrap();
        let report = s.config.clean_storage().await.unwrap();

        // Certificates.
        for key in [&managed_key, &uncached_key, &within_key, &valid_key] {
            assert!(exists(&storage, key).await, "{key} kept: {report:?}");
        }
        for key in [&gone_key, &other_key] {
            assert!(!exists(&storage, key).await, "{key} removed: {report:?}");
        }
        let mut removed = report.certificates.clone();
        removed.sort();
        assert_eq!(removed, vec![gone_key.clone(), other_key.clone()]);
        // Staples.
        assert!(exists(&storage, &staple_key(&valid)).await);
        for key in [staple_key(&gone), staple_key(&other), orphan_staple.clone()] {
            assert!(!exists(&storage, &key).await, "{key}: {report:?}");
            assert!(report.ocsp_staples.contains(&key), "{key}: {report:?}");
        }
        assert_eq!(report.ocsp_staples.len(), 3);
        // Retry state.
        assert_eq!(report.retry_states, vec![gone_retry.clone()]);
        assert!(!exists(&storage, &gone_retry).await);
        assert!(exists(&storage, &managed_retry).await);
        // Challenges.
        assert_eq!(report.challenges, vec!["http-01 a.test".to_owned()]);
        assert_eq!(report.challenge_tokens, vec![left_token.clone()]);
        assert!(!exists(&storage, &keys::challenge_token("old-token")).await);
        assert!(!exists(&storage, &left_token).await);
        assert!(exists(&storage, &keys::challenge_token("new-token")).await);
        assert!(
            exists(
                &storage,
                &keys::challenge_record("http-01", "b.test", "new-token")
            )
            .await
        );
        assert!(report.errors.is_empty(), "{report:?}");
        assert!(!report.budget_exhausted && !report.lock_lost);
        assert_eq!(report.removed(), 2 + 3 + 1 + 1 + 1);
        // The event carries the report.
        let events = s.events.lock().unwrap();
        let cleaned: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::StorageCleaned { report } => Some(report.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(cleaned, vec![report.clone()]);
        assert_eq!(
            events.last().map(Event::name),
            Some("storage_cleaned"),
            "{events:?}"
        );
        assert!(events.last().unwrap().names().is_empty());
    }

    #[tokio::test]
    async fn memory_storage_removes_what_no_name_needs() {
        removes_what_no_name_needs(Arc::new(MemoryStorage::new())).await;
    }

    #[tokio::test]
    async fn file_storage_removes_what_no_name_needs() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FileStorage::new(dir.path());
        removes_what_no_name_needs(Arc::new(storage)).await;
        // The folder of a removed certificate goes too.
        let gone = dir.path().join(keys::cert_dir(
            crate::LOCAL_CA_ISSUER_KEY,
            &Identifier::parse("gone.test").unwrap(),
        ));
        assert!(!gone.exists());
    }

    #[tokio::test]
    async fn file_storage_temporaries_older_than_the_bound_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(dir.path()));
        let s = setup(
            storage.clone(),
            Arc::new(ManualClock::new(SystemTime::now())),
        );
        storage.store("certificates/x/y/y.pem", b"v").await.unwrap();
        let folder = dir.path().join("certificates/x/y");
        let old = folder.join(".y.pem.tmp-1-1");
        let fresh = folder.join(".y.pem.tmp-2-2");
        for path in [&old, &fresh] {
            std::fs::write(path, b"-----BEGIN PRIVATE KEY-----").unwrap();
        }
        let file = std::fs::OpenOptions::new().write(true).open(&old).unwrap();
        file.set_modified(SystemTime::now() - HOUR * 2).unwrap();
        drop(file);
        let report = s.config.clean_storage().await.unwrap();
        assert_eq!(
            report.temporaries,
            vec!["certificates/x/y/.y.pem.tmp-1-1".to_owned()]
        );
        assert!(!old.exists() && fresh.exists());
    }

    /// The interval holds across every config sharing the storage;
    /// `clean_storage` runs whenever asked.
    #[tokio::test]
    async fn at_most_once_per_interval_across_configs() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let a = setup(storage.clone(), clock.clone());
        let b = setup(storage.clone(), clock.clone());
        assert!(a.config.clean_storage_if_due().await.unwrap().is_some());
        assert!(b.config.clean_storage_if_due().await.unwrap().is_none());
        clock.advance(DAY - Duration::from_secs(1));
        assert!(b.config.clean_storage_if_due().await.unwrap().is_none());
        assert!(a.config.clean_storage_if_due().await.unwrap().is_none());
        clock.advance(Duration::from_secs(1));
        assert!(b.config.clean_storage_if_due().await.unwrap().is_some());
        assert!(a.config.clean_storage_if_due().await.unwrap().is_none());
        // Asked for, a pass runs, and counts as the cluster's pass.
        b.config.clean_storage().await.unwrap();
        clock.advance(HOUR);
        assert!(a.config.clean_storage_if_due().await.unwrap().is_none());
        let ran = |s: &Setup| {
            s.events
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e.name() == "storage_cleaned")
                .count()
        };
        assert_eq!((ran(&a), ran(&b)), (1, 2));
    }

    /// A pass waits while another holds the cleaning lock.
    #[tokio::test]
    async fn passes_never_run_at_once() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let s = setup(storage.clone(), clock.clone());
        let gone = keys::cert_record(
            crate::LOCAL_CA_ISSUER_KEY,
            &Identifier::parse("gone.test").unwrap(),
        );
        stored_cert(&storage, "gone.test", DAY, crate::LOCAL_CA_ISSUER_KEY).await;
        clock.advance(DAY * 3);
        let held = storage.lock(keys::STORAGE_CLEAN_LOCK).await.unwrap();
        let config = s.config.clone();
        let pass = tokio::spawn(async move { config.clean_storage().await });
        for _ in 0..200 {
            tokio::task::yield_now().await;
        }
        assert!(!pass.is_finished());
        assert!(exists(&storage, &gone).await);
        held.release().await.unwrap();
        let report = tokio::time::timeout(Duration::from_secs(30), pass)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(report.certificates, vec![gone.clone()]);
        assert!(!exists(&storage, &gone).await);
    }

    /// A storage whose cleaning lock is lost as soon as it is taken.
    #[derive(Debug)]
    struct LosingLocks(MemoryStorage);

    #[async_trait::async_trait]
    impl Storage for LosingLocks {
        async fn store(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
            self.0.store(key, value).await
        }
        async fn load(&self, key: &str) -> Result<Vec<u8>, StorageError> {
            self.0.load(key).await
        }
        async fn delete(&self, key: &str) -> Result<(), StorageError> {
            self.0.delete(key).await
        }
        async fn exists(&self, key: &str) -> Result<bool, StorageError> {
            self.0.exists(key).await
        }
        async fn list(&self, prefix: &str, recursive: bool) -> Result<Vec<String>, StorageError> {
            self.0.list(prefix, recursive).await
        }
        async fn stat(&self, key: &str) -> Result<crate::KeyInfo, StorageError> {
            self.0.stat(key).await
        }
        async fn lock(&self, name: &str) -> Result<LockGuard, StorageError> {
            if name != keys::STORAGE_CLEAN_LOCK {
                return self.0.lock(name).await;
            }
            let loss = LockLoss::new();
            let guard = LockGuard::new(name, &loss, || async { Ok(()) });
            loss.report();
            Ok(guard)
        }
    }

    #[tokio::test]
    async fn a_lost_lock_stops_the_pass() {
        let storage: Arc<dyn Storage> = Arc::new(LosingLocks(MemoryStorage::new()));
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let s = setup(storage.clone(), clock.clone());
        stored_cert(&storage, "gone.test", DAY, crate::LOCAL_CA_ISSUER_KEY).await;
        clock.advance(DAY * 3);
        let report = s.config.clean_storage().await.unwrap();
        assert!(report.lock_lost, "{report:?}");
        assert_eq!(report.removed(), 0, "{report:?}");
        assert!(!exists(&storage, keys::STORAGE_CLEAN_STATE).await);
    }

    /// A memory storage that records how keys are deleted and, once armed
    /// with a lock and a key, plays another instance at the pass's re-read
    /// of that key under that lock: it ends the pass's hold (as an expired
    /// lease would), takes the lock itself and stores a new value there.
    #[derive(Debug, Default)]
    struct Witness {
        inner: MemoryStorage,
        deletes: Mutex<Vec<String>>,
        takeover: Mutex<Option<Takeover>>,
    }

    #[derive(Debug)]
    struct Takeover {
        lock: String,
        key: String,
        locked: bool,
        done: bool,
    }

    impl Witness {
        fn arm(&self, lock: String, key: String) {
            *self.takeover.lock().unwrap() = Some(Takeover {
                lock,
                key,
                locked: false,
                done: false,
            });
        }

        fn deletes(&self) -> Vec<String> {
            self.deletes.lock().unwrap().clone()
        }
    }

    #[async_trait::async_trait]
    impl Storage for Witness {
        async fn store(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
            self.inner.store(key, value).await
        }
        async fn load(&self, key: &str) -> Result<Vec<u8>, StorageError> {
            let lock = {
                let mut takeover = self.takeover.lock().unwrap();
                match takeover.as_mut() {
                    Some(t) if t.locked && !t.done && t.key == key => {
                        t.done = true;
                        Some(t.lock.clone())
                    }
                    _ => None,
                }
            };
            let value = self.inner.load(key).await;
            if let Some(lock) = lock {
                self.inner.expire_lock(&lock);
                let next = self.inner.lock(&lock).await.unwrap();
                self.inner
                    .store_fenced(&next, key, b"the next holder's record")
                    .await
                    .unwrap();
                next.release().await.unwrap();
            }
            value
        }
        async fn delete(&self, key: &str) -> Result<(), StorageError> {
            self.deletes.lock().unwrap().push(format!("plain {key}"));
            self.inner.delete(key).await
        }
        async fn delete_fenced(&self, guard: &LockGuard, key: &str) -> Result<(), StorageError> {
            self.deletes
                .lock()
                .unwrap()
                .push(format!("fenced by {} {key}", guard.name()));
            self.inner.delete_fenced(guard, key).await
        }
        async fn exists(&self, key: &str) -> Result<bool, StorageError> {
            self.inner.exists(key).await
        }
        async fn list(&self, prefix: &str, recursive: bool) -> Result<Vec<String>, StorageError> {
            self.inner.list(prefix, recursive).await
        }
        async fn stat(&self, key: &str) -> Result<crate::KeyInfo, StorageError> {
            self.inner.stat(key).await
        }
        async fn lock(&self, name: &str) -> Result<LockGuard, StorageError> {
            if let Some(t) = self.takeover.lock().unwrap().as_mut() {
                t.locked |= t.lock == name;
            }
            self.inner.lock(name).await
        }
    }

    /// Every delete of a certificate's keys is fenced by that certificate's
    /// lock (not only by the pass's), the folder's included.
    #[tokio::test]
    async fn certificate_deletes_are_fenced_by_the_certificate_lock() {
        let witness = Arc::new(Witness::default());
        let storage: Arc<dyn Storage> = witness.clone();
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let s = setup(storage.clone(), clock.clone());
        let id = Identifier::parse("gone.test").unwrap();
        let key = keys::cert_record(crate::LOCAL_CA_ISSUER_KEY, &id);
        stored_cert(&storage, "gone.test", DAY, crate::LOCAL_CA_ISSUER_KEY).await;
        clock.advance(DAY * 3);
        witness.deletes.lock().unwrap().clear();
        let report = s.config.clean_storage().await.unwrap();
        assert_eq!(report.certificates, vec![key.clone()], "{report:?}");
        let deletes: Vec<String> = witness
            .deletes()
            .into_iter()
            .filter(|d| d.contains(keys::CERTIFICATES_PREFIX))
            .collect();
        let fenced = format!("fenced by {} ", keys::cert_lock(&id));
        assert!(!deletes.is_empty());
        assert!(
            deletes.iter().all(|d| d.starts_with(&fenced)),
            "{deletes:?}"
        );
        assert!(!exists(&storage, &key).await);
    }

    /// The pass re-reads the old record under the certificate's lock, then
    /// loses that lock to another instance, which stores its new record at
    /// the same key: the pass deletes nothing and says why.
    #[tokio::test]
    async fn a_certificate_lock_lost_before_the_delete_deletes_nothing() {
        let witness = Arc::new(Witness::default());
        let storage: Arc<dyn Storage> = witness.clone();
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let s = setup(storage.clone(), clock.clone());
        let id = Identifier::parse("gone.test").unwrap();
        let key = keys::cert_record(crate::LOCAL_CA_ISSUER_KEY, &id);
        stored_cert(&storage, "gone.test", DAY, crate::LOCAL_CA_ISSUER_KEY).await;
        clock.advance(DAY * 3);
        witness.arm(keys::cert_lock(&id), key.clone());
        let report = s.config.clean_storage().await.unwrap();
        assert!(
            witness.takeover.lock().unwrap().as_ref().unwrap().done,
            "the pass re-read the record under the certificate's lock"
        );
        assert_eq!(
            storage.load(&key).await.unwrap(),
            b"the next holder's record"
        );
        assert!(report.certificates.is_empty(), "{report:?}");
        assert!(!report.lock_lost, "{report:?}");
        assert_eq!(report.errors.len(), 1, "{report:?}");
        assert!(report.errors[0].contains("lost"), "{report:?}");
    }

    /// A memory storage that, once armed, pauses the first read of `key` by
    /// the first client to hold lock `lock`, until another client asks for
    /// that lock.
    #[derive(Debug)]
    struct Pausing {
        inner: MemoryStorage,
        lock: String,
        key: String,
        /// Armed; how often `lock` was asked for since; paused once.
        state: Mutex<(bool, usize, bool)>,
        asked: tokio::sync::watch::Sender<bool>,
        paused: tokio::sync::watch::Sender<bool>,
    }

    impl Pausing {
        fn new(lock: String, key: String) -> Self {
            Self {
                inner: MemoryStorage::new(),
                lock,
                key,
                state: Mutex::new((false, 0, false)),
                asked: tokio::sync::watch::channel(false).0,
                paused: tokio::sync::watch::channel(false).0,
            }
        }

        fn arm(&self) {
            self.state.lock().unwrap().0 = true;
        }

        /// Resolves once a reader paused (bounded: virtual time).
        async fn paused(&self) {
            let mut paused = self.paused.subscribe();
            tokio::time::timeout(HOUR, paused.wait_for(|p| *p))
                .await
                .expect("the pass paused")
                .unwrap();
        }
    }

    #[async_trait::async_trait]
    impl Storage for Pausing {
        async fn store(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
            self.inner.store(key, value).await
        }
        async fn load(&self, key: &str) -> Result<Vec<u8>, StorageError> {
            let pause = {
                let mut state = self.state.lock().unwrap();
                let (armed, asked, paused) = &mut *state;
                let pause = *armed && *asked == 1 && !*paused && key == self.key;
                *paused |= pause;
                pause
            };
            if pause {
                self.paused.send_replace(true);
                let mut asked = self.asked.subscribe();
                asked.wait_for(|asked| *asked).await.unwrap();
            }
            self.inner.load(key).await
        }
        async fn delete(&self, key: &str) -> Result<(), StorageError> {
            self.inner.delete(key).await
        }
        async fn exists(&self, key: &str) -> Result<bool, StorageError> {
            self.inner.exists(key).await
        }
        async fn list(&self, prefix: &str, recursive: bool) -> Result<Vec<String>, StorageError> {
            self.inner.list(prefix, recursive).await
        }
        async fn stat(&self, key: &str) -> Result<crate::KeyInfo, StorageError> {
            self.inner.stat(key).await
        }
        async fn lock(&self, name: &str) -> Result<LockGuard, StorageError> {
            {
                let mut state = self.state.lock().unwrap();
                let (armed, asked, _) = &mut *state;
                if *armed && name == self.lock {
                    *asked += 1;
                    if *asked >= 2 {
                        self.asked.send_replace(true);
                    }
                }
            }
            self.inner.lock(name).await
        }
    }

    /// Maintenance's cleaning pass holds a managed name's certificate lock
    /// (removing another issuer's expired record of it) and is paused there
    /// until the renewal check asks for that lock. The renewal completes
    /// once the pass goes on: the pass runs in its own task, not only while
    /// the maintenance loop waits (there, it would never go on, and the
    /// renewal would time out on a lock its own task holds).
    #[tokio::test(start_paused = true)]
    async fn a_renewal_waiting_on_the_cleaning_pass_completes() {
        let id = Identifier::parse("renew.test").unwrap();
        let old_key = keys::cert_record("old-ca", &id);
        let pausing = Arc::new(Pausing::new(keys::cert_lock(&id), old_key.clone()));
        let storage: Arc<dyn Storage> = pausing.clone();
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let config = Config::builder()
            .storage(storage.clone())
            .clock(clock.clone())
            .on_event(move |e| {
                let _ = tx.send(e.clone());
            })
            .build();
        config.manage(["renew.test"]).await.unwrap();
        let first = config
            .cache()
            .get("renew.test")
            .unwrap()
            .serial()
            .to_owned();
        stored_cert(&storage, "renew.test", DAY, "old-ca").await;
        // Past the renewal time of the 7-day leaf, and past the old
        // record's expiry and grace.
        clock.advance(DAY * 11 / 2);
        pausing.arm();
        let maintenance = crate::start_maintenance(&config);
        let (mut renewed, mut cleaned) = (false, None);
        while !renewed || cleaned.is_none() {
            // Virtual time: the renewal check comes 10 minutes in.
            let event = tokio::time::timeout(HOUR, events.recv())
                .await
                .expect("the renewal and the cleaning pass completed")
                .unwrap();
            match event {
                Event::CertRenewed { serial, .. } => {
                    assert_ne!(serial, first);
                    renewed = true;
                }
                Event::CertFailed { error, .. } => panic!("renewal failed: {error}"),
                Event::StorageCleaned { report } => cleaned = Some(report),
                _ => {}
            }
        }
        pausing.paused().await;
        let cleaned = cleaned.unwrap();
        assert_eq!(cleaned.certificates, vec![old_key.clone()], "{cleaned:?}");
        assert!(!exists(&storage, &old_key).await);
        config.cache().stop();
        tokio::time::timeout(HOUR, maintenance).await.unwrap();
    }

    /// Stopping maintenance aborts a cleaning pass in progress (its own
    /// task), and the locks it held are released.
    #[tokio::test(start_paused = true)]
    async fn stopping_maintenance_aborts_the_cleaning_pass() {
        let id = Identifier::parse("gone.test").unwrap();
        let key = keys::cert_record(crate::LOCAL_CA_ISSUER_KEY, &id);
        let pausing = Arc::new(Pausing::new(keys::cert_lock(&id), key.clone()));
        let storage: Arc<dyn Storage> = pausing.clone();
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let s = setup(storage.clone(), clock.clone());
        stored_cert(&storage, "gone.test", DAY, crate::LOCAL_CA_ISSUER_KEY).await;
        clock.advance(DAY * 3);
        pausing.arm();
        let maintenance = crate::start_maintenance(&s.config);
        pausing.paused().await;
        s.config.cache().stop();
        tokio::time::timeout(HOUR, maintenance).await.unwrap();
        for lock in [keys::cert_lock(&id), keys::STORAGE_CLEAN_LOCK.to_owned()] {
            let guard = tokio::time::timeout(HOUR, pausing.inner.lock(&lock))
                .await
                .expect("released by the aborted pass")
                .unwrap();
            guard.release().await.unwrap();
        }
        assert!(exists(&storage, &key).await);
        assert!(
            !s.events
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.name() == "storage_cleaned")
        );
    }

    /// A memory storage whose `stat` fails (not with `NotFound`) below a prefix.
    #[derive(Debug, Default)]
    struct FailingStat(MemoryStorage);

    #[async_trait::async_trait]
    impl Storage for FailingStat {
        async fn store(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
            self.0.store(key, value).await
        }
        async fn load(&self, key: &str) -> Result<Vec<u8>, StorageError> {
            self.0.load(key).await
        }
        async fn delete(&self, key: &str) -> Result<(), StorageError> {
            self.0.delete(key).await
        }
        async fn exists(&self, key: &str) -> Result<bool, StorageError> {
            self.0.exists(key).await
        }
        async fn list(&self, prefix: &str, recursive: bool) -> Result<Vec<String>, StorageError> {
            self.0.list(prefix, recursive).await
        }
        async fn stat(&self, key: &str) -> Result<crate::KeyInfo, StorageError> {
            if key.starts_with(keys::OCSP_PREFIX) || key.starts_with(keys::CHALLENGE_TOKENS_PREFIX)
            {
                return Err(StorageError::Io {
                    key: key.to_owned(),
                    source: std::io::Error::other("stat refused"),
                });
            }
            self.0.stat(key).await
        }
        async fn lock(&self, name: &str) -> Result<LockGuard, StorageError> {
            self.0.lock(name).await
        }
    }

    /// A staple whose certificate is gone, and a token left behind, both
    /// old, are kept when their age cannot be read; the errors are reported.
    #[tokio::test]
    async fn an_unreadable_age_keeps_the_key_and_is_reported() {
        let storage: Arc<dyn Storage> = Arc::new(FailingStat::default());
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let s = setup(storage.clone(), clock.clone());
        let orphan_staple = format!("{}/nothing.test-0011223344556677", keys::OCSP_PREFIX);
        let token = keys::challenge_token("left-token");
        storage.store(&orphan_staple, b"der").await.unwrap();
        storage.store(&token, b"ka").await.unwrap();
        clock.advance(DAY);
        let report = s.config.clean_storage().await.unwrap();
        assert!(exists(&storage, &orphan_staple).await, "{report:?}");
        assert!(exists(&storage, &token).await, "{report:?}");
        assert_eq!(report.removed(), 0, "{report:?}");
        let mut errors = report.errors.clone();
        errors.sort();
        assert_eq!(errors.len(), 2, "{report:?}");
        assert!(errors[0].starts_with(&format!("{token}: ")), "{errors:?}");
        assert!(
            errors[1].starts_with(&format!("{orphan_staple}: ")),
            "{errors:?}"
        );
        assert!(
            errors.iter().all(|e| e.contains("stat refused")),
            "{errors:?}"
        );
    }

    #[test]
    fn storage_keys_map_back_to_identifiers() {
        for name in [
            "a.test",
            "*.example.com",
            "192.0.2.1",
            "2001:db8::1",
            "ipv6-x.test",
            "ipv6---1",
            "::1",
        ] {
            let id = Identifier::parse(name).unwrap();
            assert_eq!(identifier_from_storage_key(&id.storage_key()), Some(id));
        }
        assert_eq!(identifier_from_storage_key("not a name"), None);
        assert_eq!(staple_name("ocsp/a.test-00ff"), Some("a.test"));
        assert_eq!(staple_name("ocsp/x"), None);
    }

    #[test]
    fn options_are_bounded() {
        let o = StorageCleaning::new()
            .interval(Duration::ZERO)
            .challenge_max_age(Duration::ZERO)
            .temporary_max_age(Duration::ZERO)
            .expired_grace(Duration::ZERO);
        assert_eq!(o.get_interval(), MIN_AGE);
        assert_eq!(o.get_challenge_max_age(), MIN_AGE);
        assert_eq!(o.get_temporary_max_age(), MIN_AGE);
        assert_eq!(o.get_expired_grace(), Duration::ZERO);
        assert!(o.is_enabled() && !StorageCleaning::disabled().is_enabled());
        assert_eq!(StorageCleaning::new().check_interval(), HOUR);
    }
}
