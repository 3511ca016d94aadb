//! Checks the table of defaults (`defaults.md`, in the crate docs and the
//! README) against the constants the code reads: every stated number must
//! be the constant's value, every row must have a check, and every checked
//! constant a row.

use std::collections::BTreeMap;
use std::time::Duration;

/// The table as the crate docs include it.
const TABLE: &str = include_str!("defaults.md");
/// The README, which holds the same table under its "Defaults" heading.
const README: &str = include_str!("../../README.md");

/// Rows naming a constant of these crates are checked by that crate's own
/// `defaults_table` test (this crate cannot see their constants).
const CHECKED_ELSEWHERE: [&str; 2] = ["certauto_actix::", "certauto_tower::"];

/// The rows of the first table in `text`: each a list of trimmed cells,
/// without the header and separator rows.
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

/// A duration as the table writes it: the largest whole unit.
fn duration(d: Duration) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    const YEAR: u64 = 365 * DAY;
    if d.subsec_nanos() != 0 {
        assert_eq!(
            d.subsec_nanos() % 1_000_000,
            0,
            "{d:?}: not whole milliseconds"
        );
        return format!("{} ms", d.as_millis());
    }
    let s = d.as_secs();
    let plural = |n: u64, one: &str, many: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {many}")
        }
    };
    match s {
        0 => "0 s".to_owned(),
        s if s.is_multiple_of(YEAR) => plural(s / YEAR, "year", "years"),
        s if s.is_multiple_of(DAY) => plural(s / DAY, "day", "days"),
        s if s.is_multiple_of(HOUR) => format!("{} h", s / HOUR),
        s if s.is_multiple_of(MINUTE) => format!("{} min", s / MINUTE),
        s => format!("{s} s"),
    }
}

/// A number of seconds (a DNS TTL, a TSIG fudge), written as a duration.
fn ttl(seconds: impl Into<u64>) -> String {
    duration(Duration::from_secs(seconds.into()))
}

