//! Checks every HTTP provider's tests run against its stand-in: the
//! [`DnsProvider`] contract (exact values, concurrency, idempotence) and the
//! mapping of HTTP failures to [`DnsError`].
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::provider::{DnsError, DnsProvider};
use super::standin::Reply;

/// A value another tool keeps at the name; the provider must leave it alone.
pub(crate) const OTHER: &str = "kept-by-another-tool";
/// Two DNS-01 values (43 base64url characters), as for a wildcard and its apex.
pub(crate) const V1: &str = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
pub(crate) const V2: &str = "9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI";

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn expect(values: &[&str]) -> Vec<String> {
    sorted(values.iter().map(|v| (*v).to_owned()).collect())
}

/// Runs the exact-value contract at `fqdn`, where `read` lists the values
/// the stand-in holds there and [`OTHER`] is already present.
pub(crate) async fn exact_values(
    provider: &dyn DnsProvider,
    fqdn: &str,
    read: impl Fn() -> Vec<String>,
) {
    assert_eq!(sorted(read()), expect(&[OTHER]), "the test seeds OTHER");

    // A wildcard and its apex: two values at one name, written at once.
    let (a, b) = tokio::join!(
        provider.create_txt_record(fqdn, V1),
        provider.create_txt_record(fqdn, V2)
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(sorted(read()), expect(&[OTHER, V1, V2]));

    // Idempotent create.
    provider.create_txt_record(fqdn, V1).await.unwrap();
    assert_eq!(sorted(read()), expect(&[OTHER, V1, V2]));

    // Exactly one value removed; idempotent delete.
    provider.delete_txt_record(fqdn, V1).await.unwrap();
    assert_eq!(sorted(read()), expect(&[OTHER, V2]));
    provider.delete_txt_record(fqdn, V1).await.unwrap();
    assert_eq!(sorted(read()), expect(&[OTHER, V2]));

    // A delete and a create at once.
    let (a, b) = tokio::join!(
        provider.delete_txt_record(fqdn, V2),
        provider.create_txt_record(fqdn, V1)
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(sorted(read()), expect(&[OTHER, V1]));

    // Both removed at once: the other tool's value stays.
    provider.create_txt_record(fqdn, V2).await.unwrap();
    let (a, b) = tokio::join!(
        provider.delete_txt_record(fqdn, V1),
        provider.delete_txt_record(fqdn, V2)
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(sorted(read()), expect(&[OTHER]));
}

/// Every request answered with `rate_limited` (a 429 with `Retry-After: 7`),
/// then `server_error` (a 5xx), then a malformed success: typed errors,
/// never a panic. `answer_all` makes the stand-in answer every request so.
pub(crate) async fn http_failures(
    provider: &dyn DnsProvider,
    fqdn: &str,
    answer_all: impl Fn(Option<Reply>),
    rate_limited: Reply,
    server_error: Reply,
) {
    answer_all(Some(rate_limited));
    for result in [
        provider.create_txt_record(fqdn, V1).await,
        provider.delete_txt_record(fqdn, V1).await,
    ] {
        match result {
            Err(DnsError::RateLimited { retry_after, .. }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)));
            }
            other => panic!("expected RateLimited, got {other:?}"),
        }
    }

    answer_all(Some(server_error));
    let err = provider.create_txt_record(fqdn, V1).await.unwrap_err();
    assert!(
        matches!(err, DnsError::Transient { .. }) && err.is_retryable(),
        "{err:?}"
    );

    for body in ["{not json", "42", "{\"unexpected\": true}"] {
        answer_all(Some(Reply::text(200, "application/json", body)));
        let err = provider.create_txt_record(fqdn, V1).await.unwrap_err();
        assert!(
            matches!(err, DnsError::Rejected { .. }),
            "{body}: expected Rejected, got {err:?}"
        );
        let err = provider.delete_txt_record(fqdn, V1).await.unwrap_err();
        assert!(
            matches!(err, DnsError::Rejected { .. }),
            "{body}: expected Rejected, got {err:?}"
        );
    }
    answer_all(None);
}
