//! The key of the in-memory key index ([`super::Keys`]): a user key of up to
//! [`INLINE_KEY_BYTES`] bytes is held in the map's own node, a longer one on the heap.
//!
//! A `BTreeMap<Vec<u8>, _>` compares a looked-up key with each key of a node it passes by
//! following that key's heap pointer: once the index outgrows the CPU caches, every comparison
//! is a cache miss of its own (at 10,000 keys, a put's lookup was a third of an apply's time).
//! Inline, the bytes compared sit in the node, next to each other.
//!
//! Ordered and compared as the bytes themselves, so the map is searched with `&[u8]`.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::ops::Deref;

/// The longest key kept inline: the whole value stays the size of a `Vec<u8>` (24 bytes).
pub(super) const INLINE_KEY_BYTES: usize = 22;

#[derive(Clone)]
pub(super) enum MapKey {
    Inline {
        len: u8,
        bytes: [u8; INLINE_KEY_BYTES],
    },
    Heap(Box<[u8]>),
}

const _: () = assert!(std::mem::size_of::<MapKey>() == std::mem::size_of::<Vec<u8>>());
const _: () = assert!(INLINE_KEY_BYTES <= u8::MAX as usize);

impl MapKey {
    pub(super) fn new(key: &[u8]) -> MapKey {
        if key.len() <= INLINE_KEY_BYTES {
            let mut bytes = [0; INLINE_KEY_BYTES];
            bytes[..key.len()].copy_from_slice(key);
            MapKey::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            MapKey::Heap(key.into())
        }
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            MapKey::Inline { len, bytes } => &bytes[..*len as usize],
            MapKey::Heap(bytes) => bytes,
        }
    }
}

impl Deref for MapKey {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Borrow<[u8]> for MapKey {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for MapKey {
    fn eq(&self, other: &MapKey) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for MapKey {}

impl PartialOrd for MapKey {
    fn partial_cmp(&self, other: &MapKey) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for MapKey {
    fn cmp(&self, other: &MapKey) -> Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl fmt::Debug for MapKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_slice().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::ops::Bound;

    use super::*;

    /// Keys either side of the inline limit, with zero bytes where the inline padding is.
    fn keys() -> Vec<Vec<u8>> {
        let mut keys = vec![Vec::new(), vec![0], vec![0, 0], vec![1], vec![255]];
        for len in [
            INLINE_KEY_BYTES - 1,
            INLINE_KEY_BYTES,
            INLINE_KEY_BYTES + 1,
            64,
        ] {
            keys.push(vec![0; len]);
            keys.push(vec![7; len]);
            let mut last_differs = vec![7; len];
            *last_differs.last_mut().expect("not empty") = 8;
            keys.push(last_differs);
        }
        keys
    }

    #[test]
    fn keys_hold_their_bytes_inline_up_to_the_limit_and_on_the_heap_beyond() {
        for key in keys() {
            let map_key = MapKey::new(&key);
            assert_eq!(map_key.as_slice(), key.as_slice());
            let inline = matches!(map_key, MapKey::Inline { .. });
            assert_eq!(inline, key.len() <= INLINE_KEY_BYTES, "{key:?}");
        }
    }

    #[test]
    fn map_keys_compare_as_their_bytes() {
        let keys = keys();
        for a in &keys {
            for b in &keys {
                let (x, y) = (MapKey::new(a), MapKey::new(b));
                assert_eq!(x.cmp(&y), a.cmp(b), "{a:?} against {b:?}");
                assert_eq!(x == y, a == b, "{a:?} against {b:?}");
            }
        }
    }

    /// The map must order, find and range over keys exactly as a map of the bytes does: a zero
    /// byte of padding must not make a short key equal to a longer one.
    #[test]
    fn a_map_of_map_keys_orders_and_finds_as_a_map_of_bytes() {
        let keys = keys();
        // Inserted one by one, last first, so the map's own comparisons place every key.
        let mut by_bytes = BTreeMap::new();
        let mut by_map_key = BTreeMap::new();
        for (i, key) in keys.iter().enumerate().rev() {
            by_bytes.insert(key.clone(), i);
            by_map_key.insert(MapKey::new(key), i);
        }
        assert_eq!(by_map_key.len(), by_bytes.len());
        let ordered: Vec<(&[u8], usize)> =
            by_map_key.iter().map(|(k, i)| (k.as_slice(), *i)).collect();
        let expected: Vec<(&[u8], usize)> =
            by_bytes.iter().map(|(k, i)| (k.as_slice(), *i)).collect();
        assert_eq!(ordered, expected);
        for key in &keys {
            assert_eq!(by_map_key.get(key.as_slice()), by_bytes.get(key));
            for start in [
                Bound::Included(key.as_slice()),
                Bound::Excluded(key.as_slice()),
            ] {
                let tail: Vec<usize> = by_map_key
                    .range::<[u8], _>((start, Bound::Unbounded))
                    .map(|(_, i)| *i)
                    .collect();
                let expected: Vec<usize> = by_bytes
                    .range::<[u8], _>((start, Bound::Unbounded))
                    .map(|(_, i)| *i)
                    .collect();
                assert_eq!(tail, expected, "range from {start:?}");
            }
        }
    }
}
