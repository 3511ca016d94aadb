//! Just enough DER (X.690): the one writer (PKCS#8 wrapping, OCSP requests)
//! and, for OCSP, a bounds-checked reader, the tags and object identifiers
//! used, and GeneralizedTime.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::OcspError;

pub(crate) const INTEGER: u8 = 0x02;
pub(crate) const BIT_STRING: u8 = 0x03;
pub(crate) const OCTET_STRING: u8 = 0x04;
pub(crate) const NULL: u8 = 0x05;
pub(crate) const OID: u8 = 0x06;
pub(crate) const ENUMERATED: u8 = 0x0a;
pub(crate) const GENERALIZED_TIME: u8 = 0x18;
pub(crate) const SEQUENCE: u8 = 0x30;
pub(crate) const CONTEXT_0: u8 = 0xa0;
pub(crate) const CONTEXT_1: u8 = 0xa1;
pub(crate) const CONTEXT_2: u8 = 0xa2;
/// `good [0] IMPLICIT NULL`.
pub(crate) const GOOD: u8 = 0x80;
/// `revoked [1] IMPLICIT RevokedInfo`.
pub(crate) const REVOKED: u8 = 0xa1;
/// `unknown [2] IMPLICIT UnknownInfo`.
pub(crate) const UNKNOWN: u8 = 0x82;

/// 1.3.14.3.2.26
pub(crate) const SHA1_OID: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
/// 2.16.840.1.101.3.4.2.1
pub(crate) const SHA256_OID: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
/// 1.3.6.1.5.5.7.48.1.1 (id-pkix-ocsp-basic)
pub(crate) const OCSP_BASIC_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
/// 1.2.840.113549.1.1.1
pub(crate) const RSA_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// 1.2.840.113549.1.1.11
pub(crate) const RSA_SHA256_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
/// 1.2.840.113549.1.1.12
pub(crate) const RSA_SHA384_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
/// 1.2.840.113549.1.1.13
pub(crate) const RSA_SHA512_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
/// 1.2.840.10045.2.1
pub(crate) const EC_OID: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// 1.2.840.10045.3.1.7
pub(crate) const P256_OID: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// 1.3.132.0.34
pub(crate) const P384_OID: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
/// 1.2.840.10045.4.3.2
pub(crate) const ECDSA_SHA256_OID: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
/// 1.2.840.10045.4.3.3
pub(crate) const ECDSA_SHA384_OID: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];

/// A DER TLV with a one-byte tag and a definite length.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// One element read by [`Reader`].
pub(crate) struct Tlv<'a> {
    pub(crate) tag: u8,
    pub(crate) content: &'a [u8],
    pub(crate) raw: &'a [u8],
}

/// A bounds-checked DER reader over a slice (one-byte tags, definite lengths).
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { rest: data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub(crate) fn end(&self) -> Result<(), OcspError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(OcspError::Malformed("unexpected trailing data"))
        }
    }

    pub(crate) fn next(&mut self) -> Result<Tlv<'a>, OcspError> {
        const TRUNCATED: OcspError = OcspError::Malformed("truncated DER");
        let data = self.rest;
        let (&tag, after_tag) = data.split_first().ok_or(TRUNCATED)?;
        if tag & 0x1f == 0x1f {
            return Err(OcspError::Malformed("multi-byte DER tag"));
        }
        let (&first, after_len) = after_tag.split_first().ok_or(TRUNCATED)?;
        let (len, body) = if first < 0x80 {
            (usize::from(first), after_len)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return Err(OcspError::Malformed("unsupported DER length"));
            }
            let digits = after_len.get(..n).ok_or(TRUNCATED)?;
            let len = digits
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            if len < 0x80 || digits.first() == Some(&0) {
                return Err(OcspError::Malformed("non-minimal DER length"));
            }
            (len, after_len.get(n..).ok_or(TRUNCATED)?)
        };
        let content = body.get(..len).ok_or(TRUNCATED)?;
        let header = data.len() - body.len();
        let raw = data.get(..header + len).ok_or(TRUNCATED)?;
        self.rest = body.get(len..).ok_or(TRUNCATED)?;
        Ok(Tlv { tag, content, raw })
    }

    /// The content of the next element, which must have `tag`.
    pub(crate) fn expect(&mut self, tag: u8) -> Result<&'a [u8], OcspError> {
        let el = self.next()?;
        if el.tag == tag {
            Ok(el.content)
        } else {
            Err(OcspError::Malformed("unexpected DER tag"))
        }
    }

    /// The content of the next element if it has `tag`; nothing is consumed otherwise.
    pub(crate) fn optional(&mut self, tag: u8) -> Result<Option<&'a [u8]>, OcspError> {
        if self.rest.first() == Some(&tag) {
            self.expect(tag).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// The content of `data`'s only element, which must have `tag`.
pub(crate) fn sole(data: &[u8], tag: u8) -> Result<&[u8], OcspError> {
    let mut r = Reader::new(data);
    let content = r.expect(tag)?;
    r.end()?;
    Ok(content)
}

/// A reader over the content of `data`'s only element, which must have `tag`.
pub(crate) fn inside(data: &[u8], tag: u8) -> Result<Reader<'_>, OcspError> {
    sole(data, tag).map(Reader::new)
}

