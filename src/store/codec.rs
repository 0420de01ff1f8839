//! sled's errors in the `io::Error` form openraft's storage traits speak, and the CRC-32C that
//! checks what we write to disk ourselves.

use std::io;

pub(crate) fn sled_error(error: sled::Error) -> io::Error {
    match error {
        sled::Error::Io(e) => e,
        other => io::Error::other(other),
    }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as etcd's HashKV uses.
pub(crate) struct Crc32c(u32);

impl Default for Crc32c {
    fn default() -> Self {
        Crc32c(!0)
    }
}

const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

impl Crc32c {
    /// With the CPU's CRC32 instruction where it has one (SSE4.2: eight bytes per instruction;
    /// the table takes one per lookup and was 1.4% of a loaded member's CPU in the log's
    /// checksums), else the table.
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU has SSE4.2, checked just above.
            self.0 = unsafe { update_sse42(self.0, bytes) };
            return;
        }
        self.0 = update_table(self.0, bytes);
    }

    pub(crate) fn finish(&self) -> u32 {
        !self.0
    }
}

fn update_table(mut crc: u32, bytes: &[u8]) -> u32 {
    for byte in bytes {
        crc = CRC32C_TABLE[((crc ^ u32::from(*byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// The SSE4.2 `crc32` instruction computes this same CRC (Castagnoli, reflected), one step of
/// [`update_table`] per byte, or eight bytes (little-endian) at once.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn update_sse42(crc: u32, bytes: &[u8]) -> u32 {
    use std::arch::x86_64::_mm_crc32_u8;
    use std::arch::x86_64::_mm_crc32_u64;
    let mut chunks = bytes.chunks_exact(8);
    let mut wide = u64::from(crc);
    for chunk in &mut chunks {
        wide = _mm_crc32_u64(wide, u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
    }
    let mut crc = wide as u32;
    for &byte in chunks.remainder() {
        crc = _mm_crc32_u8(crc, byte);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        let mut crc = Crc32c::default();
        crc.update(b"123456789");
        assert_eq!(crc.finish(), 0xE306_9283);
        assert_eq!(!update_table(!0, b"123456789"), 0xE306_9283);
    }

    /// The instruction and the table agree at every length and alignment, across updates.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_crc32_instruction_agrees_with_the_table() {
        if !std::arch::is_x86_feature_detected!("sse4.2") {
            return;
        }
        let bytes: Vec<u8> = (0..300u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for start in 0..9 {
            for end in start..bytes.len() {
                let part = &bytes[start..end];
                // SAFETY: SSE4.2 is present, checked above.
                let fast = unsafe { update_sse42(0x1234_5678, part) };
                assert_eq!(
                    fast,
                    update_table(0x1234_5678, part),
                    "bytes {start}..{end}"
                );
            }
        }
    }
}
