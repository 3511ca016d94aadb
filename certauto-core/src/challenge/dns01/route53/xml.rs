//! The little XML Route 53 speaks: a parser for its answers into a tree of
//! elements (local names, text, children) and escaping for our requests.
//!
//! Deliberately small: no DTDs (a `<!DOCTYPE` is refused, so no entity
//! expansion), attributes and namespaces skipped (elements are known by
//! their local name), the five predefined entities and character
//! references decoded, CDATA kept as text. Bounded: the input is at most
//! the API client's body limit, nesting at most [`MAX_DEPTH`], elements at
//! most [`MAX_ELEMENTS`].

use std::fmt::Write as _;

/// The deepest nesting accepted (Route 53 answers nest about 6 deep).
const MAX_DEPTH: usize = 32;
/// The most elements accepted in one document.
const MAX_ELEMENTS: usize = 100_000;

/// An element: its local name (without namespace prefix), its text (the
/// direct text pieces joined, entities decoded) and its child elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Element {
    pub(crate) name: String,
    pub(crate) text: String,
    pub(crate) children: Vec<Element>,
}

impl Element {
    /// The first child named `name`.
    pub(crate) fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child named `name`.
    pub(crate) fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The element at `path` below this one (first match at each step).
    pub(crate) fn at(&self, path: &[&str]) -> Option<&Element> {
        path.iter().try_fold(self, |e, name| e.child(name))
    }

    /// The trimmed text of the element at `path`.
    pub(crate) fn text_at(&self, path: &[&str]) -> Option<&str> {
        self.at(path).map(|e| e.text.trim())
    }
}

/// Why a document could not be read.
#[derive(Debug, thiserror::Error)]
#[error("malformed XML at byte {at}: {reason}")]
pub(crate) struct XmlError {
    at: usize,
    reason: &'static str,
}

fn err<T>(at: usize, reason: &'static str) -> Result<T, XmlError> {
    Err(XmlError { at, reason })
}

/// Parses a whole document into its root element.
pub(crate) fn parse(input: &[u8]) -> Result<Element, XmlError> {
    let Ok(text) = std::str::from_utf8(input) else {
        return err(0, "not UTF-8");
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut pos = 0;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    while pos < text.len() {
        let rest = text.get(pos..).unwrap_or_default();
        if let Some(after) = rest.strip_prefix("<?") {
            let Some(end) = after.find("?>") else {
                return err(pos, "unterminated processing instruction");
            };
            pos += 2 + end + 2;
        } else if let Some(after) = rest.strip_prefix("<!--") {
            let Some(end) = after.find("-->") else {
                return err(pos, "unterminated comment");
            };
            pos += 4 + end + 3;
        } else if let Some(after) = rest.strip_prefix("<![CDATA[") {
            let Some(end) = after.find("]]>") else {
                return err(pos, "unterminated CDATA section");
            };
            let Some(top) = stack.last_mut() else {
                return err(pos, "CDATA outside the root element");
            };
            top.text.push_str(after.get(..end).unwrap_or_default());
            pos += 9 + end + 3;
        } else if rest.starts_with("<!") {
            return err(pos, "DTDs are not accepted");
        } else if let Some(after) = rest.strip_prefix("</") {
            let Some(end) = after.find('>') else {
                return err(pos, "unterminated end tag");
            };
            let name = after.get(..end).unwrap_or_default().trim();
            let Some(element) = stack.pop() else {
                return err(pos, "end tag without start tag");
            };
            if local(name) != element.name {
                return err(pos, "end tag does not match its start tag");
            }
            pos += 2 + end + 1;
            attach(&mut stack, &mut root, element, pos)?;
        } else if let Some(after) = rest.strip_prefix('<') {
            let end = tag_end(after).ok_or(XmlError {
                at: pos,
                reason: "unterminated start tag",
            })?;
            let inner = after.get(..end).unwrap_or_default();
            let (inner, empty) = match inner.strip_suffix('/') {
                Some(i) => (i, true),
                None => (inner, false),
            };
            let name = inner
                .split(|c: char| c.is_ascii_whitespace())
                .next()
                .unwrap_or_default();
            if name.is_empty() {
                return err(pos, "start tag without a name");
            }
            count += 1;
            if count > MAX_ELEMENTS {
                return err(pos, "too many elements");
            }
            if stack.len() >= MAX_DEPTH {
                return err(pos, "nested too deep");
            }
            let element = Element {
                name: local(name).to_owned(),
                ..Element::default()
            };
            pos += 1 + end + 1;
            if empty {
                attach(&mut stack, &mut root, element, pos)?;
            } else {
                if root.is_some() {
                    return err(pos, "content after the root element");
                }
                stack.push(element);
            }
        } else {
            let end = rest.find('<').unwrap_or(rest.len());
            let piece = rest.get(..end).unwrap_or_default();
            match stack.last_mut() {
                Some(top) => unescape_into(piece, &mut top.text, pos)?,
                None if piece.trim().is_empty() => {}
                None => return err(pos, "text outside the root element"),
            }
            pos += end;
        }
    }
    if !stack.is_empty() {
        return err(pos, "unclosed element");
    }
    root.ok_or(XmlError {
        at: pos,
        reason: "no root element",
    })
}

/// Where a start tag's `>` is, skipping quoted attribute values.
fn tag_end(after_lt: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    for (i, c) in after_lt.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '>') => return Some(i),
            (None, '<') => return None,
            (None, _) => {}
        }
    }
    None
}

