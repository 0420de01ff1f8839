//! QuorumDB's own gRPC metadata keys: what a client adds to an etcd request to get exactly-once
//! writes or session reads. Without them a request behaves exactly as it does on etcd.
//!
//! | key | on | value | meaning |
//! |---|---|---|---|
//! | `quorumdb-client-id` | Put, DeleteRange, Txn | u64, not 0 | the client's session id (random) |
//! | `quorumdb-client-seq` | same | u64 >= 1 | the write's number in that session |
//! | `quorumdb-client-ack` | same | u64, 1..=seq (default 1) | every write below it was answered |
//! | `quorumdb-min-revision` | Range | i64 >= 0 | answer only once this member applied it |
//!
//! A write re-sent with the same id and seq answers the first application's response, revision
//! included. A Range with `quorumdb-min-revision` R (normally with `serializable`) waits, bounded by
//! [`MIN_REVISION_WAIT_MS_MAX`](crate::limits::MIN_REVISION_WAIT_MS_MAX), until this member has
//! applied revision R, then reads locally: read-your-writes and monotonic reads on any member
//! without a round trip to the leader.
//!
//! Must never: accept a malformed value silently (it is refused with `InvalidArgument` naming the
//! key); read anything else from the metadata.

use tonic::metadata::MetadataMap;

use super::error::ApiError;
use crate::types::ClientWrite;

pub const CLIENT_ID_KEY: &str = "quorumdb-client-id";
pub const CLIENT_SEQ_KEY: &str = "quorumdb-client-seq";
pub const CLIENT_ACK_KEY: &str = "quorumdb-client-ack";
pub const MIN_REVISION_KEY: &str = "quorumdb-min-revision";

fn number<T: std::str::FromStr>(
    metadata: &MetadataMap,
    key: &'static str,
) -> Result<Option<T>, ApiError> {
    let Some(value) = metadata.get(key) else {
        return Ok(None);
    };
    let invalid = |reason: String| ApiError::InvalidMetadata { key, reason };
    let text = value
        .to_str()
        .map_err(|_| invalid("not ASCII".to_string()))?;
    text.trim().parse().map(Some).map_err(|_| {
        invalid(format!(
            "{text:?} is not a decimal number of the right range"
        ))
    })
}

/// The numbered write a Put/DeleteRange/Txn's metadata names, if any.
pub fn numbered_write(metadata: &MetadataMap) -> Result<Option<ClientWrite>, ApiError> {
    let client: Option<u64> = number(metadata, CLIENT_ID_KEY)?;
    let seq: Option<u64> = number(metadata, CLIENT_SEQ_KEY)?;
    let ack: Option<u64> = number(metadata, CLIENT_ACK_KEY)?;
    let (client, seq) = match (client, seq) {
        (None, None) if ack.is_none() => return Ok(None),
        (Some(client), Some(seq)) => (client, seq),
        _ => {
            return Err(ApiError::InvalidMetadata {
                key: CLIENT_SEQ_KEY,
                reason: format!("{CLIENT_ID_KEY} and {CLIENT_SEQ_KEY} go together"),
            });
        }
    };
    let invalid = |key, reason: &str| ApiError::InvalidMetadata {
        key,
        reason: reason.to_string(),
    };
    if client == 0 {
        return Err(invalid(CLIENT_ID_KEY, "0 is not a client id"));
    }
    if seq == 0 {
        return Err(invalid(CLIENT_SEQ_KEY, "writes are numbered from 1"));
    }
    let ack = ack.unwrap_or(1);
    if ack == 0 || ack > seq {
        return Err(invalid(
            CLIENT_ACK_KEY,
            "must be between 1 and the write's own number",
        ));
    }
    Ok(Some(ClientWrite { client, seq, ack }))
}

/// The minimum revision a Range's metadata asks for, if any.
pub fn min_revision(metadata: &MetadataMap) -> Result<Option<i64>, ApiError> {
    match number::<i64>(metadata, MIN_REVISION_KEY)? {
        Some(revision) if revision < 0 => Err(ApiError::InvalidMetadata {
            key: MIN_REVISION_KEY,
            reason: "a revision is never negative".to_string(),
        }),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(pairs: &[(&'static str, &'static str)]) -> MetadataMap {
        let mut map = MetadataMap::new();
        for (key, value) in pairs {
            map.insert(*key, value.parse().expect("ASCII value"));
        }
        map
    }

    #[test]
    fn a_plain_etcd_request_has_no_numbered_write_and_no_min_revision() {
        assert_eq!(numbered_write(&metadata(&[])), Ok(None));
        assert_eq!(min_revision(&metadata(&[])), Ok(None));
    }

    #[test]
    fn a_numbered_write_is_read_with_its_ack_defaulting_to_one() {
        let parsed = numbered_write(&metadata(&[(CLIENT_ID_KEY, "42"), (CLIENT_SEQ_KEY, "7")]));
        assert_eq!(
            parsed,
            Ok(Some(ClientWrite {
                client: 42,
                seq: 7,
                ack: 1
            }))
        );
        let parsed = numbered_write(&metadata(&[
            (CLIENT_ID_KEY, "42"),
            (CLIENT_SEQ_KEY, "7"),
            (CLIENT_ACK_KEY, "7"),
        ]));
        assert_eq!(parsed.expect("valid").expect("numbered").ack, 7);
    }

    #[test]
    fn malformed_metadata_is_refused_naming_the_key() {
        let cases: &[(&[(&'static str, &'static str)], &str)] = &[
            (
                &[(CLIENT_ID_KEY, "x"), (CLIENT_SEQ_KEY, "1")],
                CLIENT_ID_KEY,
            ),
            (
                &[(CLIENT_ID_KEY, "0"), (CLIENT_SEQ_KEY, "1")],
                CLIENT_ID_KEY,
            ),
            (&[(CLIENT_ID_KEY, "5")], CLIENT_SEQ_KEY),
            (&[(CLIENT_SEQ_KEY, "5")], CLIENT_SEQ_KEY),
            (
                &[(CLIENT_ID_KEY, "5"), (CLIENT_SEQ_KEY, "0")],
                CLIENT_SEQ_KEY,
            ),
            (
                &[
                    (CLIENT_ID_KEY, "5"),
                    (CLIENT_SEQ_KEY, "2"),
                    (CLIENT_ACK_KEY, "3"),
                ],
                CLIENT_ACK_KEY,
            ),
            (&[(CLIENT_ACK_KEY, "3")], CLIENT_SEQ_KEY),
        ];
        for (pairs, key) in cases {
            let error = numbered_write(&metadata(pairs)).expect_err("refused");
            assert!(error.to_string().contains(key), "{pairs:?}: {error}");
        }
        let error = min_revision(&metadata(&[(MIN_REVISION_KEY, "-1")])).expect_err("refused");
        assert!(error.to_string().contains(MIN_REVISION_KEY));
        let error = min_revision(&metadata(&[(MIN_REVISION_KEY, "ten")])).expect_err("refused");
        assert!(error.to_string().contains(MIN_REVISION_KEY));
    }
}
