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
