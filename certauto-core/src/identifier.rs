//! Names a certificate is for: validated once, then used everywhere.
//!
//! User input (a domain name or an IP address) becomes an [`Identifier`]
//! through [`Identifier::parse`]; nothing downstream handles raw strings.
//! Parsing lower-cases, removes one trailing dot, converts internationalised
//! names to their ASCII (punycode) form, and refuses anything that cannot be
//! a certificate name: empty labels, bad characters, over-long names and
//! wildcards anywhere but as the whole leftmost label.
//!
//! ```
//! use certauto_core::Identifier;
//!
//! let id = Identifier::parse("*.Example.COM.").unwrap();
//! assert_eq!(id.as_str(), "*.example.com");
//! assert!(id.is_wildcard());
//! assert_eq!(id.storage_key(), "wildcard_.example.com");
//! assert!(Identifier::parse("foo.*.example.com").is_err());
//! ```

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name was empty.
    #[error("empty name")]
    Empty,
    /// The name is longer than 253 characters.
    #[error("name {name:?} is longer than 253 characters")]
    TooLong {
        /// The offending name (truncated to 300 characters).
        name: String,
    },
    /// A label is empty (two dots in a row, or a leading dot).
    #[error("name {name:?} has an empty label")]
    EmptyLabel {
        /// The offending name.
        name: String,
    },
    /// A label is longer than 63 characters.
    #[error("name {name:?} has a label longer than 63 characters")]
    LabelTooLong {
        /// The offending name.
        name: String,
    },
    /// A character that cannot appear in a host name.
    #[error("name {name:?} contains the invalid character {ch:?}")]
    InvalidCharacter {
        /// The offending name.
        name: String,
        /// The first invalid character.
        ch: char,
    },
    /// A label starts or ends with a hyphen.
    #[error("name {name:?} has a label that starts or ends with '-'")]
    HyphenAtLabelEdge {
        /// The offending name.
        name: String,
    },
    /// A wildcard that is not the whole leftmost label.
    #[error("name {name:?} has a wildcard that is not the whole leftmost label")]
    MisplacedWildcard {
        /// The offending name.
        name: String,
    },
    /// The name is a bare wildcard or a wildcard over a single label.
    #[error("wildcard {name:?} must cover a name of at least two labels")]
    WildcardTooBroad {
        /// The offending name.
        name: String,
    },
    /// The internationalised name could not be converted to ASCII.
    #[error("name {name:?} is not a valid internationalised domain name")]
    Idna {
        /// The offending name.
        name: String,
    },
    /// The top-level label is all digits, which no registry allows.
    #[error("name {name:?} ends in an all-numeric label and is not an IP address")]
    NumericTld {
        /// The offending name.
        name: String,
    },
}

const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// A validated, normalised DNS name (possibly a wildcard such as `*.example.com`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(String);

impl DomainName {
    /// Parses and normalises a DNS name.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let trimmed = input.trim();
        let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed);
        if trimmed.is_empty() {
            return Err(NameError::Empty);
        }
        let shown = || truncate(trimmed);
        if trimmed.len() > 4 * MAX_NAME_LEN {
            return Err(NameError::TooLong { name: shown() });
        }
        let ascii = if trimmed.is_ascii() {
            trimmed.to_ascii_lowercase()
        } else {
            // Keep the wildcard label out of IDNA processing.
            let (prefix, rest) = match trimmed.strip_prefix("*.") {
                Some(rest) => ("*.", rest),
                None => ("", trimmed),
            };
            let converted =
                idna::domain_to_ascii(rest).map_err(|_| NameError::Idna { name: shown() })?;
            format!("{prefix}{converted}")
        };
        validate_ascii(&ascii)?;
        Ok(Self(ascii))
    }

    /// The normalised name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the leftmost label is `*`.
    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }

    /// The name with its leftmost label replaced by `*` (`a.b.c` gives `*.b.c`),
    /// or `None` when the name has fewer than three labels or is itself a wildcard.
    pub fn wildcard_parent(&self) -> Option<DomainName> {
        if self.is_wildcard() {
            return None;
        }
        let (_, rest) = self.0.split_once('.')?;
        if !rest.contains('.') {
            return None;
        }
        Some(DomainName(format!("*.{rest}")))
    }

    /// Whether this (possibly wildcard) name covers `other`.
    pub fn matches(&self, other: &DomainName) -> bool {
        if self == other {
            return true;
        }
        match (self.0.strip_prefix("*."), other.0.split_once('.')) {
            (Some(base), Some((_, rest))) => !other.is_wildcard() && base == rest,
            _ => false,
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(300).collect()
}

fn validate_ascii(name: &str) -> Result<(), NameError> {
    let shown = || truncate(name);
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { name: shown() });
    }
    let labels: Vec<&str> = name.split('.').collect();
    for (i, label) in labels.iter().enumerate() {
        if label.is_empty() {
            return Err(NameError::EmptyLabel { name: shown() });
        }
        if label.contains('*') {
            if i != 0 || *label != "*" {
                return Err(NameError::MisplacedWildcard { name: shown() });
            }
            continue;
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NameError::LabelTooLong { name: shown() });
        }
        if let Some(ch) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(NameError::InvalidCharacter { name: shown(), ch });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(NameError::HyphenAtLabelEdge { name: shown() });
        }
    }
    if labels[0] == "*" && labels.len() < 3 {
        return Err(NameError::WildcardTooBroad { name: shown() });
    }
    // An all-numeric last label is either an IP address (handled by the caller)
    // or not a valid host name.
    if labels
        .last()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(NameError::NumericTld { name: shown() });
    }
    Ok(())
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl FromStr for DomainName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// What a certificate is for: a DNS name or an IP address.
///
/// See RFC 8555 §9.7.7 (`dns`) and RFC 8738 (`ip`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identifier {
    /// A DNS name, possibly a wildcard.
    Dns(DomainName),
    /// An IP address.
    Ip(IpAddr),
}

