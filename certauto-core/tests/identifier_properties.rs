//! Property tests of identifier normalisation and the storage keys built
//! from identifiers (bounded: 256 cases each, a fixed seed, no failure
//! files; a counterexample becomes a named test or a fuzz regression).
//! The fuzz targets (`fuzz/`, FUZZING.md) search the same ground without
//! a bound.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use certauto_core::__fuzz::{identifier_from_storage_key, lock_file_stem, targets};
use certauto_core::storage::{keys, validate_key};
use certauto_core::{Identifier, NameError};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

fn config() -> Config {
    Config {
        cases: 256,
        rng_seed: RngSeed::Fixed(0x0c3a_7a00),
        failure_persistence: None,
        ..Config::default()
    }
}

/// One LDH label: letters (either case), digits and inner hyphens.
fn label() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?"
}

/// A DNS name that should be accepted: two to five labels, the last not all digits.
fn dns_name() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(label(), 1..5),
        "[a-zA-Z][a-zA-Z0-9]{0,9}",
    )
        .prop_map(|(mut labels, tld)| {
            labels.push(tld);
            labels.join(".")
        })
}

/// A label with letters outside ASCII (each to become `xn--…`).
fn unicode_label() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            'a', 'b', 'z', '0', 'ü', 'é', 'ø', 'ж', 'ω', '中', '文', 'ك',
        ]),
        1..12,
    )
    .prop_map(|chars| chars.into_iter().collect::<String>())
    .prop_filter("at least one non-ASCII letter", |s| !s.is_ascii())
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        // Few groups: the `::` forms.
        (any::<u16>(), any::<u16>())
            .prop_map(|(a, b)| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, a, b))),
    ]
}

