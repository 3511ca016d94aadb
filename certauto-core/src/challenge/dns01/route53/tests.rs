#![allow(clippy::unwrap_used)]
//! Route 53 against a stand-in: a loopback server that checks every request
//! as the Route 53 API reference specifies it (the SigV4 signature is
//! recomputed and compared, the XML body parsed and checked) and answers
//! with the documented XML, errors included.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::*;
use crate::challenge::dns01::standin::{Reply, Seen, StandIn};
use crate::clock::ManualClock;

const AKID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const TOKEN: &str = "session-token/EXAMPLE+==";
/// 2015-08-30T12:36:00Z.
const AT: u64 = 1_440_938_160;

fn at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(AT)
}

struct Zone {
    id: &'static str,
    name: &'static str,
    private: bool,
}

const ZONES: [Zone; 4] = [
    Zone {
        id: "Z1EXAMPLECOM",
        name: "example.com",
        private: false,
    },
    Zone {
        id: "Z2PRIVATESUB",
        name: "sub.example.com",
        private: true,
    },
    Zone {
        id: "Z3PUBLICSUB",
        name: "sub.example.com",
        private: false,
    },
    Zone {
        id: "Z4OTHER",
        name: "example.net",
        private: false,
    },
];

/// A canned failure the stand-in gives instead of its normal answer.
#[derive(Clone)]
struct Failure {
    status: u16,
    code: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    /// Fail only requests with this method (`None`: all).
    method: Option<&'static str>,
    /// A raw body instead of an `ErrorResponse`.
    raw: Option<&'static str>,
}

#[derive(Default)]
struct State {
    /// (zone id, name with dot) -> (ttl, values as sent).
    sets: BTreeMap<(String, String), (u32, Vec<String>)>,
    changes: u32,
    polls: BTreeMap<String, u32>,
    fail: Option<Failure>,
    /// Every check that failed, to show in the test's panic.
    problems: Vec<String>,
    token: Option<&'static str>,
    /// Another tool changes the set just before our next DELETE arrives.
    conflict_once: bool,
    /// Changes are INSYNC at the first `GetChange` (else at the second).
    insync_at_once: bool,
    /// Told of each `GetChange` answered.
    polled: Arc<tokio::sync::Notify>,
}

fn error_xml(code: &str, message: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>Sender</Type>\
         <Code>{code}</Code><Message>{message}</Message></Error>\
         <RequestId>b25f48e8-84fd-11e6-80d9-574e0c4664cb</RequestId></ErrorResponse>"
    )
}

