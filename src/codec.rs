//! The one binary format for our own data (bincode over serde): Raft log entries, votes and
//! snapshots on disk, and the openraft messages inside the peer service's opaque payloads.

use std::io;

use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// `value` in a buffer of exactly its size. Sized by a counting pass first: bincode's own
/// `encode_to_vec` grows an empty buffer by doubling, six reallocations and copies for a log
/// entry carrying a 256-byte value, 1.5% of the members' CPU at put-1000 in the log append alone
/// (bench/results/2026-12-05-sized-encode.md).
pub fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, bincode::config::standard())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut buffer = Vec::with_capacity(size.bytes_written);
    encode_into(value, &mut buffer)?;
    debug_assert_eq!(
        buffer.len(),
        size.bytes_written,
        "the counting pass sized it"
    );
    Ok(buffer)
}

/// [`encode`] appended to `buffer`, which the caller may have sized up front.
pub fn encode_into<T: Serialize>(value: &T, buffer: &mut Vec<u8>) -> io::Result<()> {
    bincode::serde::encode_into_std_write(value, buffer, bincode::config::standard())
        .map(|_| ())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// [`encode`] written to `writer` (buffer it: the encoder makes many small writes).
pub fn encode_to_writer<T: Serialize>(value: &T, writer: &mut impl io::Write) -> io::Result<()> {
    bincode::serde::encode_into_std_write(value, writer, bincode::config::standard())
        .map(|_| ())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Bytes that encode exactly as a `Vec<u8>` (or `&[u8]`) does, a length and then the bytes, but
/// in one write instead of one call per byte: for bulk data such as snapshots.
pub struct Bytes<'a>(pub &'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        bytes::serialize(self.0, serializer)
    }
}

/// `#[serde(with = "crate::codec::bytes")]` on a `Vec<u8>` field: encoded exactly as the plain
/// `Vec<u8>` is (in bincode, a length and then the bytes; in JSON, an array of numbers), so data
/// written before stays readable, but written and read in one piece instead of one serde call per
/// byte. Keys and values of every log entry and stored version pass through here.
pub mod bytes {
    use std::fmt;

    use serde::Deserializer;
    use serde::Serializer;
    use serde::de::SeqAccess;
    use serde::de::Visitor;

    pub fn serialize<S: Serializer>(value: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            formatter.write_str("bytes")
        }

        fn visit_bytes<E: serde::de::Error>(self, value: &[u8]) -> Result<Vec<u8>, E> {
            Ok(value.to_vec())
        }

        fn visit_byte_buf<E: serde::de::Error>(self, value: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(value)
        }

        /// Formats without a bytes type (JSON) hand over a sequence of numbers.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
            while let Some(byte) = seq.next_element::<u8>()? {
                bytes.push(byte);
            }
            Ok(bytes)
        }
    }
}

/// Decodes a whole buffer: trailing bytes mean corruption or a format mismatch, never ignored.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    whole(value, read, bytes)
}

/// [`decode`] into a value that borrows from `bytes` (its `&[u8]` fields point into them), so
/// that reading a field or two copies nothing.
pub fn decode_borrowed<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> io::Result<T> {
    let (value, read) =
        bincode::serde::borrow_decode_from_slice(bytes, bincode::config::standard())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    whole(value, read, bytes)
}

fn whole<T>(value: T, read: usize, bytes: &[u8]) -> io::Result<T> {
    if read != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "trailing bytes after an encoded value: read {read} of {}",
                bytes.len()
            ),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Plain {
        key: Vec<u8>,
        revision: i64,
        value: Vec<u8>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct InOnePiece {
        #[serde(with = "bytes")]
        key: Vec<u8>,
        revision: i64,
        #[serde(with = "bytes")]
        value: Vec<u8>,
    }

    /// Log entries, snapshots and stored versions written with plain `Vec<u8>` fields must stay
    /// readable, and the other way round.
    #[test]
    fn bytes_fields_encode_and_decode_as_plain_vec_fields_do() {
        for length in [0usize, 1, 250, 251, 300, 70_000] {
            let key: Vec<u8> = (0..length).map(|i| (i % 251) as u8).collect();
            let value: Vec<u8> = key.iter().rev().copied().collect();
            let plain = Plain {
                key: key.clone(),
                revision: -5,
                value: value.clone(),
            };
            let fast = InOnePiece {
                key,
                revision: -5,
                value,
            };
            let plain_bytes = encode(&plain).expect("encode");
            assert_eq!(encode(&fast).expect("encode"), plain_bytes, "{length}");
            assert_eq!(decode::<InOnePiece>(&plain_bytes).expect("decode"), fast);
            let json = serde_json::to_string(&plain).expect("json");
            assert_eq!(serde_json::to_string(&fast).expect("json"), json);
            assert_eq!(
                serde_json::from_str::<InOnePiece>(&json).expect("from json"),
                fast
            );
        }
    }

    #[test]
    fn bytes_encode_as_a_vec_of_bytes_does() {
        for length in [0usize, 1, 250, 251, 300, 70_000] {
            let data: Vec<u8> = (0..length).map(|i| (i % 251) as u8).collect();
            assert_eq!(
                encode(&(Bytes(&data), 7u64)).expect("encode"),
                encode(&(data.clone(), 7u64)).expect("encode"),
                "{length} bytes"
            );
            let mut written = Vec::new();
            encode_to_writer(&Bytes(&data), &mut written).expect("write");
            assert_eq!(decode::<Vec<u8>>(&written).expect("decode"), data);
        }
    }

    /// The counting pass changes no byte of the format and leaves no spare room: what a log
    /// append writes and caches is exactly what bincode's own encoder gives.
    #[test]
    fn encode_gives_bincodes_bytes_in_a_buffer_of_exactly_their_size() {
        for length in [0usize, 1, 127, 128, 300, 70_000] {
            let value = InOnePiece {
                key: vec![7; length / 2],
                revision: i64::MIN + length as i64,
                value: vec![9; length],
            };
            let encoded = encode(&value).expect("encode");
            let reference = bincode::serde::encode_to_vec(&value, bincode::config::standard())
                .expect("reference encode");
            assert_eq!(encoded, reference, "{length}");
            assert_eq!(encoded.capacity(), encoded.len(), "{length}: sized exactly");
        }
    }
}