/// Any identifier the parser accepts, as user input.
fn identifier_input() -> impl Strategy<Value = String> {
    prop_oneof![
        dns_name(),
        dns_name().prop_map(|n| format!("*.{n}.")),
        (unicode_label(), dns_name()).prop_map(|(u, n)| format!("{u}.{n}")),
        ip().prop_map(|ip| ip.to_string()),
        ip().prop_map(|ip| format!("[{ip}]")),
        // DNS names shaped like the storage key of an IPv6 address.
        ip().prop_map(|ip| format!("ipv6-{}", ip.to_string().replace(':', "-"))),
        ip().prop_map(|ip| format!("ipv6-{}.test", ip.to_string().replace(':', "-"))),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Refusal never panics, and what is accepted is a fixed point.
    #[test]
    fn parsing_any_text_never_panics_and_is_idempotent(input in any::<String>()) {
        if let Ok(id) = Identifier::parse(&input) {
            prop_assert_eq!(Identifier::parse(&id.as_str()).unwrap(), id);
        }
    }

    #[test]
    fn normalisation_is_idempotent(input in identifier_input()) {
        if let Ok(id) = Identifier::parse(&input) {
            let again = Identifier::parse(&id.as_str()).unwrap();
            prop_assert_eq!(&again, &id);
            targets::check_identifier_invariants(&id);
        }
    }

    /// Case does not matter and one trailing dot is dropped.
    #[test]
    fn names_are_case_folded_without_trailing_dot(name in dns_name()) {
        let lower = Identifier::parse(&name.to_ascii_lowercase()).unwrap();
        prop_assert_eq!(&Identifier::parse(&name.to_ascii_uppercase()).unwrap(), &lower);
        prop_assert_eq!(&Identifier::parse(&format!("{name}.")).unwrap(), &lower);
        prop_assert_eq!(lower.as_str(), name.to_ascii_lowercase());
        let two_dots = format!("{name}..");
        prop_assert!(Identifier::parse(&two_dots).is_err());
    }

    /// Internationalised labels become `xn--` punycode; the ASCII form
    /// parses to the same identifier; case of the Unicode input does not matter.
    #[test]
    fn internationalised_names_become_punycode(u in unicode_label(), rest in dns_name()) {
        let input = format!("{u}.{rest}");
        match Identifier::parse(&input) {
            Ok(id) => {
                let text = id.as_str().into_owned();
                prop_assert!(text.is_ascii());
                prop_assert!(text.starts_with("xn--"), "{}", text);
                prop_assert_eq!(Identifier::parse(&text).unwrap(), id.clone());
                prop_assert_eq!(Identifier::parse(&input.to_uppercase()).unwrap(), id.clone());
                let wild = Identifier::parse(&format!("*.{input}")).unwrap();
                prop_assert_eq!(wild.as_str(), format!("*.{text}"));
            }
            // A label IDNA refuses (mixed scripts, bidi rules) is a typed refusal.
            Err(e) => prop_assert!(
                matches!(e, NameError::Idna { .. } | NameError::LabelTooLong { .. } | NameError::TooLong { .. }),
                "{e:?}"
            ),
        }
    }

    /// identifier -> storage key -> identifier, and every key built from it
    /// passes every backend's key rules.
    #[test]
    fn storage_keys_round_trip(input in identifier_input()) {
        // Some Unicode inputs are refused by IDNA (bidi rules): nothing to key.
        let Ok(id) = Identifier::parse(&input) else { return Ok(()) };
        let key = id.storage_key();
        prop_assert_eq!(identifier_from_storage_key(&key), Some(id.clone()));
        for built in [
            keys::cert_record("acme-v02.api.letsencrypt.org-directory", &id),
            keys::retry_schedule(&id),
            keys::ocsp_staple(&id, b"der"),
            keys::challenge_record("dns-01", &key, "tok"),
        ] {
            prop_assert!(validate_key(&built).is_ok(), "{}", built);
            prop_assert!(!built.split('/').any(|c| c == "." || c == ".."));
        }
        // Lock names: FileStorage's file name, Redis's 1024-byte bound.
        let lock = keys::cert_lock(&id);
        prop_assert!(!lock.is_empty() && lock.len() <= 1024);
        let stem = lock_file_stem(&lock).unwrap();
        prop_assert!(!stem.contains(['/', '\\']));
    }

    /// Distinct identifiers never share a storage key.
    #[test]
    fn storage_keys_are_unique(inputs in prop::collection::vec(identifier_input(), 1..32)) {
        let mut seen: HashMap<String, Identifier> = HashMap::new();
        for input in inputs {
            let Ok(id) = Identifier::parse(&input) else { continue };
            if let Some(other) = seen.insert(id.storage_key(), id.clone()) {
                prop_assert_eq!(other, id);
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// An IPv6 address and the DNS name spelled like its key never share one.
    #[test]
    fn ipv6_addresses_and_their_dns_twins_have_distinct_keys(v6 in any::<u128>()) {
        let ip = Ipv6Addr::from(v6);
        let ip_id = Identifier::Ip(IpAddr::V6(ip));
        for twin in [
            format!("ipv6-{}", ip.to_string().replace(':', "-")),
            format!("ipv6_{}", ip.to_string().replace(':', "-")),
            ip_id.storage_key(),
        ] {
            if let Ok(dns) = Identifier::parse(&twin) {
                prop_assert_ne!(dns.storage_key(), ip_id.storage_key());
            }
        }
    }
}

/// The collision `normalisation_is_idempotent` and
/// `storage_keys_round_trip` found: an IPv6 address and the DNS name spelled
/// like its old storage key (`ipv6---1`) shared one key, so their
/// certificates, retry schedules, staples and locks were one.
#[test]
fn ipv6_keys_never_collide_with_dns_names() {
    let ip = Identifier::parse("::1").unwrap();
    let dns = Identifier::parse("ipv6---1").unwrap();
    assert!(matches!(dns, Identifier::Dns(_)));
    assert_ne!(ip.storage_key(), dns.storage_key());
    assert_eq!(identifier_from_storage_key(&ip.storage_key()), Some(ip));
    assert_eq!(identifier_from_storage_key(&dns.storage_key()), Some(dns));
}
