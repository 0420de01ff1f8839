//! Options of reads, puts and deletes, as small builders, and how they become etcd requests.

use super::config::Consistency;
use crate::pb::etcdserverpb as etcd;

/// The key after every key that starts with `prefix` (etcd's "prefix end"): the last byte below
/// `0xff` incremented, the bytes after it dropped. A prefix of only `0xff` bytes (or none) has no
/// end: `"\0"`, which etcd reads as "to the end of the key space".
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|byte| *byte < 0xff) {
        Some(last) => {
            let mut end = prefix[..=last].to_vec();
            end[last] += 1;
            end
        }
        None => vec![0],
    }
}

/// Which keys a request covers besides its key: etcd's `range_end`, resolved against the key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum KeyRange {
    /// The key alone.
    #[default]
    Single,
    /// Every key starting with the key.
    Prefix,
    /// `[key, end)`.
    End(Vec<u8>),
    /// Every key from the key on.
    FromKey,
}

impl KeyRange {
    /// The request's `(key, range_end)`. As etcdctl does, an empty key with a prefix or from-key
    /// range means every key (`"\0"` to the end).
    pub(crate) fn resolve(&self, key: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
        match self {
            KeyRange::Single => (key, Vec::new()),
            KeyRange::Prefix | KeyRange::FromKey if key.is_empty() => (vec![0], vec![0]),
            KeyRange::Prefix => {
                let end = prefix_end(&key);
                (key, end)
            }
            KeyRange::End(end) => (key, end.clone()),
            KeyRange::FromKey => (key, vec![0]),
        }
    }
}

/// What a range is sorted by (`RangeRequest.SortTarget`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// The direction of a sort (`RangeRequest.SortOrder`); `None` is the server's default order
/// (ascending by key).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

impl SortTarget {
    fn wire(self) -> etcd::range_request::SortTarget {
        use etcd::range_request::SortTarget as Wire;
        match self {
            SortTarget::Key => Wire::Key,
            SortTarget::Version => Wire::Version,
            SortTarget::Create => Wire::Create,
            SortTarget::Mod => Wire::Mod,
            SortTarget::Value => Wire::Value,
        }
    }
}

impl SortOrder {
    fn wire(self) -> etcd::range_request::SortOrder {
        use etcd::range_request::SortOrder as Wire;
        match self {
            SortOrder::None => Wire::None,
            SortOrder::Ascend => Wire::Ascend,
            SortOrder::Descend => Wire::Descend,
        }
    }
}

/// Options of [`Client::get`](super::Client::get) (and of [`Op::get`](super::Op::get) in a
/// transaction, where `consistency` is ignored: a transaction is always linearizable).
///
/// ```no_run
/// use quorumdb::client::{GetOptions, SortOrder, SortTarget};
///
/// let newest_ten = GetOptions::new()
///     .prefix()
///     .sort(SortTarget::Mod, SortOrder::Descend)
///     .limit(10);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetOptions {
    range: KeyRange,
    revision: i64,
    keys_only: bool,
    count_only: bool,
    limit: i64,
    sort: (SortTarget, SortOrder),
    consistency: Option<Consistency>,
}

impl GetOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every key that starts with the key.
    pub fn prefix(mut self) -> Self {
        self.range = KeyRange::Prefix;
        self
    }

    /// Keys in `[key, end)`.
    pub fn range_end(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.range = KeyRange::End(end.into());
        self
    }

    /// Every key from the key on.
    pub fn from_key(mut self) -> Self {
        self.range = KeyRange::FromKey;
        self
    }

    /// Read as of this store revision (0: the current one). Fails with `OutOfRange` once the
    /// revision is compacted.
    pub fn revision(mut self, revision: i64) -> Self {
        self.revision = revision;
        self
    }

    /// Keys and their metadata without values.
    pub fn keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }

    /// Only the number of keys ([`GetResponse::count`](super::GetResponse::count)).
    pub fn count_only(mut self) -> Self {
        self.count_only = true;
        self
    }

    /// At most this many keys (0: no limit); [`GetResponse::more`](super::GetResponse::more)
    /// says whether some were left out.
    pub fn limit(mut self, limit: i64) -> Self {
        self.limit = limit;
        self
    }

    pub fn sort(mut self, target: SortTarget, order: SortOrder) -> Self {
        self.sort = (target, order);
        self
    }

    /// This read's consistency instead of the client's default.
    pub fn consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = Some(consistency);
        self
    }

    pub(crate) fn chosen_consistency(&self) -> Option<Consistency> {
        self.consistency
    }

    /// The etcd request; `serializable` is the caller's routing decision.
    pub(crate) fn to_request(&self, key: Vec<u8>, serializable: bool) -> etcd::RangeRequest {
        let (key, range_end) = self.range.resolve(key);
        etcd::RangeRequest {
            key,
            range_end,
            limit: self.limit,
            revision: self.revision,
            sort_order: self.sort.1.wire() as i32,
            sort_target: self.sort.0.wire() as i32,
            serializable,
            keys_only: self.keys_only,
            count_only: self.count_only,
            ..Default::default()
        }
    }
}

