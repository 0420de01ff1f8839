//! The one binary format for our own data (bincode over serde): Raft log entries, votes and
//! snapshots on disk, and the openraft messages inside the peer service's opaque payloads.

use std::io;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
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
        serializer.serialize_bytes(self.0)
    }
}

/// Decodes a whole buffer: trailing bytes mean corruption or a format mismatch, never ignored.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
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
    use super::*;

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
}