/// A count: thousands separated by commas from 10,000 on.
fn count(n: impl Into<u64>) -> String {
    let n: u64 = n.into();
    let digits = n.to_string();
    if n < 10_000 {
        return digits;
    }
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A `usize` count.
fn count_usize(n: usize) -> String {
    count(u64::try_from(n).expect("counts in the table fit in u64"))
}

/// A size in bytes: in MiB or KiB when whole.
fn bytes(n: impl TryInto<u64>) -> String {
    let Ok(n) = n.try_into() else {
        panic!("sizes in the table fit in u64")
    };
    match n {
        n if n >= 1 << 20 && n.is_multiple_of(1 << 20) => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n.is_multiple_of(1 << 10) => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// A fraction written as `1/n`, or panics when it is not one.
fn unit_fraction(f: f64) -> String {
    (1..=100)
        .find(|n| (f * f64::from(*n) - 1.0).abs() < 1e-9)
        .map(|n| format!("1/{n}"))
        .unwrap_or_else(|| panic!("{f} is not 1/n"))
}

/// A fraction of the certificate's lifetime.
fn of_lifetime(f: f64) -> String {
    format!("{} of the lifetime", unit_fraction(f))
}

/// A jitter fraction, either way.
fn jitter(f: f64) -> String {
    format!("±{} %", (f * 100.0).round())
}

/// A rate: events per window.
fn rate((events, window): (u32, Duration)) -> String {
    format!("{} per {}", count(events), duration(window))
}

/// Every checked constant: its path in the table's "constant" column and
/// its value written as the table writes it.
macro_rules! checks {
    ($($render:ident($($path:ident)::+ $(.$field:ident)?);)*) => {
        vec![$(
            (
                stringify!($($path)::+ $(.$field)?).replace(' ', ""),
                $render(crate::$($path)::+ $(.$field)?),
            ),
        )*]
    };
}

/// A check of a rate: two constants, events and window, in one row.
macro_rules! rate_check {
    ($($events:ident)::+ $(.$efield:ident)?, $($window:ident)::+ $(.$wfield:ident)?) => {
        (
            format!(
                "{}, {}",
                stringify!($($events)::+ $(.$efield)?),
                stringify!($($window)::+ $(.$wfield)?)
            )
            .replace(' ', "")
            .replace(",", ", "),
            rate((crate::$($events)::+ $(.$efield)?, crate::$($window)::+ $(.$wfield)?)),
        )
    };
}

fn checked() -> Vec<(String, String)> {
    let mut checks = checks! {
        text(env::DEFAULT_HTTP_ADDR);
        text(env::DEFAULT_HTTPS_ADDR);
        duration(config::builder::DEFAULT_RENEW_INTERVAL);
        duration(config::builder::DEFAULT_OCSP_CHECK_INTERVAL);
        duration(config::builder::MIN_CHECK_INTERVAL);
        duration(config::builder::MAX_CHECK_INTERVAL);
        of_lifetime(config::builder::DEFAULT_RENEWAL_RATIO);
        duration(certificate::SHORT_LIVED_MAX_LIFETIME);
        of_lifetime(certificate::SHORT_LIVED_RENEWAL_RATIO);
        duration(maintain::ari::ARI_DEFAULT_RECHECK);
        duration(maintain::ari::ARI_MIN_RECHECK);
        duration(maintain::ari::ARI_MAX_RECHECK);
        duration(maintain::ari::ARI_ERROR_RECHECK);
        duration(config::backoff::MIN_RETRY_BACKOFF);
        duration(config::backoff::MAX_RETRY_BACKOFF);
        jitter(config::backoff::RETRY_JITTER);
        duration(maintain::MAX_RETRY_SLEEP);
        duration(status::STATUS_STORAGE_BUDGET);
        count_usize(status::YIELD_EVERY);
        bytes(config::retry::MAX_ERROR_LEN);
        count_usize(ocsp::staple::STAPLE_RECORD_SLACK);
        count_usize(config::manage::DEFAULT_MANAGE_CONCURRENCY);
        count_usize(config::manage::LOAD_CONCURRENCY);
        duration(ratelimit::MAX_RATE_LIMIT_WINDOW);
        count_usize(issuer::set::MAX_BACKOFF_ENTRIES);
        count_usize(handshake::on_demand::DEFAULT_ON_DEMAND_MAX_IN_FLIGHT);
        duration(handshake::on_demand::DEFAULT_REFUSAL_TTL);
        count_usize(handshake::on_demand::DEFAULT_REFUSAL_CAPACITY);
        duration(handshake::on_demand::DECISION_TIMEOUT);
        count_usize(cache::DEFAULT_CACHE_CAPACITY);
        duration(handshake::acceptor::DEFAULT_HANDSHAKE_TIMEOUT);
        count_usize(handshake::acceptor::DEFAULT_MAX_PENDING_HANDSHAKES);
        duration(handshake::acceptor::ACCEPT_BACKOFF);
        duration(handshake::limits::ServerLimits::DEFAULT_HEADER_READ_TIMEOUT);
        duration(handshake::limits::ServerLimits::DEFAULT_IDLE_TIMEOUT);
        count_usize(handshake::limits::ServerLimits::DEFAULT_MAX_CONNECTIONS);
        bytes(acme::client::DEFAULT_MAX_BODY_BYTES);
        count(acme::client::DEFAULT_BAD_NONCE_RETRIES);
        count(acme::client::DEFAULT_TRANSPORT_RETRIES);
        duration(acme::client::TRANSPORT_RETRY_DELAY);
        duration(acme::client::DEFAULT_POLL_INITIAL_INTERVAL);
        duration(acme::client::DEFAULT_POLL_MAX_INTERVAL);
        duration(acme::client::DEFAULT_POLL_TIMEOUT);
        duration(acme::client::DEFAULT_REQUEST_TIMEOUT);
        duration(acme::client::MAX_LIMIT);
        count_usize(acme::client::MAX_POOLED_NONCES);
        duration(acme::http::MAX_CONNECT_TIMEOUT);
        duration(acme::http::MAX_RETRY_AFTER);
        bytes(ocsp::OCSP_RESPONSE_LIMIT);
        duration(ocsp::OCSP_CLOCK_SKEW);
        duration(ocsp::FETCH_TIMEOUT);
        of_validity(ocsp::REFRESH_DIVISOR);
        duration(challenge::http01::CONNECTION_LIFETIME);
        duration(challenge::http01::HEADER_READ_TIMEOUT);
        duration(challenge::tls_alpn01::HANDSHAKE_TIMEOUT);
        duration(challenge::tls_alpn01::LOADED_CHALLENGE_TTL);
        count_usize(challenge::tls_alpn01::MAX_LOADED_CHALLENGES);
        duration(challenge::distributed::STALE_CHALLENGE_AGE);
        duration(challenge::distributed::CHALLENGE_CLEANUP_INTERVAL);
        bytes(challenge::distributed::MAX_RECORD_BYTES);
        count_usize(challenge::distributed::MAX_RECORDS_PER_NAME);
        duration(challenge::distributed::NEGATIVE_TTL);
        count_usize(challenge::distributed::MAX_NEGATIVE);
        count_usize(challenge::distributed::MAX_SCANNED_PER_PASS);
        count_usize(challenge::distributed::MAX_CLEANED_PER_PASS);
        duration(challenge::distributed::MAX_FUTURE_SKEW);
        count(challenge::dns01::route53::CHANGE_ATTEMPTS);
        count_usize(challenge::dns01::route53::MAX_CACHED_ZONES);
        duration(challenge::dns01::rfc2136::MIN_TIMEOUT);
        duration(challenge::dns01::rfc2136::MAX_TIMEOUT);
        ttl(challenge::dns01::rfc2136::FUDGE);
        duration(challenge::dns01::exec::MIN_TIMEOUT);
        duration(challenge::dns01::exec::OUTPUT_GRACE);
        duration(ratelimit::MIN_RATE_LIMIT_WINDOW);
        opt_rate(issuer::presets::LETS_ENCRYPT_LIMITS.certificates_per_domain);
        opt_rate(issuer::presets::LETS_ENCRYPT_LIMITS.accounts_per_ip);
        count_usize(storage::file::temporaries::BOUNDS.depth);
        count_usize(storage::file::temporaries::BOUNDS.folder_entries);
        count_usize(storage::file::temporaries::BOUNDS.visited);
        count_usize(storage::file::temporaries::BOUNDS.removed);
        count_usize(storage::file::lock::MAX_LOCK_NAME);
        bytes(storage::file::lock::MAX_LOCK_FILE);
        count(storage::redis_defaults::CLUSTER_RETRIES);
        millis(storage::redis_defaults::OP_MEMORY_MS);
        duration(challenge::dns01::DEFAULT_PROPAGATION_TIMEOUT);
        duration(challenge::dns01::MAX_PROPAGATION_TIMEOUT);
        duration(challenge::dns01::DEFAULT_POLLING_INTERVAL);
        duration(challenge::dns01::MIN_INTERVAL);
        duration(challenge::dns01::propagation::QUERY_TIMEOUT);
        count(challenge::dns01::DEFAULT_NAMESERVER_PORT);
        count_usize(challenge::dns01::propagation::MAX_CNAME_HOPS);
        count_usize(challenge::dns01::propagation::MAX_NAME_SERVERS);
        count(challenge::dns01::PROVIDER_ATTEMPTS);
        duration(challenge::dns01::DEFAULT_PROVIDER_RETRY_DELAY);
        duration(challenge::dns01::MAX_PROVIDER_RETRY_DELAY);
        duration(challenge::dns01::http::API_TIMEOUT);
        bytes(challenge::dns01::http::MAX_API_BODY);
        ttl(challenge::dns01::rfc2136::DEFAULT_TTL);
        ttl(challenge::dns01::powerdns::DEFAULT_TTL);
        ttl(challenge::dns01::cloudflare::DEFAULT_TTL);
        ttl(challenge::dns01::route53::DEFAULT_TTL);
        ttl(challenge::dns01::digitalocean::DEFAULT_TTL);
        ttl(challenge::dns01::hetzner::DEFAULT_TTL);
        ttl(challenge::dns01::desec::DEFAULT_TTL);
        duration(challenge::dns01::rfc2136::DEFAULT_TIMEOUT);
        duration(challenge::dns01::route53::DEFAULT_SYNC_INTERVAL);
        count(challenge::dns01::route53::DEFAULT_SYNC_POLLS);
        duration(challenge::dns01::hetzner::ACTION_POLL_INTERVAL);
        count(challenge::dns01::hetzner::MAX_ACTION_POLLS);
        count(challenge::dns01::cloudflare::MAX_PAGES);
        count(challenge::dns01::digitalocean::MAX_PAGES);
        bytes(challenge::dns01::acme_dns::MAX_ACCOUNTS_FILE);
        duration(challenge::dns01::exec::DEFAULT_TIMEOUT);
        bytes(challenge::dns01::exec::MAX_OUTPUT);
        duration(maintain::clean::DEFAULT_INTERVAL);
        duration(maintain::clean::DEFAULT_EXPIRED_GRACE);
        duration(maintain::clean::DEFAULT_CHALLENGE_MAX_AGE);
        duration(maintain::clean::DEFAULT_TEMPORARY_MAX_AGE);
        duration(maintain::clean::MIN_AGE);
        duration(maintain::clean::MIN_ORPHAN_STAPLE_AGE);
        count_usize(maintain::clean::MAX_REMOVALS_PER_PASS);
        count_usize(maintain::clean::MAX_SCANNED_PER_PREFIX);
        duration(maintain::clean::CERT_LOCK_WAIT);
        duration(maintain::clean::RESUME_AFTER);
        duration(maintain::clean::MAX_CHECK_INTERVAL);
        duration(storage::file::lock::DEFAULT_STALE_AFTER);
        duration(storage::file::lock::DEFAULT_KEEPALIVE);
        duration(storage::file::lock::DEFAULT_POLL_INTERVAL);
        duration(storage::file::lock::MAX_POLL_INTERVAL);
        duration(storage::file::lock::DEFAULT_WAIT_TIMEOUT);
        duration(storage::memory::LOCK_WAIT_TIMEOUT);
        duration(storage::redis_defaults::DEFAULT_LEASE);
        of_lease(storage::redis_defaults::KEEPALIVE_DIVISOR);
        duration(storage::redis_defaults::DEFAULT_POLL);
        duration(storage::redis_defaults::DEFAULT_WAIT_TIMEOUT);
        duration(storage::redis_defaults::DEFAULT_CONNECT_TIMEOUT);
        duration(storage::redis_defaults::DEFAULT_RESPONSE_TIMEOUT);
        bytes(storage::redis_defaults::MAX_VALUE);
        count_usize(storage::redis_defaults::MAX_LISTED);
        duration(issuer::local::DEFAULT_LOCAL_LEAF_LIFETIME);
        duration(issuer::local::MIN_LOCAL_LEAF_LIFETIME);
        duration(issuer::local::MAX_LOCAL_LEAF_LIFETIME);
        duration(issuer::local::ROOT_LIFETIME);
        duration(issuer::local::BACKDATE);
    };
    checks.extend([
        rate_check!(
            ratelimit::DEFAULT_RATE_LIMIT_EVENTS,
            ratelimit::DEFAULT_RATE_LIMIT_WINDOW
        ),
        rate_check!(
            issuer::presets::LETS_ENCRYPT_LIMITS.new_orders,
            issuer::presets::LETS_ENCRYPT_LIMITS.new_orders_window
        ),
        rate_check!(
            challenge::distributed::MAX_LOOKUPS_PER_SECOND,
            challenge::distributed::LOOKUP_WINDOW
        ),
    ]);
    checks
}

/// A default that is not a number (a listen address), as it is.
fn text(s: &str) -> String {
    s.to_owned()
}

/// A limit a CA may not have: a rate, or `none`.
fn opt_rate(limit: Option<(u32, Duration)>) -> String {
    limit.map_or_else(|| "none".to_owned(), rate)
}

/// A duration given in milliseconds.
fn millis(ms: u64) -> String {
    duration(Duration::from_millis(ms))
}

/// A fraction `1/divisor` of an OCSP response's validity.
fn of_validity(divisor: u32) -> String {
    format!("1/{divisor} of the validity")
}

/// A fraction `1/divisor` of the lock lease.
fn of_lease(divisor: u32) -> String {
    format!("1/{divisor} of the lease")
}

/// The "constant" cell without its backticks: paths joined by `, `.
fn constant_cell(cell: &str) -> String {
    cell.split(',')
        .map(|p| p.trim().trim_matches('`'))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Compares the table's rows with the checks; returns every difference.
fn differences(table: &str, checks: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut by_constant = BTreeMap::new();
    for (path, value) in checks {
        if by_constant.insert(path.as_str(), value.as_str()).is_some() {
            problems.push(format!("constant `{path}` is checked twice"));
        }
    }
    let mut seen = BTreeMap::new();
    for row in rows(table) {
        let [what, default, _, constant] = row.as_slice() else {
            problems.push(format!("row {row:?} does not have 4 cells"));
            continue;
        };
        let constant = constant_cell(constant);
        if let Some(earlier) = seen.insert(constant.clone(), what.clone()) {
            problems.push(format!(
                "rows {earlier:?} and {what:?} name the same constant `{constant}`"
            ));
        }
        match by_constant.get(constant.as_str()) {
            None if CHECKED_ELSEWHERE.iter().any(|c| constant.starts_with(c)) => {}
            None => problems.push(format!(
                "row {what:?}: no check for `{constant}` (add it to defaults_table.rs)"
            )),
            Some(actual) if *actual != default.as_str() => problems.push(format!(
                "row {what:?}: the table says {default:?}, but `{constant}` is {actual:?}"
            )),
            Some(_) => {}
        }
    }
    for path in by_constant.keys() {
        if !seen.contains_key(*path) {
            problems.push(format!(
                "constant `{path}` is checked but has no row in defaults.md"
            ));
        }
    }
    problems
}

#[test]
fn every_stated_default_is_the_constant_the_code_uses() {
    let table = rows(TABLE);
    assert!(table.len() > 100, "defaults.md has {} rows", table.len());
    let problems = differences(TABLE, &checked());
    assert!(problems.is_empty(), "defaults.md:\n{}", problems.join("\n"));
}

#[test]
fn the_readme_holds_the_same_table() {
    let start = README
        .find("\n## Defaults\n")
        .expect("the README has a \"## Defaults\" section");
    let section = &README[start + 1..];
    let end = section[3..]
        .find("\n## ")
        .map_or(section.len(), |i| i + 3 + 1);
    let in_readme = rows(&section[..end]);
    let in_docs = rows(TABLE);
    for (i, (a, b)) in in_docs.iter().zip(&in_readme).enumerate() {
        assert_eq!(
            a,
            b,
            "row {} differs between defaults.md and the README",
            i + 1
        );
    }
    assert_eq!(
        in_docs.len(),
        in_readme.len(),
        "defaults.md and the README's Defaults table have different numbers of rows"
    );
}

/// The default an environment-variable table (`| variable | meaning |
/// default |`) gives `var`; a row naming several variables gives each the
/// default at its position.
fn env_default(text: &str, var: &str) -> Option<String> {
    let wanted = format!("`{var}`");
    text.lines()
        .map(|l| l.trim().trim_start_matches("//!").trim())
        .filter(|l| l.starts_with('|'))
        .find_map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let (names, default) = (cells.first()?, cells.last()?);
            let names: Vec<&str> = names.split(", ").collect();
            let position = names.iter().position(|n| *n == wanted)?;
            let defaults: Vec<&str> = default.split(", ").collect();
            let default = if defaults.len() == names.len() {
                defaults[position]
            } else {
                default
            };
            Some(default.trim_matches('`').to_owned())
        })
}

#[test]
fn the_env_tables_state_the_same_defaults() {
    // The README's and the `env` module's tables of `CERTAUTO_*` variables
    // state some of these defaults again, in the variables' own syntax.
    let env_docs = include_str!("env/mod.rs");
    let durations = [
        (
            "CERTAUTO_RENEW_CHECK",
            crate::config::DEFAULT_RENEW_INTERVAL,
        ),
        (
            "CERTAUTO_DNS_PROPAGATION_TIMEOUT",
            crate::challenge::dns01::DEFAULT_PROPAGATION_TIMEOUT,
        ),
    ];
    let addresses = [
        ("CERTAUTO_HTTP_ADDR", crate::env::DEFAULT_HTTP_ADDR),
        ("CERTAUTO_HTTPS_ADDR", crate::env::DEFAULT_HTTPS_ADDR),
    ];
    for (name, table) in [("README", README), ("env module docs", env_docs)] {
        for (var, constant) in durations {
            let Some(stated) = env_default(table, var) else {
                assert_eq!(name, "env module docs", "the README's table has no {var}");
                continue;
            };
            assert_eq!(
                crate::env::parse_duration(&stated),
                Some(constant),
                "the {name} table says {var} defaults to {stated:?}, the code uses {constant:?}"
            );
        }
        for (var, constant) in addresses {
            let stated =
                env_default(table, var).unwrap_or_else(|| panic!("the {name} table has no {var}"));
            assert_eq!(stated, constant, "the {name} table's {var} default");
        }
    }
    // The Redis connect timeout the README's `CERTAUTO_STORAGE` row states.
    let storage = env_default(README, "CERTAUTO_STORAGE").map(|_| ());
    assert!(
        storage.is_some(),
        "the README's table has no CERTAUTO_STORAGE"
    );
    let redis_connect = format!(
        "after a {} connect timeout",
        duration(crate::storage::redis_defaults::DEFAULT_CONNECT_TIMEOUT)
    );
    assert!(
        README.contains(&redis_connect),
        "the README's CERTAUTO_STORAGE row should say {redis_connect:?}"
    );
}

#[test]
fn the_check_bites() {
    // A changed number, a row without a check and a check without a row
    // are each reported, naming the row or the constant.
    let checks = vec![
        ("a::ONE".to_owned(), "10 min".to_owned()),
        ("a::TWO".to_owned(), "5 s".to_owned()),
        ("a::THREE".to_owned(), "1 h".to_owned()),
    ];
    let table = "| what | default | where | constant |\n|---|---|---|---|\n\
                 | one | 10 min | fixed | `a::ONE` |\n\
                 | two | 10 s | fixed | `a::TWO` |\n\
                 | four | 1 day | fixed | `a::FOUR` |\n";
    let problems = differences(table, &checks);
    assert_eq!(
        problems,
        [
            "row \"two\": the table says \"10 s\", but `a::TWO` is \"5 s\"",
            "row \"four\": no check for `a::FOUR` (add it to defaults_table.rs)",
            "constant `a::THREE` is checked but has no row in defaults.md",
        ]
    );
}

#[test]
fn numbers_are_written_as_a_human_would() {
    assert_eq!(duration(Duration::from_millis(250)), "250 ms");
    assert_eq!(duration(Duration::from_secs(90)), "90 s");
    assert_eq!(duration(Duration::from_secs(600)), "10 min");
    assert_eq!(duration(Duration::from_secs(3 * 3600)), "3 h");
    assert_eq!(duration(Duration::from_secs(86_400)), "1 day");
    assert_eq!(duration(Duration::from_secs(30 * 86_400)), "30 days");
    assert_eq!(duration(Duration::from_secs(365 * 86_400)), "1 year");
    assert_eq!(count(4096u32), "4096");
    assert_eq!(count(65_536u32), "65,536");
    assert_eq!(count(1_000_000u32), "1,000,000");
    assert_eq!(bytes(1usize << 20), "1 MiB");
    assert_eq!(bytes(16usize * 1024), "16 KiB");
    assert_eq!(of_lifetime(1.0 / 3.0), "1/3 of the lifetime");
    assert_eq!(jitter(0.1), "±10 %");
    assert_eq!(rate((10, Duration::from_secs(10))), "10 per 10 s");
}
