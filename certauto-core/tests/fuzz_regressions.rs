//! Replays every fuzz input kept in the repository through its target's
//! harness (`certauto_core::__fuzz::targets`): the crashes the fuzzers
//! found (`fuzz/regressions/<target>/`, each fixed in certauto-core) and
//! the seed corpora (`fuzz/seeds/<target>/`). See FUZZING.md.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use certauto_core::__fuzz::targets;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn fixture(name: &str) -> Vec<u8> {
    let path = fuzz_dir().join("fixtures").join(name);
    fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The inputs kept for `target`: (file, bytes), regressions first.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for kind in ["regressions", "seeds"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = fs::read_dir(&dir) else {
            // Not every target has had a finding; every target has seeds.
            assert_eq!(kind, "regressions", "{} is missing", dir.display());
            continue;
        };
        let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files {
            let bytes = fs::read(&file).unwrap();
            out.push((file, bytes));
        }
    }
    assert!(!out.is_empty(), "no input kept for {target}");
    out
}

/// Runs every kept input of `target`; reports all failing files at once.
fn replay(target: &str, run: impl Fn(&[u8])) {
    let mut failed = Vec::new();
    for (file, bytes) in inputs(target) {
        if catch_unwind(AssertUnwindSafe(|| run(&bytes))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target}: failing inputs {failed:#?}");
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            replay(stringify!($name), targets::$name);
        }
    )*};
}

replay_tests!(
    acme_directory,
    acme_order,
    acme_authorization,
    acme_challenge,
    acme_problem,
    renewal_info,
    account_key,
    certificate_key,
    cert_record,
    identifier,
    retry_after,
    link_header,
    stored_records,
);

#[test]
fn cert_chain() {
    let key = String::from_utf8(fixture("leaf.key")).unwrap();
    let ca = fixture("ca.der");
    replay("cert_chain", |data| targets::cert_chain(data, &key, &ca));
}

#[test]
fn ocsp_response() {
    let leaf = fixture("leaf.der");
    let ca = fixture("ca.der");
    replay("ocsp_response", |data| {
        targets::ocsp_response(data, &leaf, &ca);
    });
}

/// The seeds reach past the parsers' first checks: the certificate seeds
/// load with the fixture key and the OCSP seeds verify, so the fuzzers
/// start from inputs that exercise the deep paths.
#[test]
fn seeds_reach_the_deep_paths() {
    let mut record = fixture("leaf.key");
    record.extend(fixture("leaf.pem"));
    let cert = certauto_core::__fuzz::cert_record(&record, "fuzz").unwrap();
    assert_eq!(cert.names().len(), 5, "{:?}", cert.names());
    assert!(cert.ari_cert_id().is_some());
    assert_eq!(cert.ocsp_urls().len(), 1);
    let now = UNIX_EPOCH + Duration::from_secs(1_893_456_000);
    for state in ["good", "revoked"] {
        let der = fixture(&format!("ocsp-{state}.der"));
        let verified =
            certauto_core::ocsp::verify(&der, &fixture("leaf.der"), &fixture("ca.der"), now);
        assert!(verified.is_ok(), "{state}: {verified:?}");
    }
}
