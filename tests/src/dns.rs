//! A minimal DNS client over UDP and TCP, just enough to probe `pebble-challtestsrv`'s mock
//! DNS server (readiness) and to let tests check what Pebble will see (A and TXT lookups).
//!
//! Pebble's validation authority queries its `-dnsserver` over **TCP** (since Pebble 2.5),
//! so the harness checks both transports and [`Transport::Tcp`] is what "as Pebble would"
//! means.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// DNS record type A.
pub(crate) const TYPE_A: u16 = 1;
/// DNS record type TXT.
pub(crate) const TYPE_TXT: u16 = 16;

/// How a query travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// One datagram each way.
    Udp,
    /// RFC 1035 §4.2.2: each message prefixed by its two-byte length, one query per
    /// connection. Pebble's VA uses this.
    Tcp,
}

/// DNS record type SOA.
pub(crate) const TYPE_SOA: u16 = 6;

/// Sends one query for (`name`, `qtype`, class IN), recursion desired, and returns the
/// answer records as `(type, rdata)` pairs. `timeout` bounds the whole exchange.
pub(crate) async fn query(
    server: SocketAddr,
    name: &str,
    qtype: u16,
    transport: Transport,
    timeout: Duration,
) -> Result<Vec<(u16, Vec<u8>)>, String> {
    query_with(server, name, qtype, transport, timeout, true).await
}

/// Like [`query`], with recursion desired or not (`recursion: false` asks an
/// authoritative server for what it holds itself).
pub(crate) async fn query_with(
    server: SocketAddr,
    name: &str,
    qtype: u16,
    transport: Transport,
    timeout: Duration,
    recursion: bool,
) -> Result<Vec<(u16, Vec<u8>)>, String> {
    let mut id = [0u8; 2];
    SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| "system RNG failed".to_owned())?;

    let mut packet = Vec::with_capacity(64);
    packet.extend_from_slice(&id);
    // Standard query, with the RD bit as asked.
    packet.extend_from_slice(&[u8::from(recursion), 0x00]);
    packet.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // QDCOUNT=1, AN/NS/AR=0
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..=63).contains(l))
            .ok_or_else(|| format!("invalid DNS label {label:?} in {name:?}"))?;
        packet.push(len);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&[0, 1]); // class IN

    match transport {
        Transport::Udp => query_udp(server, &packet, id, timeout).await,
        Transport::Tcp => tokio::time::timeout(timeout, query_tcp(server, &packet, id))
            .await
            .map_err(|_| format!("no DNS answer over TCP from {server} within {timeout:?}"))?,
    }
}

async fn query_udp(
    server: SocketAddr,
    packet: &[u8],
    id: [u8; 2],
    timeout: Duration,
) -> Result<Vec<(u16, Vec<u8>)>, String> {
    // A connected socket, so that "port unreachable" surfaces at once as an error.
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind UDP socket: {e}"))?;
    socket
        .connect(server)
        .await
        .map_err(|e| format!("connect UDP socket to {server}: {e}"))?;
    socket
        .send(packet)
        .await
        .map_err(|e| format!("send DNS query to {server}: {e}"))?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let len = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| format!("no DNS answer from {server} within {timeout:?}"))?
            .map_err(|e| format!("receive DNS answer from {server}: {e}"))?;
        if len < 12 || buf[..2] != id {
            continue; // not our answer
        }
        return parse_answers(&buf[..len]);
    }
}

async fn query_tcp(
    server: SocketAddr,
    packet: &[u8],
    id: [u8; 2],
) -> Result<Vec<(u16, Vec<u8>)>, String> {
    let mut stream = TcpStream::connect(server)
        .await
        .map_err(|e| format!("connect to {server} (DNS over TCP): {e}"))?;
    let len = u16::try_from(packet.len()).map_err(|_| "DNS query too long".to_owned())?;
    let mut framed = Vec::with_capacity(packet.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(packet);
    stream
        .write_all(&framed)
        .await
        .map_err(|e| format!("send DNS query to {server} over TCP: {e}"))?;
    let mut len = [0u8; 2];
    stream
        .read_exact(&mut len)
        .await
        .map_err(|e| format!("receive DNS answer length from {server} over TCP: {e}"))?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream
        .read_exact(&mut msg)
        .await
        .map_err(|e| format!("receive DNS answer from {server} over TCP: {e}"))?;
    if msg.len() < 12 || msg[..2] != id {
        return Err(format!(
            "DNS answer over TCP from {server} has the wrong ID"
        ));
    }
    parse_answers(&msg)
}

fn parse_answers(msg: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, String> {
    let short = || "truncated DNS message".to_owned();
    let u16_at = |i: usize| -> Result<u16, String> {
        msg.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(short)
    };
    if msg[2] & 0x80 == 0 {
        return Err("DNS message is not a response".to_owned());
    }
    let rcode = msg[3] & 0x0f;
    if rcode != 0 && rcode != 3 {
        return Err(format!("DNS server answered with RCODE {rcode}"));
    }
    let qdcount = u16_at(4)?;
    let ancount = u16_at(6)?;
    let mut i = 12;
    for _ in 0..qdcount {
        i = skip_name(msg, i)? + 4;
    }
    let mut answers = Vec::with_capacity(usize::from(ancount));
    for _ in 0..ancount {
        i = skip_name(msg, i)?;
        let rtype = u16_at(i)?;
        let rdlen = usize::from(u16_at(i + 8)?);
        let rdata = msg.get(i + 10..i + 10 + rdlen).ok_or_else(short)?;
        answers.push((rtype, rdata.to_vec()));
        i += 10 + rdlen;
    }
    Ok(answers)
}

/// Returns the index just past the (possibly compressed) name starting at `i`.
fn skip_name(msg: &[u8], mut i: usize) -> Result<usize, String> {
    loop {
        let len = *msg.get(i).ok_or_else(|| "truncated DNS name".to_owned())?;
        if len == 0 {
            return Ok(i + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Ok(i + 2);
        }
        i += 1 + usize::from(len);
    }
}

/// IPv4 addresses from A answers.
pub(crate) fn a_records(answers: &[(u16, Vec<u8>)]) -> Vec<Ipv4Addr> {
    answers
        .iter()
        .filter(|(t, d)| *t == TYPE_A && d.len() == 4)
        .map(|(_, d)| Ipv4Addr::new(d[0], d[1], d[2], d[3]))
        .collect()
}

/// Texts from TXT answers (the character-strings of one record are concatenated).
pub(crate) fn txt_records(answers: &[(u16, Vec<u8>)]) -> Vec<String> {
    answers
        .iter()
        .filter(|(t, _)| *t == TYPE_TXT)
        .map(|(_, d)| {
            let mut text = Vec::new();
            let mut i = 0;
            while let Some(&len) = d.get(i) {
                let end = (i + 1 + usize::from(len)).min(d.len());
                text.extend_from_slice(&d[i + 1..end]);
                i = end;
            }
            String::from_utf8_lossy(&text).into_owned()
        })
        .collect()
}
