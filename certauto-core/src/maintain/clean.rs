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
const DEFAULT_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// The default time a certificate stays in storage after it expired (a day).
const DEFAULT_EXPIRED_GRACE: Duration = Duration::from_secs(24 * 3600);
/// The default age after which challenge state is stale (an hour).
const DEFAULT_CHALLENGE_MAX_AGE: Duration = crate::challenge::STALE_CHALLENGE_AGE;
/// The default age after which a temporary file is a crash's (an hour).
const DEFAULT_TEMPORARY_MAX_AGE: Duration = Duration::from_secs(3600);
/// The shortest ages and interval accepted (shorter values are raised).
const MIN_AGE: Duration = Duration::from_secs(60);
/// How often maintenance looks whether a pass is due (at most).
const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// When a pass that used up its budget is due again.
const RESUME_AFTER: Duration = Duration::from_secs(3600);
/// The most keys one pass removes (challenge records and temporary files
/// have their own bounds).
const MAX_REMOVALS_PER_PASS: usize = 1000;
/// The most keys one pass reads under `certificates/`, `ocsp/`,
/// `maintenance/retry/` and `acme/challenge_tokens/` each.
const MAX_SCANNED_PER_PREFIX: usize = 100_000;
/// How long a removal waits for a certificate's lock (an obtain in
/// progress): the certificate is skipped, and tried again next pass.
const CERT_LOCK_WAIT: Duration = Duration::from_secs(30);
/// A staple whose certificate is not in storage is removed only once it is
/// this old: its certificate may have been stored after the pass listed them.
const MIN_ORPHAN_STAPLE_AGE: Duration = Duration::from_secs(3600);

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
///   not needed. Each removal takes the certificate's storage lock and reads
///   the record again under it, so a renewal stored meanwhile is never
///   removed;
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
struct CleanState {
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
fn identifier_from_storage_key(key: &str) -> Option<Identifier> {
    let mut candidates = vec![key.to_owned()];
    if let Some(rest) = key.strip_prefix("wildcard_.") {
        candidates.push(format!("*.{rest}"));
    }
    if let Some(rest) = key.strip_prefix("ipv6-") {
        candidates.push(rest.replace('-', ":"));
    }
    candidates
        .iter()
        .filter_map(|c| Identifier::parse(c).ok())
        .find(|id| id.storage_key() == key)
}

/// The name part of a staple key `ocsp/<name>-<hash>`.
fn staple_name(key: &str) -> Option<&str> {
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

    /// Deletes `key` (a missing key is fine), counting it against the budget.
    async fn delete(&mut self, key: &str) -> bool {
        self.budget = self.budget.saturating_sub(1);
        match self.config.storage().delete(key).await {
            Ok(()) => true,
            Err(e) if e.is_not_found() => true,
            Err(e) => {
                self.report.error(key, &e);
                false
            }
        }
    }

    /// How long ago storage says `key` was written (`None`: unknown).
    async fn age(&self, key: &str) -> Option<Duration> {
        let info = self.config.storage().stat(key).await.ok()?;
        Some(
            self.now
                .duration_since(info.modified?)
                .unwrap_or(Duration::ZERO),
        )
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
        let lock = tokio::time::timeout(CERT_LOCK_WAIT, storage.lock(&keys::cert_lock(id))).await;
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
                let mut all = true;
                for key in present {
                    if self.guard.is_lost() {
                        self.report.lock_lost = true;
                        all = false;
                        break;
                    }
                    match storage.exists(&key).await {
                        Ok(true) => {
                            if self.delete(&key).await {
                                self.report.certificates.push(key);
                            } else {
                                all = false;
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
                if all && matches!(storage.list(&dir, true).await, Ok(rest) if rest.is_empty()) {
                    let _ = storage.delete(&dir).await;
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
                    let Ok(der) = self.config.storage().load(&key).await else {
                        continue;
                    };
                    matches!(
                        crate::ocsp::verify(&der, leaf, issuer, self.now),
                        Err(OcspError::Stale { .. })
                    )
                }
                None => {
                    let name_unreadable =
                        staple_name(&key).is_some_and(|n| kept.unreadable.contains(n));
                    kept.complete
                        && !name_unreadable
                        && self
                            .age(&key)
                            .await
                            .is_none_or(|age| age >= MIN_ORPHAN_STAPLE_AGE)
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
        for key in listed {
            if self.stopped() {
                break;
            }
            let stale = self
                .age(&key)
                .await
                .is_some_and(|age| age >= self.options.challenge_max_age);
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
            Ok(removed) => self.report.temporaries.extend(removed),
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
        let guard = self.storage().lock(keys::STORAGE_CLEAN_LOCK).await?;
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