fn xml_reply(body: String) -> Reply {
    Reply::text(200, "text/xml", body)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Labels reversed: Route 53's order for `ListHostedZonesByName`.
fn reversed(name: &str) -> String {
    name.trim_end_matches('.')
        .rsplit('.')
        .collect::<Vec<_>>()
        .join(".")
}

/// Checks the signature (and date, token) of a request; `None` when right.
fn check_signature(seen: &Seen, token: Option<&str>) -> Option<String> {
    if seen.header("x-amz-date") != "20150830T123600Z" {
        return Some(format!("x-amz-date {:?}", seen.header("x-amz-date")));
    }
    let sent_token = seen
        .headers
        .get("x-amz-security-token")
        .map(|v| v.to_str().unwrap());
    if sent_token != token {
        return Some(format!("session token {sent_token:?}"));
    }
    let pairs: Vec<(String, String)> = if seen.query().is_empty() {
        Vec::new()
    } else {
        seen.query()
            .split('&')
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect()
    };
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let expected = sigv4::sign(
        &sigv4::Credentials {
            access_key_id: AKID,
            secret_access_key: SECRET,
            session_token: token,
            region: "us-east-1",
            service: "route53",
        },
        &sigv4::Request {
            method: &seen.method,
            host: seen.header("host"),
            path: &percent_decode(seen.path()),
            query: &pairs,
            headers: &[],
            payload: &seen.body,
        },
        at(),
    );
    (seen.header("authorization") != expected.authorization)
        .then(|| format!("authorization {:?}", seen.header("authorization")))
}

/// The stand-in's answer to one request.
fn answer(state: &mut State, seen: &Seen) -> Reply {
    if let Some(problem) = check_signature(seen, state.token) {
        state.problems.push(problem);
        return Reply::text(
            403,
            "text/xml",
            error_xml(
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            ),
        );
    }
    if let Some(fail) = state.fail.clone()
        && fail.method.is_none_or(|m| m == seen.method)
    {
        let body = fail
            .raw
            .map(str::to_owned)
            .unwrap_or_else(|| error_xml(fail.code, "canned failure"));
        let mut reply = Reply::text(fail.status, "text/xml", body);
        for (k, v) in fail.headers {
            reply = reply.header(k, v);
        }
        return reply;
    }
    let query: BTreeMap<String, String> = seen
        .query()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let path = seen.path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (seen.method.as_str(), parts.as_slice()) {
        ("GET", ["2013-04-01", "hostedzonesbyname"]) => {
            let dnsname = query.get("dnsname").cloned().unwrap_or_default();
            if query.get("maxitems").map(String::as_str) != Some("100") {
                state.problems.push(format!("maxitems {query:?}"));
            }
            let mut zones: Vec<&Zone> = ZONES
                .iter()
                .filter(|z| reversed(z.name) >= reversed(&dnsname))
                .collect();
            zones.sort_by_key(|z| reversed(z.name));
            let items: String = zones
                .iter()
                .map(|z| {
                    format!(
                        "<HostedZone><Id>/hostedzone/{}</Id><Name>{}.</Name>\
                         <CallerReference>ref</CallerReference><Config><Comment>c</Comment>\
                         <PrivateZone>{}</PrivateZone></Config>\
                         <ResourceRecordSetCount>3</ResourceRecordSetCount></HostedZone>",
                        z.id, z.name, z.private
                    )
                })
                .collect();
            xml_reply(format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
                 <ListHostedZonesByNameResponse xmlns=\"{XMLNS}\"><HostedZones>{items}</HostedZones>\
                 <DNSName>{dnsname}</DNSName><IsTruncated>false</IsTruncated><MaxItems>100</MaxItems>\
                 </ListHostedZonesByNameResponse>"
            ))
        }
        ("GET", ["2013-04-01", "hostedzone", zone, "rrset"]) => {
            if !ZONES.iter().any(|z| z.id == *zone) {
                return Reply::text(
                    404,
                    "text/xml",
                    error_xml("NoSuchHostedZone", "No hosted zone found"),
                );
            }
            let name = query.get("name").cloned().unwrap_or_default();
            if query.get("type").map(String::as_str) != Some("TXT")
                || query.get("maxitems").map(String::as_str) != Some("1")
                || !name.ends_with('.')
            {
                state.problems.push(format!("rrset query {query:?}"));
            }
            // The list starts at (name, TXT): ours if it exists, else the
            // next set in the zone (here always an unrelated A record).
            let set = match state.sets.get(&(zone.to_string(), name.clone())) {
                Some((ttl, values)) => {
                    let records: String = values
                        .iter()
                        .map(|v| format!("<ResourceRecord><Value>{}</Value></ResourceRecord>", xml::escape(v)))
                        .collect();
                    format!(
                        "<ResourceRecordSet><Name>{name}</Name><Type>TXT</Type><TTL>{ttl}</TTL>\
                         <ResourceRecords>{records}</ResourceRecords></ResourceRecordSet>"
                    )
                }
                None => "<ResourceRecordSet><Name>\\052.zzz.example.com.</Name><Type>A</Type><TTL>300</TTL>\
                         <ResourceRecords><ResourceRecord><Value>192.0.2.1</Value></ResourceRecord>\
                         </ResourceRecords></ResourceRecordSet>"
                    .to_owned(),
            };
            xml_reply(format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
                 <ListResourceRecordSetsResponse xmlns=\"{XMLNS}\"><ResourceRecordSets>{set}</ResourceRecordSets>\
                 <IsTruncated>false</IsTruncated><MaxItems>1</MaxItems></ListResourceRecordSetsResponse>"
            ))
        }
        ("POST", ["2013-04-01", "hostedzone", zone, "rrset", ""]) => {
            if !seen.header("content-type").contains("xml") {
                state
                    .problems
                    .push(format!("content type {:?}", seen.header("content-type")));
            }
            let Ok(root) = xml::parse(&seen.body) else {
                state
                    .problems
                    .push(format!("body not XML: {}", seen.text()));
                return Reply::text(400, "text/xml", error_xml("InvalidInput", "bad XML"));
            };
            let change = root.at(&["ChangeBatch", "Changes", "Change"]);
            let (Some(change), "ChangeResourceRecordSetsRequest") = (change, root.name.as_str())
            else {
                state.problems.push(format!("body shape: {}", seen.text()));
                return Reply::text(400, "text/xml", error_xml("InvalidInput", "bad request"));
            };
            let action = change.text_at(&["Action"]).unwrap_or_default();
            let name = change
                .text_at(&["ResourceRecordSet", "Name"])
                .unwrap_or_default()
                .to_owned();
            let ttl: u32 = change
                .text_at(&["ResourceRecordSet", "TTL"])
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            let values: Vec<String> = change
                .at(&["ResourceRecordSet", "ResourceRecords"])
                .map(|r| {
                    r.children("ResourceRecord")
                        .filter_map(|r| r.text_at(&["Value"]))
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            if change.text_at(&["ResourceRecordSet", "Type"]) != Some("TXT")
                || ttl == 0
                || values.is_empty()
                || values
                    .iter()
                    .any(|v| !(v.starts_with('"') && v.ends_with('"')))
                || !name.ends_with('.')
            {
                state.problems.push(format!("change: {}", seen.text()));
                return Reply::text(400, "text/xml", error_xml("InvalidInput", "bad change"));
            }
            let key = (zone.to_string(), name.clone());
            match action {
                "UPSERT" => {
                    state.sets.insert(key, (ttl, values));
                }
                "DELETE" => {
                    if std::mem::take(&mut state.conflict_once)
                        && let Some(set) = state.sets.get_mut(&key)
                    {
                        set.0 += 1;
                    }
                    if state.sets.get(&key) != Some(&(ttl, values)) {
                        return Reply::text(
                            400,
                            "text/xml",
                            format!(
                                "<?xml version=\"1.0\"?>\n<InvalidChangeBatch xmlns=\"{XMLNS}\"><Messages>\
                                 <Message>Tried to delete resource record set [name='{name}', type='TXT'] \
                                 but the values provided do not match the current values</Message>\
                                 </Messages></InvalidChangeBatch>"
                            ),
                        );
                    }
                    state.sets.remove(&key);
                }
                other => state.problems.push(format!("action {other}")),
            }
            state.changes += 1;
            xml_reply(format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
                 <ChangeResourceRecordSetsResponse xmlns=\"{XMLNS}\"><ChangeInfo>\
                 <Comment>certauto DNS-01</Comment><Id>/change/C{}EXAMPLE</Id><Status>PENDING</Status>\
                 <SubmittedAt>2015-08-30T12:36:00.000Z</SubmittedAt></ChangeInfo>\
                 </ChangeResourceRecordSetsResponse>",
                state.changes
            ))
        }
        ("GET", ["2013-04-01", "change", id]) => {
            let polls = state.polls.entry(id.to_string()).or_default();
            *polls += 1;
            let status = if *polls >= 2 || state.insync_at_once {
                "INSYNC"
            } else {
                "PENDING"
            };
            state.polled.notify_one();
            xml_reply(format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<GetChangeResponse xmlns=\"{XMLNS}\">\
                 <ChangeInfo><Id>/change/{id}</Id><Status>{status}</Status>\
                 <SubmittedAt>2015-08-30T12:36:00.000Z</SubmittedAt></ChangeInfo></GetChangeResponse>"
            ))
        }
        _ => {
            state
                .problems
                .push(format!("unexpected {} {}", seen.method, seen.target));
            Reply::text(404, "text/xml", error_xml("NotFound", "no such resource"))
        }
    }
}