/// The bits of a BIT STRING with no unused bits.
pub(crate) fn bit_string(content: &[u8]) -> Result<&[u8], OcspError> {
    match content.split_first() {
        Some((0, bits)) => Ok(bits),
        _ => Err(OcspError::Malformed("BIT STRING")),
    }
}

/// `YYYYMMDDHHMMSS[.f+]Z` (RFC 5280 §4.1.2.5.2 asks for no fraction; some
/// responders add one).
pub(crate) fn generalized_time(content: &[u8]) -> Result<SystemTime, OcspError> {
    const BAD: OcspError = OcspError::Malformed("GeneralizedTime");
    let s = std::str::from_utf8(content).map_err(|_| BAD)?;
    let s = s.strip_suffix('Z').ok_or(BAD)?;
    let (main, fraction) = s.split_once('.').unwrap_or((s, "0"));
    if main.len() != 14
        || fraction.is_empty()
        || !main.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(BAD);
    }
    let num = |r: std::ops::Range<usize>| main.get(r).and_then(|d| d.parse::<u16>().ok());
    let (Some(year), Some(month), Some(day), Some(hour), Some(min), Some(sec)) = (
        num(0..4),
        num(4..6),
        num(6..8),
        num(8..10),
        num(10..12),
        num(12..14),
    ) else {
        return Err(BAD);
    };
    let month = time::Month::try_from(u8::try_from(month).map_err(|_| BAD)?).map_err(|_| BAD)?;
    let date =
        time::Date::from_calendar_date(i32::from(year), month, u8::try_from(day).map_err(|_| BAD)?)
            .map_err(|_| BAD)?;
    let t = time::Time::from_hms(
        u8::try_from(hour).map_err(|_| BAD)?,
        u8::try_from(min).map_err(|_| BAD)?,
        u8::try_from(sec).map_err(|_| BAD)?,
    )
    .map_err(|_| BAD)?;
    unix_to_system(
        time::PrimitiveDateTime::new(date, t)
            .assume_utc()
            .unix_timestamp(),
    )
    .ok_or(BAD)
}

/// `secs` after the Unix epoch, or `None` if the platform's `SystemTime`
/// cannot hold it (e.g. before 1601 on Windows): never a panic on hostile input.
pub(crate) fn unix_to_system(secs: i64) -> Option<SystemTime> {
    let d = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    // ----- DER reader and writer -----

    #[test]
    fn der_lengths_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 65_535, 70_000] {
            let content = vec![7u8; len];
            let der = tlv(OCTET_STRING, &content);
            let mut r = Reader::new(&der);
            assert_eq!(r.expect(OCTET_STRING).unwrap(), &content[..]);
            assert!(r.is_empty());
        }
        // Indefinite, non-minimal and overlong lengths are refused.
        for bad in [
            &[0x30, 0x80, 0, 0][..],
            &[0x04, 0x81, 0x05, 1, 2, 3, 4, 5],
            &[0x04, 0x82, 0x00, 0x80],
            &[0x04, 0x85, 1, 1, 1, 1, 1],
            &[0x04, 0x05, 1],
            &[0x1f, 0x01, 0x00],
            &[0x04],
            &[],
        ] {
            assert!(Reader::new(bad).next().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn generalized_times() {
        let t = generalized_time(b"20260102030405Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_767_323_045
        );
        assert_eq!(generalized_time(b"20260102030405.123Z").unwrap(), t);
        for bad in [
            &b"20260102030405"[..],
            b"2026010203040Z",
            b"20261302030405Z",
            b"20260230030405Z",
            b"20260102250405Z",
            b"2026010203040aZ",
            b"20260102030405.Z1",
            b"20260102030405.Z",
            b"\xff\xfe",
        ] {
            assert!(generalized_time(bad).is_err(), "{bad:?}");
        }
    }
}
