//! TiDB's memcomparable bytes encoding (`codec.EncodeBytes`, TiKV's
//! `MemComparableByteCodec`), used for region boundaries of API V2 and
//! transactional data.
//!
//! The input is cut into 8-byte groups; every group is written padded with
//! zeros to 8 bytes and followed by a marker byte `0xFF - pad`, where `pad` is
//! the number of zero bytes added. A group with marker `0xFF` is full and
//! another group follows; the last group always has `pad > 0` (an input whose
//! length is a multiple of 8 ends with an all-padding group, marker `0xF7`).
//! The encoding preserves byte-wise order, which is why TiKV uses it for keys.

const GROUP: usize = 8;
const MARKER: u8 = 0xFF;

/// Encodes `raw` in the memcomparable format.
///
/// ```
/// use tikv_sim::memcomparable::encode;
/// assert_eq!(encode(b""), vec![0, 0, 0, 0, 0, 0, 0, 0, 0xF7]);
/// assert_eq!(encode(b"a"), vec![b'a', 0, 0, 0, 0, 0, 0, 0, 0xF8]);
/// ```
pub fn encode(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity((raw.len() / GROUP + 1) * (GROUP + 1));
    let mut chunks = raw.chunks_exact(GROUP);
    for chunk in &mut chunks {
        out.extend_from_slice(chunk);
        out.push(MARKER);
    }
    let rest = chunks.remainder();
    let pad = GROUP - rest.len();
    out.extend_from_slice(rest);
    out.extend(std::iter::repeat_n(0u8, pad));
    // `pad` is 1..=8, so the marker is 0xF7..=0xFE.
    out.push(MARKER - pad as u8);
    out
}

/// Decodes one memcomparable-encoded byte string from the front of `encoded`.
/// Returns the raw bytes and the number of input bytes consumed, or `None` if
/// the input is truncated or malformed (bad marker, non-zero padding).
///
/// ```
/// use tikv_sim::memcomparable::{decode, encode};
/// let enc = encode(b"hello world");
/// assert_eq!(decode(&enc), Some((b"hello world".to_vec(), enc.len())));
/// assert_eq!(decode(b"short"), None);
/// ```
pub fn decode(encoded: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let group = encoded.get(pos..pos + GROUP + 1)?;
        let marker = group[GROUP];
        pos += GROUP + 1;
        if marker == MARKER {
            out.extend_from_slice(&group[..GROUP]);
            continue;
        }
        let pad = usize::from(MARKER - marker);
        if pad == 0 || pad > GROUP {
            return None;
        }
        let (data, padding) = group[..GROUP].split_at(GROUP - pad);
        if padding.iter().any(|&b| b != 0) {
            return None;
        }
        out.extend_from_slice(data);
        return Some((out, pos));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // Vectors from TiDB's codec tests.
        assert_eq!(encode(&[1, 2, 3]), vec![1, 2, 3, 0, 0, 0, 0, 0, 0xFA]);
        assert_eq!(encode(&[1, 2, 3, 0]), vec![1, 2, 3, 0, 0, 0, 0, 0, 0xFB]);
        assert_eq!(
            encode(&[1, 2, 3, 4, 5, 6, 7, 8]),
            vec![1, 2, 3, 4, 5, 6, 7, 8, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0xF7]
        );
        assert_eq!(
            encode(&[1, 2, 3, 4, 5, 6, 7, 8, 9]),
            vec![1, 2, 3, 4, 5, 6, 7, 8, 0xFF, 9, 0, 0, 0, 0, 0, 0, 0, 0xF8]
        );
    }

    #[test]
    fn preserves_order_and_round_trips() {
        let keys: Vec<&[u8]> = vec![
            b"",
            b"\0",
            b"\0\0",
            b"a",
            b"a\0",
            b"ab",
            b"abcdefgh",
            b"abcdefgh\0",
            b"abcdefghi",
            b"b",
        ];
        for w in keys.windows(2) {
            assert!(encode(w[0]) < encode(w[1]), "{:?} < {:?}", w[0], w[1]);
        }
        for k in keys {
            let e = encode(k);
            assert_eq!(decode(&e), Some((k.to_vec(), e.len())));
        }
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(decode(&[0, 0, 0, 0, 0, 0, 0, 0, 0xF0]), None);
        assert_eq!(decode(&[1, 0, 0, 0, 0, 0, 0, 1, 0xFE]), None);
        assert_eq!(decode(&[1, 2, 3, 4, 5, 6, 7, 8, 0xFF]), None);
    }
}
