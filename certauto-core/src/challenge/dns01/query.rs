//! One DNS question to one server: UDP first, TCP when the answer is
//! truncated (or when asked), every exchange bounded in time and size.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// The EDNS payload size we advertise (the DNS Flag Day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;
/// The most datagrams read while waiting for the answer to our id.
const MAX_STRAY_DATAGRAMS: usize = 16;

/// Why a question got no usable answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueryError {
    /// No answer within the time allowed.
    #[error("{server}: no answer within {timeout:?}")]
    Timeout {
        server: SocketAddr,
        timeout: Duration,
    },
    /// A socket error.
    #[error("{server}: {source}")]
    Io {
        server: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The answer could not be decoded, or does not answer our question.
    #[error("{server}: malformed answer: {reason}")]
    Malformed { server: SocketAddr, reason: String },
    /// Datagrams came, but none was the answer to our message.
    #[error("{server}: none of {datagrams} datagram(s) answered our message")]
    Unanswered {
        server: SocketAddr,
        datagrams: usize,
    },
    /// The question could not be encoded (a name too long, say).
    #[error("cannot encode a query for {name}: {reason}")]
    Encode { name: String, reason: String },
}

/// An answer's response code and records, decoded.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) code: ResponseCode,
    pub(crate) message: Message,
}

impl Answer {
    /// The TXT values in the answer section (character-strings joined, as
    /// RFC 8555 §8.4 validators read them).
    pub(crate) fn txt_values(&self) -> Vec<String> {
        self.message
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|part| String::from_utf8_lossy(part))
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect()
    }

    /// The target of a CNAME owned by `name` in the answer section.
    pub(crate) fn cname_of(&self, name: &Name) -> Option<Name> {
        self.message.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(c) if &r.name == name => Some(c.0.clone()),
            _ => None,
        })
    }

    /// The zone `name` belongs to, by this answer: the deepest owner of an
    /// SOA record in the answer or authority section that encloses `name`
    /// (an answer that followed a CNAME may carry the target zone's SOA
    /// too, and an SOA of an unrelated zone says nothing about `name`).
    pub(crate) fn soa_owner(&self, name: &Name) -> Option<Name> {
        self.message
            .answers
            .iter()
            .chain(self.message.authorities.iter())
            .filter(|r| matches!(r.data, RData::SOA(_)) && r.name.zone_of(name))
            .map(|r| r.name.clone())
            .max_by_key(Name::num_labels)
    }

    /// The NS targets in the answer section.
    pub(crate) fn ns_names(&self) -> Vec<Name> {
        self.message
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::NS(ns) => Some(ns.0.clone()),
                _ => None,
            })
            .collect()
    }

    /// The A and AAAA addresses of `name` in the answer and additional sections.
    pub(crate) fn addresses_of(&self, name: &Name) -> Vec<std::net::IpAddr> {
        self.message
            .answers
            .iter()
            .chain(self.message.additionals.iter())
            .filter(|r| &r.name == name)
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(std::net::IpAddr::V6(a.0)),
                _ => None,
            })
            .collect()
    }
}

/// Asks `server` one question, with recursion desired or not, within `timeout`.
pub(crate) async fn ask(
    server: SocketAddr,
    name: &Name,
    record_type: RecordType,
    recursion: bool,
    timeout: Duration,
) -> Result<Answer, QueryError> {
    ask_over(server, name, record_type, recursion, timeout, false).await
}

/// Like [`ask`], over TCP from the start when `tcp_only` (for servers
/// reached only over TCP, such as the RFC 2136 provider's by default).
pub(crate) async fn ask_over(
    server: SocketAddr,
    name: &Name,
    record_type: RecordType,
    recursion: bool,
    timeout: Duration,
    tcp_only: bool,
) -> Result<Answer, QueryError> {
    let mut message = Message::query();
    message.metadata.recursion_desired = recursion;
    message.add_query(Query::query(name.clone(), record_type));
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    message.set_edns(edns);
    let id = message.metadata.id;
    let bytes = message.to_vec().map_err(|e| QueryError::Encode {
        name: name.to_ascii(),
        reason: e.to_string(),
    })?;
    let exchange = async {
        if tcp_only {
            let answer = tcp_exchange(server, &bytes).await?;
            return check_answer(server, answer, id, name, record_type);
        }
        let answer = udp_exchange(server, &bytes, id).await?;
        let answer = if answer.metadata.truncation {
            tcp_exchange(server, &bytes).await?
        } else {
            answer
        };
        check_answer(server, answer, id, name, record_type)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| QueryError::Timeout { server, timeout })?
}

fn check_answer(
    server: SocketAddr,
    message: Message,
    id: u16,
    name: &Name,
    record_type: RecordType,
) -> Result<Answer, QueryError> {
    let malformed = |reason: &str| QueryError::Malformed {
        server,
        reason: reason.to_owned(),
    };
    if message.metadata.id != id || message.metadata.message_type != MessageType::Response {
        return Err(malformed("not an answer to our query"));
    }
    match message.queries.first() {
        Some(q) if q.name() == name && q.query_type() == record_type => {}
        // Some servers omit the question in error answers.
        None if message.metadata.response_code != ResponseCode::NoError => {}
        _ => return Err(malformed("answers another question")),
    }
    Ok(Answer {
        code: message.metadata.response_code,
        message,
    })
}

async fn udp_exchange(server: SocketAddr, bytes: &[u8], id: u16) -> Result<Message, QueryError> {
    udp_exchange_until(server, bytes, |datagram| {
        Message::from_vec(datagram)
            .ok()
            .filter(|message| message.metadata.id == id)
    })
    .await
}

