//! TiDB's memcomparable byte encoding (client-go `util/codec.EncodeBytes`).
//!
//! PD stores region boundaries of transactional key spaces in this form (API
//! V1 txn mode, and every API V2 key space), so the region cache must encode
//! keys before asking PD and decode the boundaries it gets back.
//!
//! The data is cut into groups of 8 bytes; each group is written padded with
//! `0x00` to 8 bytes and followed by a marker `0xFF - pad`. The last group is
//! always padded (an input whose length is a multiple of 8 gets an extra,
//! fully padded group), so the encoding is self-delimiting and byte order of
//! encodings equals byte order of inputs.
//!
//! ```
//! use tikv_core::key::memcomparable::{decode_bytes, encode_bytes};
//! assert_eq!(encode_bytes(&[1, 2, 3]), [1, 2, 3, 0, 0, 0, 0, 0, 0xFA]);
//! let enc = encode_bytes(b"hello world");
//! assert_eq!(decode_bytes(&enc).unwrap(), (b"hello world".to_vec(), enc.len()));
//! ```

/// Data bytes per group.
const GROUP: usize = 8;
/// Marker of a full group (no padding).
const MARKER: u8 = 0xFF;
/// Padding byte of the ascending encoding.
const PAD: u8 = 0x00;

/// Length of the encoding of `len` data bytes.
pub fn encoded_len(len: usize) -> usize {
    (len / GROUP + 1) * (GROUP + 1)
}

/// Appends the ascending encoding of `data` to `out`.
pub fn encode_bytes_into(out: &mut Vec<u8>, data: &[u8]) {
    out.reserve(encoded_len(data.len()));
    let mut chunks = data.chunks_exact(GROUP);
    for chunk in &mut chunks {
        out.extend_from_slice(chunk);
        out.push(MARKER);
    }
    let rest = chunks.remainder();
    let pad = GROUP - rest.len();
    out.extend_from_slice(rest);
    out.extend(std::iter::repeat_n(PAD, pad));
    // `pad` is 1..=8, so the marker is 0xF7..=0xFE.
    out.push(MARKER - pad as u8);
}

/// The ascending memcomparable encoding of `data`.
pub fn encode_bytes(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(data.len()));
    encode_bytes_into(&mut out, data);
    out
}

/// The descending encoding (every byte of the ascending one inverted), as
/// TiDB's `EncodeBytesDesc`: sorts in reverse order of the inputs.
pub fn encode_bytes_desc(data: &[u8]) -> Vec<u8> {
    let mut out = encode_bytes(data);
    out.iter_mut().for_each(|b| *b = !*b);
    out
}

/// A memcomparable value that does not decode; the reason. It becomes
/// [`crate::Error::MalformedResponse`] (the keys come from the network).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MalformedKey(pub String);

/// Decodes one ascending-encoded value from the front of `data`.
///
/// Returns the value and how many bytes of `data` it used (trailing bytes are
/// left to the caller). Truncated groups, a marker claiming more than 8 pad
/// bytes, and non-zero padding are all [`MalformedKey`], as client-go's
/// `DecodeBytes` rejects them: these keys come from PD and TiKV.
pub fn decode_bytes(data: &[u8]) -> Result<(Vec<u8>, usize), MalformedKey> {
    decode(data, false)
}

/// Decodes one descending-encoded value (see [`encode_bytes_desc`]).
pub fn decode_bytes_desc(data: &[u8]) -> Result<(Vec<u8>, usize), MalformedKey> {
    decode(data, true)
}