struct Fixture {
    server: StandIn,
    state: Arc<Mutex<State>>,
}

impl Fixture {
    async fn start() -> Self {
        Self::start_with_token(None).await
    }

    async fn start_with_token(token: Option<&'static str>) -> Self {
        let state = Arc::new(Mutex::new(State {
            token,
            ..State::default()
        }));
        let server = StandIn::start({
            let state = state.clone();
            move |seen: &Seen| answer(&mut state.lock().unwrap(), seen)
        })
        .await;
        Fixture { server, state }
    }

    fn builder(&self) -> Route53Builder {
        Route53::builder(AKID, SECRET)
            .api_url(self.server.url())
            .clock(Arc::new(ManualClock::new(at())))
            .sync_polling(Duration::from_millis(1), 5)
    }

    fn provider(&self) -> Route53 {
        self.builder().build().unwrap()
    }

    /// The values at `name.` in `zone`, decoded.
    fn values(&self, zone: &str, name: &str) -> Vec<String> {
        let state = self.state.lock().unwrap();
        let mut values: Vec<String> = state
            .sets
            .get(&(zone.to_owned(), format!("{name}.")))
            .map(|(_, v)| v.iter().map(|v| unquote_txt(v)).collect())
            .unwrap_or_default();
        values.sort();
        values
    }

