//! The name tables of [`CertCache`](crate::CertCache) (its entries, and the
//! handshake path's certified keys): names to values, laid out so that a
//! lookup touches as few cold cache lines as possible.
//!
//! A lookup in a `HashMap<String, Arc<_>>` at 100,000 entries follows three
//! pointers into cold memory before it reaches the value: the bucket, the
//! key's heap bytes (to compare them), and the value. Here the name is stored
//! inline in the bucket (up to [`INLINE`] bytes), so a hit reads the map's
//! control bytes (dense, usually cached), one bucket, and then the value; a
//! miss usually reads only control bytes. Longer names (rare) live in an
//! ordinary map beside it.
//!
//! The hash is std's keyed SipHash with a random key per map, so names chosen
//! by an attacker (on-demand issuance, SNI) cannot be aimed at one bucket.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Bytes of name stored inline in a bucket.
const INLINE: usize = 55;

/// A name of at most [`INLINE`] bytes, stored by value.
#[derive(Clone, Copy)]
struct ShortName {
    len: u8,
    bytes: [u8; INLINE],
}

impl ShortName {
    fn new(name: &str) -> Option<Self> {
        let src = name.as_bytes();
        let mut bytes = [0; INLINE];
        bytes.get_mut(..src.len())?.copy_from_slice(src);
        Some(Self {
            len: u8::try_from(src.len()).ok()?,
            bytes,
        })
    }

    fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or_default()
    }
}

impl PartialEq for ShortName {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for ShortName {}

impl Hash for ShortName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.as_bytes());
    }
}

/// A map from names to values with short names stored inline.
pub(crate) struct NameTable<V> {
    short: HashMap<ShortName, V>,
    long: HashMap<Box<str>, V>,
}

impl<V> Default for NameTable<V> {
    fn default() -> Self {
        Self {
            short: HashMap::new(),
            long: HashMap::new(),
        }
    }
}

impl<V> NameTable<V> {
    /// The value stored for `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&V> {
        match ShortName::new(name) {
            Some(key) => self.short.get(&key),
            None => self.long.get(name),
        }
    }

    /// Stores `value` for `name`, returning the value it replaces.
    pub(crate) fn insert(&mut self, name: &str, value: V) -> Option<V> {
        match ShortName::new(name) {
            Some(key) => self.short.insert(key, value),
            None => self.long.insert(name.into(), value),
        }
    }

    /// Removes `name`, returning its value.
    pub(crate) fn remove(&mut self, name: &str) -> Option<V> {
        match ShortName::new(name) {
            Some(key) => self.short.remove(&key),
            None => self.long.remove(name),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.short.len() + self.long.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bucket_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<(ShortName, std::sync::Arc<u8>)>(), 64);
    }

    #[test]
    fn behaves_like_a_hash_map() {
        let mut table = NameTable::default();
        let mut model = HashMap::new();
        // A deterministic pseudo-random sequence of inserts and removes over a
        // small key space (many collisions and shifts), plus long names.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = x % 700;
            let name = if k.is_multiple_of(50) {
                format!("{}.long.example", "l".repeat(60 + (k as usize % 7)))
            } else {
                format!("h{k}.example")
            };
            if x.is_multiple_of(3) {
                assert_eq!(table.remove(&name), model.remove(&name), "remove {name}");
            } else {
                assert_eq!(
                    table.insert(&name, step),
                    model.insert(name.clone(), step),
                    "insert {name}"
                );
            }
            if step.is_multiple_of(997) {
                for k in 0..700 {
                    let name = format!("h{k}.example");
                    assert_eq!(table.get(&name), model.get(&name), "get {name}");
                }
            }
        }
        for (name, value) in &model {
            assert_eq!(table.get(name), Some(value));
        }
        assert_eq!(table.len(), model.len());
        assert_eq!(table.get("absent.example"), None);
    }

    #[test]
    fn exactly_inline_length_and_one_more() {
        let mut table = NameTable::default();
        let a = "a".repeat(INLINE);
        let b = "b".repeat(INLINE + 1);
        table.insert(&a, 1);
        table.insert(&b, 2);
        assert_eq!(table.get(&a), Some(&1));
        assert_eq!(table.get(&b), Some(&2));
        assert_eq!(table.long.len(), 1);
        assert_eq!(table.remove(&a), Some(1));
        assert_eq!(table.get(&a), None);
    }
}