fn decode(data: &[u8], desc: bool) -> Result<(Vec<u8>, usize), MalformedKey> {
    let mut out = Vec::with_capacity(data.len() / (GROUP + 1) * GROUP);
    let mut groups = data.chunks(GROUP + 1);
    let mut used = 0;
    loop {
        let Some(group) = groups.next() else {
            return Err(MalformedKey(format!(
                "input ends after {used} bytes without a final group"
            )));
        };
        let (bytes, marker) = match group.split_last() {
            Some((&marker, bytes)) if bytes.len() == GROUP => (bytes, marker),
            _ => {
                return Err(MalformedKey(format!("truncated group at offset {used}")));
            }
        };
        let marker = if desc { !marker } else { marker };
        let pad = usize::from(MARKER - marker);
        if pad > GROUP {
            return Err(MalformedKey(format!(
                "invalid marker {marker:#04x} at offset {}",
                used + GROUP
            )));
        }
        let (real, padding) = bytes.split_at(GROUP - pad);
        let pad_byte = if desc { !PAD } else { PAD };
        if padding.iter().any(|&b| b != pad_byte) {
            return Err(MalformedKey(format!("non-zero padding in group at offset {used}")));
        }
        out.extend_from_slice(real);
        used += GROUP + 1;
        if pad != 0 {
            break;
        }
    }
    if desc {
        out.iter_mut().for_each(|b| *b = !*b);
    }
    Ok((out, used))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn known_encodings() {
        // The examples from client-go's EncodeBytes documentation.
        assert_eq!(encode_bytes(&[]), [0, 0, 0, 0, 0, 0, 0, 0, 247]);
        assert_eq!(encode_bytes(&[1, 2, 3]), [1, 2, 3, 0, 0, 0, 0, 0, 250]);
        assert_eq!(encode_bytes(&[1, 2, 3, 0]), [1, 2, 3, 0, 0, 0, 0, 0, 251]);
        assert_eq!(
            encode_bytes(&[1, 2, 3, 4, 5, 6, 7, 8]),
            [1, 2, 3, 4, 5, 6, 7, 8, 255, 0, 0, 0, 0, 0, 0, 0, 0, 247]
        );
        assert_eq!(encoded_len(0), 9);
        assert_eq!(encoded_len(8), 18);
        assert_eq!(encode_bytes_desc(&[]), [255, 255, 255, 255, 255, 255, 255, 255, 8]);
    }

    fn random_bytes(rng: &mut Rng) -> Vec<u8> {
        let len = rng.gen_range(0, 30) as usize;
        // A small alphabet makes shared prefixes and 0x00/0xFF bytes common,
        // which is where an order-breaking bug would show.
        (0..len)
            .map(|_| match rng.gen_range(0, 4) {
                0 => 0x00,
                1 => 0xFF,
                2 => 0x01,
                _ => rng.gen_range(0, 256) as u8,
            })
            .collect()
    }

    #[test]
    fn round_trip_with_trailing_bytes() {
        let mut rng = Rng::new(11);
        for _ in 0..2000 {
            let data = random_bytes(&mut rng);
            let mut enc = encode_bytes(&data);
            assert_eq!(enc.len(), encoded_len(data.len()));
            let n = enc.len();
            enc.extend_from_slice(b"tail");
            assert_eq!(decode_bytes(&enc).unwrap(), (data.clone(), n));
            let mut desc = encode_bytes_desc(&data);
            desc.push(0x42);
            assert_eq!(decode_bytes_desc(&desc).unwrap(), (data, n));
        }
    }

    #[test]
    fn order_is_preserved() {
        let mut rng = Rng::new(12);
        for _ in 0..5000 {
            let a = random_bytes(&mut rng);
            let b = random_bytes(&mut rng);
            assert_eq!(a.cmp(&b), encode_bytes(&a).cmp(&encode_bytes(&b)), "{a:?} vs {b:?}");
            assert_eq!(
                a.cmp(&b).reverse(),
                encode_bytes_desc(&a).cmp(&encode_bytes_desc(&b)),
                "desc {a:?} vs {b:?}"
            );
        }
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let cases: &[&[u8]] = &[
            &[],                                  // nothing
            &[1, 2, 3],                           // truncated group
            &[1, 2, 3, 0, 0, 0, 0, 0],            // group without marker
            &[1, 2, 3, 4, 5, 6, 7, 8, 255],       // full group, no final group
            &[0, 0, 0, 0, 0, 0, 0, 0, 0xF6],      // marker claims 9 pad bytes
            &[0, 0, 0, 0, 0, 0, 0, 0, 0x00],      // marker claims 255 pad bytes
            &[1, 2, 3, 0, 0, 0, 0, 9, 250],       // non-zero padding
            &[1, 2, 3, 4, 5, 6, 7, 8, 255, 1, 2], // truncated second group
        ];
        for case in cases {
            match decode_bytes(case) {
                Err(MalformedKey(_)) => {}
                other => panic!("{case:?} decoded to {other:?}"),
            }
        }
        assert!(decode_bytes_desc(&[0xFF; 9]).is_err(), "desc marker claims 255 pad bytes");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = Rng::new(13);
        for _ in 0..5000 {
            let len = rng.gen_range(0, 40) as usize;
            let data: Vec<u8> = (0..len).map(|_| rng.gen_range(0, 256) as u8).collect();
            if let Ok((value, used)) = decode_bytes(&data) {
                assert!(used <= data.len());
                assert_eq!(encode_bytes(&value), data[..used]);
            }
            let _ = decode_bytes_desc(&data);
        }
    }
}