    fn fail(&self, failure: Option<Failure>) {
        self.state.lock().unwrap().fail = failure;
    }

    fn assert_no_problems(&self) {
        let state = self.state.lock().unwrap();
        assert!(
            state.problems.is_empty(),
            "stand-in saw: {:#?}",
            state.problems
        );
    }
}

fn failure(status: u16, code: &'static str) -> Failure {
    Failure {
        status,
        code,
        headers: Vec::new(),
        method: None,
        raw: None,
    }
}

#[tokio::test]
async fn adds_and_removes_exact_values_in_the_longest_public_zone() {
    let fx = Fixture::start().await;
    let dns = fx.provider();
    let name = "_acme-challenge.www.sub.example.com";
    // A value of another tool is already there.
    fx.state.lock().unwrap().sets.insert(
        ("Z3PUBLICSUB".into(), format!("{name}.")),
        (300, vec!["\"other tool\"".into()]),
    );
    dns.create_txt_record(name, "value-one").await.unwrap();
    dns.create_txt_record(&format!("{name}."), "value-one")
        .await
        .unwrap();
    dns.create_txt_record(name, "value-two").await.unwrap();
    assert_eq!(
        fx.values("Z3PUBLICSUB", name),
        ["other tool", "value-one", "value-two"]
    );
    // The existing TTL is kept.
    assert_eq!(
        fx.state.lock().unwrap().sets[&("Z3PUBLICSUB".to_owned(), format!("{name}."))].0,
        300
    );
    dns.delete_txt_record(name, "value-one").await.unwrap();
    dns.delete_txt_record(name, "value-one").await.unwrap();
    assert_eq!(fx.values("Z3PUBLICSUB", name), ["other tool", "value-two"]);
    dns.delete_txt_record(name, "value-two").await.unwrap();
    assert_eq!(fx.values("Z3PUBLICSUB", name), ["other tool"]);
    fx.assert_no_problems();
    // The change was polled until INSYNC (PENDING, then INSYNC).
    let seen = fx.server.seen();
    assert!(
        seen.iter()
            .any(|s| s.path().starts_with("/2013-04-01/change/C"))
    );
    // The zone was looked up once per name and then remembered.
    let lookups = seen
        .iter()
        .filter(|s| s.path() == "/2013-04-01/hostedzonesbyname")
        .count();
    assert_eq!(
        lookups, 3,
        "the name itself, www.sub.example.com, then sub.example.com, once"
    );
}

