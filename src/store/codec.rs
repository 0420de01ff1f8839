//! sled's errors in the `io::Error` form openraft's storage traits speak.

use std::io;

pub(crate) fn sled_error(error: sled::Error) -> io::Error {
    match error {
        sled::Error::Io(e) => e,
        other => io::Error::other(other),
    }
}