impl Identifier {
    /// Parses user input: an IP address literal (optionally in `[...]`), or a DNS name.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let trimmed = input.trim();
        let unbracketed = trimmed
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(trimmed);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(Identifier::Ip(ip));
        }
        DomainName::parse(trimmed).map(Identifier::Dns)
    }

    /// Parses a list of names, refusing duplicates silently (they are removed) and
    /// keeping the first name first.
    pub fn parse_all<I, S>(names: I) -> Result<Vec<Identifier>, NameError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out: Vec<Identifier> = Vec::new();
        for name in names {
            let id = Identifier::parse(name.as_ref())?;
            if !out.contains(&id) {
                out.push(id);
            }
        }
        if out.is_empty() {
            return Err(NameError::Empty);
        }
        Ok(out)
    }

    /// The normalised text form (`example.com`, `*.example.com`, `192.0.2.1`, `2001:db8::1`).
    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Identifier::Dns(d) => std::borrow::Cow::Borrowed(d.as_str()),
            Identifier::Ip(ip) => std::borrow::Cow::Owned(ip.to_string()),
        }
    }

    /// Whether this is a wildcard DNS name.
    pub fn is_wildcard(&self) -> bool {
        matches!(self, Identifier::Dns(d) if d.is_wildcard())
    }

    /// The ACME identifier type (`dns` or `ip`).
    pub fn acme_type(&self) -> &'static str {
        match self {
            Identifier::Dns(_) => "dns",
            Identifier::Ip(_) => "ip",
        }
    }

    /// A form safe to use as one component of a storage key or a file name:
    /// lower case, `*` encoded as `wildcard_`, and an IPv6 address as
    /// `ipv6_` followed by the address with `:` as `-` (`ipv6_2001-db8--1`).
    ///
    /// The result contains only `[a-z0-9._-]`, is never `.` or `..`, and is
    /// distinct for distinct identifiers: `_` appears in no DNS name, so the
    /// two forms that use it cannot be a DNS name's key, and an IPv4
    /// address's last label is all digits, which no accepted DNS name's is.
    pub fn storage_key(&self) -> String {
        match self {
            Identifier::Dns(d) => d.as_str().replacen('*', "wildcard_", 1),
            Identifier::Ip(IpAddr::V4(ip)) => ip.to_string(),
            Identifier::Ip(IpAddr::V6(ip)) => format!("ipv6_{}", ip.to_string().replace(':', "-")),
        }
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl fmt::Debug for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.acme_type(), self.as_str())
    }
}