#[tokio::test]
async fn last_value_is_deleted_with_the_exact_set_and_new_sets_get_the_ttl() {
    let fx = Fixture::start().await;
    let dns = fx.builder().ttl(120).build().unwrap();
    let name = "_acme-challenge.example.com";
    dns.create_txt_record(name, "only").await.unwrap();
    assert_eq!(
        fx.state.lock().unwrap().sets[&("Z1EXAMPLECOM".to_owned(), format!("{name}."))],
        (120, vec!["\"only\"".to_owned()])
    );
    dns.delete_txt_record(name, "only").await.unwrap();
    assert!(fx.state.lock().unwrap().sets.is_empty());
    let posts: Vec<String> = fx
        .server
        .seen()
        .iter()
        .filter(|s| s.method == "POST")
        .map(Seen::text)
        .collect();
    assert!(posts[0].contains("<Action>UPSERT</Action>"), "{}", posts[0]);
    assert!(posts[1].contains("<Action>DELETE</Action>"), "{}", posts[1]);
    assert!(
        posts[1].contains(
            "<Name>_acme-challenge.example.com.</Name><Type>TXT</Type><TTL>120</TTL>\
             <ResourceRecords><ResourceRecord><Value>&quot;only&quot;</Value></ResourceRecord>"
        ),
        "{}",
        posts[1]
    );
    fx.assert_no_problems();
}

#[tokio::test]
async fn concurrent_values_at_one_name_are_all_kept() {
    let fx = Fixture::start_with_token(Some(TOKEN)).await;
    let dns = fx.builder().session_token(TOKEN).build().unwrap();
    let name = "_acme-challenge.example.net";
    let values: Vec<String> = (0..6).map(|i| format!("value-{i}")).collect();
    let creates = values.iter().map(|v| dns.create_txt_record(name, v));
    for result in futures_util::future::join_all(creates).await {
        result.unwrap();
    }
    assert_eq!(fx.values("Z4OTHER", name), values);
    let deletes = values[..3].iter().map(|v| dns.delete_txt_record(name, v));
    for result in futures_util::future::join_all(deletes).await {
        result.unwrap();
    }
    assert_eq!(fx.values("Z4OTHER", name), values[3..]);
    assert_eq!(dns.inner.locks.live(), 0);
    fx.assert_no_problems();
}

#[tokio::test]
async fn a_set_changed_by_someone_else_is_read_again_before_deleting() {
    let fx = Fixture::start().await;
    let dns = fx.provider();
    let name = "_acme-challenge.example.com";
    dns.create_txt_record(name, "ours").await.unwrap();
    // Another tool changes the TTL between our read and our DELETE: the
    // DELETE no longer matches, so the set is read again and deleted.
    fx.state.lock().unwrap().conflict_once = true;
    dns.delete_txt_record(name, "ours").await.unwrap();
    assert!(fx.state.lock().unwrap().sets.is_empty());
    let deletes = fx
        .server
        .seen()
        .iter()
        .filter(|s| s.text().contains("<Action>DELETE</Action>"))
        .count();
    assert_eq!(deletes, 2);
    fx.assert_no_problems();
}

