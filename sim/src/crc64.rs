//! CRC-64/XZ (ECMA-182 polynomial, reflected, init and xorout all ones): the
//! variant of the `crc64fast` crate TiKV uses for `RawChecksum`.
//!
//! TiKV's `checksum_crc64_xor` feeds the user key and then the value into a
//! fresh digest and XORs the digest into the running checksum, so the result
//! does not depend on iteration order.

/// The reflected ECMA-182 polynomial.
const POLY: u64 = 0xC96C_5795_D787_0F42;

const TABLE: [u64; 256] = build_table();

const fn build_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ POLY } else { crc >> 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// An in-progress CRC-64/XZ computation (like `crc64fast::Digest`).
#[derive(Clone, Debug)]
pub struct Digest {
    state: u64,
}

impl Default for Digest {
    fn default() -> Digest {
        Digest::new()
    }
}

impl Digest {
    /// A fresh digest.
    pub fn new() -> Digest {
        Digest { state: !0 }
    }

    /// Feeds bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        let mut crc = self.state;
        for &b in bytes {
            crc = TABLE[((crc ^ u64::from(b)) & 0xFF) as usize] ^ (crc >> 8);
        }
        self.state = crc;
    }

    /// The checksum of everything written so far.
    pub fn sum64(&self) -> u64 {
        !self.state
    }
}

/// TiKV's `checksum_crc64_xor`: `checksum ^ crc64(key ++ value)`.
///
/// ```
/// use tikv_sim::crc64::checksum_crc64_xor;
/// let one = checksum_crc64_xor(0, b"k", b"v");
/// assert_eq!(checksum_crc64_xor(one, b"k", b"v"), 0);
/// ```
pub fn checksum_crc64_xor(checksum: u64, key: &[u8], value: &[u8]) -> u64 {
    let mut d = Digest::new();
    d.write(key);
    d.write(value);
    checksum ^ d.sum64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_values() {
        // The CRC catalogue's check value for CRC-64/XZ.
        let mut d = Digest::new();
        d.write(b"123456789");
        assert_eq!(d.sum64(), 0x995D_C9BB_DF19_39FA);
        // crc64fast's documented example, written in two pieces.
        let mut d = Digest::new();
        d.write(b"hello ");
        d.write(b"world!");
        assert_eq!(d.sum64(), 0x8483_C0FA_3260_7D61);
        assert_eq!(Digest::new().sum64(), 0);
    }
}