/// Sends `bytes` to `server` in one datagram, from a new socket connected
/// to it (so only datagrams from `server`'s address are read), and reads
/// datagrams until `ours` recognises the answer (returns `Some`): a late
/// answer to an earlier message, or a forgery, is skipped. At most
/// [`MAX_STRAY_DATAGRAMS`] are read; the caller bounds the time.
pub(crate) async fn udp_exchange_until<T>(
    server: SocketAddr,
    bytes: &[u8],
    mut ours: impl FnMut(&[u8]) -> Option<T>,
) -> Result<T, QueryError> {
    let io = |source| QueryError::Io { server, source };
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    socket.connect(server).await.map_err(io)?;
    socket.send(bytes).await.map_err(io)?;
    let mut buf = vec![0u8; 65_535];
    for _ in 0..MAX_STRAY_DATAGRAMS {
        let len = socket.recv(&mut buf).await.map_err(io)?;
        if let Some(answer) = ours(buf.get(..len).unwrap_or_default()) {
            return Ok(answer);
        }
    }
    Err(QueryError::Unanswered {
        server,
        datagrams: MAX_STRAY_DATAGRAMS,
    })
}

async fn tcp_exchange(server: SocketAddr, bytes: &[u8]) -> Result<Message, QueryError> {
    let buf = tcp_exchange_raw(server, bytes).await?;
    Message::from_vec(&buf).map_err(|e| QueryError::Malformed {
        server,
        reason: e.to_string(),
    })
}

/// Sends one message over a new TCP connection (RFC 1035 §4.2.2 framing)
/// and reads one message back, undecoded (at most 64 KiB, by the framing).
/// The caller bounds the time.
pub(crate) async fn tcp_exchange_raw(
    server: SocketAddr,
    bytes: &[u8],
) -> Result<Vec<u8>, QueryError> {
    let io = |source| QueryError::Io { server, source };
    let mut stream = TcpStream::connect(server).await.map_err(io)?;
    let len = u16::try_from(bytes.len()).map_err(|_| QueryError::Malformed {
        server,
        reason: "query too long for TCP".to_owned(),
    })?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.map_err(io)?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.map_err(io)?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await.map_err(io)?;
    Ok(buf)
}

/// The name servers of `/etc/resolv.conf` (at most three, as glibc reads),
/// on port 53; empty when the file is missing or names none.
pub(crate) fn system_resolvers() -> Vec<SocketAddr> {
    let Ok(text) = std::fs::read_to_string("/etc/resolv.conf") else {
        return Vec::new();
    };
    parse_resolv_conf(&text)
}

fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .take(1000)
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|ip| {
            // A scoped IPv6 address (`fe80::1%eth0`) cannot be used as is.
            ip.parse::<std::net::IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .take(3)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn resolv_conf() {
        let text = "# comment\nsearch example.com\nnameserver 10.0.0.1\nnameserver ::1\nnameserver fe80::1%eth0\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n";
        assert_eq!(
            parse_resolv_conf(text),
            [
                "10.0.0.1:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap(),
                "10.0.0.2:53".parse().unwrap(),
            ]
        );
    }

    #[test]
    fn the_soa_owner_encloses_the_name() {
        use hickory_proto::op::OpCode;
        use hickory_proto::rr::Record;
        use hickory_proto::rr::rdata::SOA;

        let name = |text: &str| Name::from_ascii(text).unwrap();
        let soa = |zone: &str| {
            let rdata = SOA::new(name("ns.test."), name("admin.test."), 1, 60, 60, 600, 1);
            Record::from_rdata(name(zone), 60, RData::SOA(rdata))
        };
        let answer = |answers: Vec<Record>, authorities: Vec<Record>| {
            let mut message = Message::response(1, OpCode::Query);
            message.add_answers(answers);
            message.add_authorities(authorities);
            Answer {
                code: ResponseCode::NoError,
                message,
            }
        };
        let asked = name("_acme-challenge.www.example.test.");
        // An unrelated zone's SOA first, then the enclosing zones'.
        let a = answer(
            vec![soa("other.test."), soa("example.test.")],
            vec![soa("www.example.test."), soa("deeper.www.example.test.")],
        );
        assert_eq!(a.soa_owner(&asked), Some(name("www.example.test.")));
        let a = answer(vec![soa("other.test.")], vec![soa("evil.example.")]);
        assert_eq!(a.soa_owner(&asked), None);
        assert_eq!(a.soa_owner(&name("other.test.")), Some(name("other.test.")));
    }

    #[tokio::test]
    async fn stray_datagrams_are_skipped_and_bounded() {
        // A server answering each datagram with `count` datagrams `0..count`.
        async fn server(count: u8) -> SocketAddr {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = socket.local_addr().unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 16];
                let (_, peer) = socket.recv_from(&mut buf).await.unwrap();
                for n in 0..count {
                    socket.send_to(&[n], peer).await.unwrap();
                }
            });
            addr
        }
        let wanted = |want: u8| move |d: &[u8]| (d == [want]).then_some(want);
        let addr = server(3).await;
        assert_eq!(udp_exchange_until(addr, b"q", wanted(2)).await.unwrap(), 2);
        let addr = server(20).await;
        let err = udp_exchange_until(addr, b"q", wanted(19))
            .await
            .unwrap_err();
        assert!(
            matches!(err, QueryError::Unanswered { datagrams, .. } if datagrams == MAX_STRAY_DATAGRAMS),
            "{err}"
        );
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        // A bound UDP socket that never answers.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let name = Name::from_ascii("example.test.").unwrap();
        let err = ask(
            addr,
            &name,
            RecordType::TXT,
            false,
            Duration::from_millis(50),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, QueryError::Timeout { .. }), "{err}");
    }
}