/// A change waiting for INSYNC (polled once, PENDING, then a long pause)
/// does not hold the name: another value at the name is written meanwhile.
#[tokio::test]
async fn waiting_for_insync_does_not_hold_the_name() {
    let fx = Fixture::start().await;
    let dns = fx
        .builder()
        .sync_polling(Duration::from_secs(3600), 3)
        .build()
        .unwrap();
    let name = "_acme-challenge.example.com";
    let polled = fx.state.lock().unwrap().polled.clone();
    let first = tokio::spawn({
        let dns = dns.clone();
        async move { dns.create_txt_record(name, "first").await }
    });
    polled.notified().await;
    fx.state.lock().unwrap().insync_at_once = true;
    // Bounded: without the fix this waits for the first call's hour.
    tokio::time::timeout(
        Duration::from_secs(30),
        dns.create_txt_record(name, "second"),
    )
    .await
    .expect("the name was held while waiting for INSYNC")
    .unwrap();
    assert_eq!(fx.values("Z1EXAMPLECOM", name), ["first", "second"]);
    first.abort();
    fx.assert_no_problems();
}

/// A zone that is gone (`NoSuchHostedZone`) is looked up again next time.
#[tokio::test]
async fn a_vanished_zone_is_forgotten() {
    let fx = Fixture::start().await;
    let dns = fx.provider();
    let name = "_acme-challenge.example.com";
    let lookups = || {
        fx.server
            .seen()
            .iter()
            .filter(|s| s.path() == "/2013-04-01/hostedzonesbyname")
            .count()
    };
    dns.create_txt_record(name, "one").await.unwrap();
    assert_eq!(lookups(), 2);
    dns.create_txt_record(name, "two").await.unwrap();
    assert_eq!(lookups(), 2, "remembered");
    fx.fail(Some(failure(404, "NoSuchHostedZone")));
    let err = dns.delete_txt_record(name, "one").await.unwrap_err();
    assert!(matches!(err, DnsError::ZoneNotFound { .. }), "{err:?}");
    fx.fail(None);
    dns.delete_txt_record(name, "one").await.unwrap();
    assert_eq!(lookups(), 4, "looked up again");
    assert_eq!(fx.values("Z1EXAMPLECOM", name), ["two"]);
    fx.assert_no_problems();
}

#[tokio::test]
async fn unknown_zones_and_missing_configured_zones() {
    let fx = Fixture::start().await;
    let err = fx
        .provider()
        .create_txt_record("_acme-challenge.example.org", "v")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::ZoneNotFound { .. }), "{err:?}");
    let err = fx
        .builder()
        .hosted_zone_id("/hostedzone/ZNOSUCHZONE")
        .build()
        .unwrap()
        .create_txt_record("_acme-challenge.example.com", "v")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::ZoneNotFound { .. }), "{err:?}");
    // A configured zone is used without a lookup.
    let dns = fx.builder().hosted_zone_id("Z1EXAMPLECOM").build().unwrap();
    dns.create_txt_record("_acme-challenge.a.example.com", "v")
        .await
        .unwrap();
    assert_eq!(
        fx.values("Z1EXAMPLECOM", "_acme-challenge.a.example.com"),
        ["v"]
    );
    fx.assert_no_problems();
}