/// A closed element goes to its parent, or becomes the root.
fn attach(
    stack: &mut [Element],
    root: &mut Option<Element>,
    element: Element,
    pos: usize,
) -> Result<(), XmlError> {
    match stack.last_mut() {
        Some(parent) => parent.children.push(element),
        None if root.is_none() => *root = Some(element),
        None => return err(pos, "more than one root element"),
    }
    Ok(())
}

/// `name` without its namespace prefix.
fn local(name: &str) -> &str {
    name.rsplit_once(':').map_or(name, |(_, l)| l)
}

/// Decodes the entities of `text` into `out`.
fn unescape_into(text: &str, out: &mut String, pos: usize) -> Result<(), XmlError> {
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(rest.get(..amp).unwrap_or_default());
        let after = rest.get(amp + 1..).unwrap_or_default();
        let Some(semi) = after.find(';').filter(|&s| s <= 10) else {
            return err(pos, "unterminated entity");
        };
        let entity = after.get(..semi).unwrap_or_default();
        let c = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(dec) = entity.strip_prefix('#') {
                    dec.parse::<u32>().ok()
                } else {
                    None
                };
                match code.and_then(char::from_u32) {
                    Some(c) => c,
                    None => return err(pos, "unknown entity"),
                }
            }
        };
        out.push(c);
        rest = after.get(semi + 1..).unwrap_or_default();
    }
    out.push_str(rest);
    Ok(())
}

/// `text` escaped for element content or a quoted attribute.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {
                // Not allowed in XML 1.0 at all; keep it visible.
                let _ = write!(out, "\\{:03o}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_a_route53_error_answer() {
        let doc = br#"<?xml version="1.0" encoding="UTF-8"?>
<ErrorResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/">
  <Error>
    <Type>Sender</Type>
    <Code>InvalidChangeBatch</Code>
    <Message>Tried to create &quot;x&quot; &amp; &#x41;&#66; <![CDATA[<raw>]]></Message>
  </Error>
  <!-- a comment -->
  <RequestId>b25f48e8-84fd-11e6-80d9-574e0c4664cb</RequestId>
  <Empty/>
</ErrorResponse>"#;
        let root = parse(doc).unwrap();
        assert_eq!(root.name, "ErrorResponse");
        assert_eq!(root.text_at(&["Error", "Code"]), Some("InvalidChangeBatch"));
        assert_eq!(
            root.text_at(&["Error", "Message"]),
            Some("Tried to create \"x\" & AB <raw>")
        );
        assert_eq!(root.child("Empty").map(|e| e.text.as_str()), Some(""));
        assert_eq!(root.children("Error").count(), 1);
    }

    #[test]
    fn refuses_what_it_should() {
        for bad in [
            &b""[..],
            b"<a>",
            b"<a></b>",
            b"<a/><b/>",
            b"text",
            b"<!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>",
            b"<a>&bogus;</a>",
            b"<a>&amp</a>",
            b"<a attr=\"1>",
            b"\xff\xfe",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert!(parse(deep.as_bytes()).is_err());
        // Attributes with '>' inside quotes, prefixed names.
        let root = parse(br#"<r:Root a="x>y"><r:V>1</r:V></r:Root>"#).unwrap();
        assert_eq!(root.text_at(&["V"]), Some("1"));
    }

    #[test]
    fn escapes() {
        assert_eq!(escape(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
    }
}