/// Options of [`Client::put`](super::Client::put).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Return the key's previous version ([`PutResponse::prev_kv`](super::PutResponse::prev_kv)).
    pub prev_kv: bool,
    /// Attach the key to this lease (0: none).
    pub lease: i64,
}

impl PutOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    pub fn lease(mut self, lease: i64) -> Self {
        self.lease = lease;
        self
    }

    pub(crate) fn to_request(self, key: Vec<u8>, value: Vec<u8>) -> etcd::PutRequest {
        etcd::PutRequest {
            key,
            value,
            lease: self.lease,
            prev_kv: self.prev_kv,
            ..Default::default()
        }
    }
}

/// Options of [`Client::delete`](super::Client::delete).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    range: KeyRange,
    prev_kv: bool,
}

impl DeleteOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every key that starts with the key.
    pub fn prefix(mut self) -> Self {
        self.range = KeyRange::Prefix;
        self
    }

    /// Keys in `[key, end)`.
    pub fn range_end(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.range = KeyRange::End(end.into());
        self
    }

    /// Every key from the key on.
    pub fn from_key(mut self) -> Self {
        self.range = KeyRange::FromKey;
        self
    }

    /// Return the deleted keys ([`DeleteResponse::prev_kvs`](super::DeleteResponse::prev_kvs)).
    pub fn prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    pub(crate) fn to_request(&self, key: Vec<u8>) -> etcd::DeleteRangeRequest {
        let (key, range_end) = self.range.resolve(key);
        etcd::DeleteRangeRequest {
            key,
            range_end,
            prev_kv: self.prev_kv,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"abc"), b"abd".to_vec());
        assert_eq!(prefix_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn ranges_resolve_like_etcdctl() {
        assert_eq!(
            KeyRange::Single.resolve(b"k".to_vec()),
            (b"k".to_vec(), vec![])
        );
        assert_eq!(
            KeyRange::Prefix.resolve(b"k/".to_vec()),
            (b"k/".to_vec(), b"k0".to_vec())
        );
        assert_eq!(KeyRange::Prefix.resolve(vec![]), (vec![0], vec![0]));
        assert_eq!(
            KeyRange::FromKey.resolve(b"k".to_vec()),
            (b"k".to_vec(), vec![0])
        );
        assert_eq!(
            KeyRange::End(b"z".to_vec()).resolve(b"a".to_vec()),
            (b"a".to_vec(), b"z".to_vec())
        );
    }

    #[test]
    fn get_options_fill_the_range_request() {
        let request = GetOptions::new()
            .prefix()
            .revision(7)
            .keys_only()
            .limit(3)
            .sort(SortTarget::Create, SortOrder::Descend)
            .to_request(b"p/".to_vec(), true);
        assert_eq!(
            request,
            etcd::RangeRequest {
                key: b"p/".to_vec(),
                range_end: b"p0".to_vec(),
                limit: 3,
                revision: 7,
                sort_order: etcd::range_request::SortOrder::Descend as i32,
                sort_target: etcd::range_request::SortTarget::Create as i32,
                serializable: true,
                keys_only: true,
                ..Default::default()
            }
        );
    }
}