#[tokio::test]
async fn errors_are_typed() {
    let fx = Fixture::start().await;
    let dns = fx.provider();
    let name = "_acme-challenge.example.com";
    type Check = fn(&DnsError) -> bool;
    let cases: Vec<(Failure, Check)> = vec![
        (failure(403, "AccessDenied"), |e| {
            matches!(e, DnsError::AuthRefused { .. })
        }),
        (failure(403, "InvalidClientTokenId"), |e| {
            matches!(e, DnsError::AuthRefused { .. })
        }),
        (
            Failure {
                headers: vec![("retry-after", "3")],
                ..failure(400, "Throttling")
            },
            |e| matches!(e, DnsError::RateLimited { retry_after: Some(d), .. } if d.as_secs() == 3),
        ),
        (failure(400, "PriorRequestNotComplete"), |e| {
            matches!(e, DnsError::Transient { .. })
        }),
        (failure(503, "ServiceUnavailable"), |e| {
            matches!(e, DnsError::Transient { .. })
        }),
        (
            failure(400, "InvalidInput"),
            |e| matches!(e, DnsError::Rejected { status: Some(400), detail, .. } if detail.contains("InvalidInput")),
        ),
        (
            Failure {
                raw: Some("<html>gateway</html"),
                ..failure(502, "")
            },
            |e| matches!(e, DnsError::Transient { .. }),
        ),
        (
            Failure {
                raw: Some("<html><body>not route 53</body></html>"),
                ..failure(200, "")
            },
            |e| matches!(e, DnsError::Rejected { .. }),
        ),
        (
            Failure {
                raw: Some(
                    "<ListHostedZonesByNameResponse><Nothing/></ListHostedZonesByNameResponse>",
                ),
                ..failure(200, "")
            },
            |e| matches!(e, DnsError::Rejected { .. }),
        ),
        (
            Failure {
                raw: Some("\u{0}\u{1}binary"),
                ..failure(200, "")
            },
            |e| matches!(e, DnsError::Rejected { .. }),
        ),
    ];
    for (fail, expected) in cases {
        let code = fail.code;
        fx.fail(Some(fail));
        let err = dns.create_txt_record(name, "v").await.unwrap_err();
        assert!(expected(&err), "{code}: {err:?}");
        assert!(!err.to_string().contains(SECRET));
    }
    // A failing POST after a good read, and a malformed change answer.
    fx.fail(Some(Failure {
        method: Some("POST"),
        ..failure(400, "Throttling")
    }));
    let err = dns.create_txt_record(name, "v").await.unwrap_err();
    assert!(matches!(err, DnsError::RateLimited { .. }), "{err:?}");
    fx.fail(None);
    fx.assert_no_problems();
}

#[tokio::test]
async fn wrong_credentials_are_refused_and_secrets_stay_hidden() {
    let fx = Fixture::start_with_token(Some(TOKEN)).await;
    let wrong = Route53::builder(AKID, "not-the-secret")
        .api_url(fx.server.url())
        .session_token(TOKEN)
        .clock(Arc::new(ManualClock::new(at())))
        .build()
        .unwrap();
    let err = wrong
        .create_txt_record("_acme-challenge.example.com", "v")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::AuthRefused { .. }), "{err:?}");
    assert!(err.to_string().contains("SignatureDoesNotMatch"), "{err}");
    for shown in [
        format!("{wrong:?}"),
        format!("{:?}", fx.builder().session_token(TOKEN)),
        err.to_string(),
    ] {
        assert!(!shown.contains("not-the-secret"), "{shown}");
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(!shown.contains(TOKEN), "{shown}");
    }
    // Settings checked at build.
    for bad in [
        Route53::builder("", SECRET).build(),
        Route53::builder(AKID, "").build(),
        Route53::builder(AKID, SECRET)
            .hosted_zone_id("Z1/../x")
            .build(),
        Route53::builder(AKID, SECRET)
            .api_url("http://route53.example.com")
            .build(),
        Route53::builder(AKID, SECRET)
            .session_token("tok\r\nen")
            .build(),
    ] {
        assert!(matches!(bad, Err(DnsError::Config { .. })), "{bad:?}");
    }
}

#[test]
fn txt_values_are_quoted_as_route53_requires() {
    assert_eq!(quote_txt("abc"), "\"abc\"");
    assert_eq!(quote_txt(r#"a"b\c"#), r#""a\"b\\c""#);
    assert_eq!(quote_txt("é\t"), "\"\\303\\251\\011\"");
    let long = "x".repeat(300);
    let quoted = quote_txt(&long);
    assert_eq!(
        quoted,
        format!("\"{}\" \"{}\"", "x".repeat(255), "x".repeat(45))
    );
    for value in ["abc", r#"a"b\c"#, "é\t", &long, "with space", ""] {
        assert_eq!(unquote_txt(&quote_txt(value)), value);
    }
    assert_eq!(plain_name("\\052.Example.COM."), "*.example.com");
}