impl FromStr for Identifier {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Makes an arbitrary string (an e-mail address, a CA URL) safe as one storage key
/// component: lower-cased, with every character outside `[a-z0-9._@+-]` replaced by `-`,
/// never empty, `.` or `..`, and at most 200 characters.
pub(crate) fn safe_key_component(input: &str) -> String {
    let mut out: String = input
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '+' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(200)
        .collect();
    if out.is_empty() || out.chars().all(|c| c == '.') {
        out = format!("_{out}");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn normalises_case_and_trailing_dot() {
        let id = Identifier::parse(" WWW.Example.Com. ").unwrap();
        assert_eq!(id.as_str(), "www.example.com");
        assert_eq!(id.acme_type(), "dns");
    }

    #[test]
    fn parses_ip_addresses() {
        assert_eq!(
            Identifier::parse("127.0.0.1").unwrap(),
            Identifier::Ip("127.0.0.1".parse().unwrap())
        );
        let v6 = Identifier::parse("[::1]").unwrap();
        assert_eq!(v6.acme_type(), "ip");
        assert_eq!(v6.storage_key(), "ipv6_--1");
    }

    #[test]
    fn refuses_bad_names() {
        let cases = [
            ("", NameError::Empty),
            (".", NameError::Empty),
            (
                "a..b",
                NameError::EmptyLabel {
                    name: "a..b".into(),
                },
            ),
            (
                ".a.b",
                NameError::EmptyLabel {
                    name: ".a.b".into(),
                },
            ),
            (
                "exa mple.com",
                NameError::InvalidCharacter {
                    name: "exa mple.com".into(),
                    ch: ' ',
                },
            ),
            (
                "a/b.com",
                NameError::InvalidCharacter {
                    name: "a/b.com".into(),
                    ch: '/',
                },
            ),
            (
                "-a.com",
                NameError::HyphenAtLabelEdge {
                    name: "-a.com".into(),
                },
            ),
            (
                "foo.*.com",
                NameError::MisplacedWildcard {
                    name: "foo.*.com".into(),
                },
            ),
            (
                "f*.example.com",
                NameError::MisplacedWildcard {
                    name: "f*.example.com".into(),
                },
            ),
            (
                "*.com",
                NameError::WildcardTooBroad {
                    name: "*.com".into(),
                },
            ),
            (
                "1.2.3",
                NameError::NumericTld {
                    name: "1.2.3".into(),
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                Identifier::parse(input).unwrap_err(),
                want,
                "input {input:?}"
            );
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(matches!(
            Identifier::parse(&long_label),
            Err(NameError::LabelTooLong { .. })
        ));
        let long_name = vec!["a".repeat(60); 5].join(".");
        assert!(matches!(
            Identifier::parse(&long_name),
            Err(NameError::TooLong { .. })
        ));
        assert!(Identifier::parse("../etc/passwd").is_err());
        assert!(Identifier::parse("a\0b.com").is_err());
    }

    #[test]
    fn internationalised_names_become_punycode() {
        let id = Identifier::parse("Bücher.example").unwrap();
        assert_eq!(id.as_str(), "xn--bcher-kva.example");
        let wild = Identifier::parse("*.bücher.example").unwrap();
        assert_eq!(wild.as_str(), "*.xn--bcher-kva.example");
    }

    #[test]
    fn wildcard_matching() {
        let wild = DomainName::parse("*.example.com").unwrap();
        assert!(wild.matches(&DomainName::parse("a.example.com").unwrap()));
        assert!(!wild.matches(&DomainName::parse("a.b.example.com").unwrap()));
        assert!(!wild.matches(&DomainName::parse("example.com").unwrap()));
        let name = DomainName::parse("a.example.com").unwrap();
        assert_eq!(name.wildcard_parent().unwrap(), wild);
        assert_eq!(
            DomainName::parse("example.com").unwrap().wildcard_parent(),
            None
        );
    }

    #[test]
    fn storage_keys_are_safe() {
        for input in [
            "*.example.com",
            "localhost",
            "xn--bcher-kva.example",
            "::1",
            "10.0.0.1",
        ] {
            let key = Identifier::parse(input).unwrap().storage_key();
            assert!(
                key.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)),
                "{key}"
            );
            assert_ne!(key, ".");
            assert_ne!(key, "..");
        }
        assert_eq!(safe_key_component("../../x"), "..-..-x");
        assert_eq!(safe_key_component(".."), "_..");
        assert_eq!(safe_key_component(""), "_");
        assert_eq!(safe_key_component("Me@Example.com"), "me@example.com");
    }

    #[test]
    fn parse_all_dedups_and_keeps_order() {
        let ids = Identifier::parse_all(["b.com", "A.com", "B.COM"]).unwrap();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0].as_str(), "b.com");
        assert!(Identifier::parse_all(Vec::<String>::new()).is_err());
    }
}
