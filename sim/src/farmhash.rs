//! FarmHash's 64-bit fingerprint (`util::Fingerprint64`, the `farmhashna`
//! variant): TiKV's `Key::gen_hash` over the raw key, which names keys in
//! the deadlock detector (`WaitForEntry.key_hash`, `Deadlock.deadlock_key_hash`).
//! client-go hashes its locked keys the same way to tell whether a deadlock
//! is retryable, so the model must produce the very same numbers.

const K0: u64 = 0xc3a5_c85c_97cb_3127;
const K1: u64 = 0xb492_b66f_be98_f273;
const K2: u64 = 0x9ae1_6a3b_2f90_404f;

fn word(s: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&s[at..at + 8]);
    u64::from_le_bytes(b)
}

fn half_word(s: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&s[at..at + 4]);
    u64::from(u32::from_le_bytes(b))
}

fn shift_mix(v: u64) -> u64 {
    v ^ (v >> 47)
}

/// Murmur-style mix of two words (`HashLen16` with a multiplier).
fn mix(u: u64, v: u64, mul: u64) -> u64 {
    let a = shift_mix((u ^ v).wrapping_mul(mul));
    shift_mix((v ^ a).wrapping_mul(mul)).wrapping_mul(mul)
}

fn up_to_16(s: &[u8]) -> u64 {
    let n = s.len() as u64;
    let mul = K2.wrapping_add(n.wrapping_mul(2));
    if s.len() >= 8 {
        let a = word(s, 0).wrapping_add(K2);
        let b = word(s, s.len() - 8);
        let c = b.rotate_right(37).wrapping_mul(mul).wrapping_add(a);
        let d = a.rotate_right(25).wrapping_add(b).wrapping_mul(mul);
        return mix(c, d, mul);
    }
    if s.len() >= 4 {
        let a = half_word(s, 0);
        return mix(n.wrapping_add(a << 3), half_word(s, s.len() - 4), mul);
    }
    if let (Some(&first), Some(&last)) = (s.first(), s.last()) {
        let middle = s[s.len() / 2];
        let y = u64::from(u32::from(first) + (u32::from(middle) << 8));
        let z = u64::from(s.len() as u32 + (u32::from(last) << 2));
        return shift_mix(y.wrapping_mul(K2) ^ z.wrapping_mul(K0)).wrapping_mul(K2);
    }
    K2
}

fn up_to_32(s: &[u8]) -> u64 {
    let n = s.len();
    let mul = K2.wrapping_add((n as u64).wrapping_mul(2));
    let a = word(s, 0).wrapping_mul(K1);
    let b = word(s, 8);
    let c = word(s, n - 8).wrapping_mul(mul);
    let d = word(s, n - 16).wrapping_mul(K2);
    mix(
        a.wrapping_add(b).rotate_right(43).wrapping_add(c.rotate_right(30)).wrapping_add(d),
        a.wrapping_add(b.wrapping_add(K2).rotate_right(18)).wrapping_add(c),
        mul,
    )
}

fn up_to_64(s: &[u8]) -> u64 {
    let n = s.len();
    let mul = K2.wrapping_add((n as u64).wrapping_mul(2));
    let a = word(s, 0).wrapping_mul(K2);
    let b = word(s, 8);
    let c = word(s, n - 8).wrapping_mul(mul);
    let d = word(s, n - 16).wrapping_mul(K2);
    let y = a.wrapping_add(b).rotate_right(43).wrapping_add(c.rotate_right(30)).wrapping_add(d);
    let z = mix(y, a.wrapping_add(b.wrapping_add(K2).rotate_right(18)).wrapping_add(c), mul);
    let e = word(s, 16).wrapping_mul(mul);
    let f = word(s, 24);
    let g = y.wrapping_add(word(s, n - 32)).wrapping_mul(mul);
    let h = z.wrapping_add(word(s, n - 24)).wrapping_mul(mul);
    mix(
        e.wrapping_add(f).rotate_right(43).wrapping_add(g.rotate_right(30)).wrapping_add(h),
        e.wrapping_add(f.wrapping_add(a).rotate_right(18)).wrapping_add(g),
        mul,
    )
}

/// `WeakHashLen32WithSeeds` over the four words at `s[at..at + 32]`.
fn weak_32(s: &[u8], at: usize, a: u64, b: u64) -> (u64, u64) {
    let (w, x, y, z) = (word(s, at), word(s, at + 8), word(s, at + 16), word(s, at + 24));
    let a = a.wrapping_add(w);
    let b = b.wrapping_add(a).wrapping_add(z).rotate_right(21);
    let c = a;
    let a = a.wrapping_add(x).wrapping_add(y);
    let b = b.wrapping_add(a.rotate_right(44));
    (a.wrapping_add(z), b.wrapping_add(c))
}

/// `Fingerprint64`.
pub(crate) fn fingerprint64(s: &[u8]) -> u64 {
    match s.len() {
        0..=16 => return up_to_16(s),
        17..=32 => return up_to_32(s),
        33..=64 => return up_to_64(s),
        _ => {}
    }
    const SEED: u64 = 81;
    let n = s.len();
    let mut x = SEED.wrapping_mul(K2).wrapping_add(word(s, 0));
    let mut y = SEED.wrapping_mul(K1).wrapping_add(113);
    let mut z = shift_mix(y.wrapping_mul(K2).wrapping_add(113)).wrapping_mul(K2);
    let (mut v, mut w) = ((0u64, 0u64), (0u64, 0u64));
    // Whole 64-byte blocks, leaving 1 to 64 bytes; the tail is the last 64.
    let blocks_end = ((n - 1) / 64) * 64;
    let mut at = 0;
    while at < blocks_end {
        x = x.wrapping_add(y).wrapping_add(v.0).wrapping_add(word(s, at + 8)).rotate_right(37);
        x = x.wrapping_mul(K1);
        y = y.wrapping_add(v.1).wrapping_add(word(s, at + 48)).rotate_right(42).wrapping_mul(K1);
        x ^= w.1;
        y = y.wrapping_add(v.0).wrapping_add(word(s, at + 40));
        z = z.wrapping_add(w.0).rotate_right(33).wrapping_mul(K1);
        v = weak_32(s, at, v.1.wrapping_mul(K1), x.wrapping_add(w.0));
        w = weak_32(s, at + 32, z.wrapping_add(w.1), y.wrapping_add(word(s, at + 16)));
        std::mem::swap(&mut x, &mut z);
        at += 64;
    }
    let mul = K1.wrapping_add((z & 0xff) << 1);
    let at = n - 64;
    w.0 = w.0.wrapping_add(((n - 1) & 63) as u64);
    v.0 = v.0.wrapping_add(w.0);
    w.0 = w.0.wrapping_add(v.0);
    x = x.wrapping_add(y).wrapping_add(v.0).wrapping_add(word(s, at + 8)).rotate_right(37);
    x = x.wrapping_mul(mul);
    y = y.wrapping_add(v.1).wrapping_add(word(s, at + 48)).rotate_right(42).wrapping_mul(mul);
    x ^= w.1.wrapping_mul(9);
    y = y.wrapping_add(v.0.wrapping_mul(9)).wrapping_add(word(s, at + 40));
    z = z.wrapping_add(w.0).rotate_right(33).wrapping_mul(mul);
    v = weak_32(s, at, v.1.wrapping_mul(mul), x.wrapping_add(w.0));
    w = weak_32(s, at + 32, z.wrapping_add(w.1), y.wrapping_add(word(s, at + 16)));
    std::mem::swap(&mut x, &mut z);
    mix(
        mix(v.0, w.0, mul).wrapping_add(shift_mix(y).wrapping_mul(K0)).wrapping_add(z),
        mix(v.1, w.1, mul).wrapping_add(x),
        mul,
    )
}

#[cfg(test)]
mod tests {
    use super::fingerprint64;

    /// Values of the reference implementation (client-go's `go-farm`,
    /// FarmHash's C++) for inputs of every length class.
    #[test]
    fn matches_the_reference_fingerprints() {
        let pattern = |len: usize| (0..len).map(|i| (i * 37 + 11) as u8).collect::<Vec<u8>>();
        for (len, expected) in [
            (0, 11_160_318_154_034_397_263u64),
            (1, 4_787_810_249_829_893_994),
            (3, 3_979_540_680_440_595_841),
            (4, 14_708_324_829_907_283_305),
            (7, 10_810_953_559_526_984_053),
            (8, 9_029_840_561_075_318_013),
            (16, 15_579_719_139_305_551_062),
            (17, 6_692_022_265_393_568_454),
            (32, 11_543_571_239_247_179_175),
            (33, 9_480_451_918_888_261_270),
            (64, 4_226_431_515_964_725),
            (65, 18_101_669_290_602_532_278),
            (127, 15_496_381_160_035_339_524),
            (128, 3_742_283_891_066_476_345),
            (129, 14_054_188_206_783_653_085),
        ] {
            assert_eq!(fingerprint64(&pattern(len)), expected, "length {len}");
        }
        assert_eq!(fingerprint64(b"a"), 12_917_804_110_809_363_939);
        assert_eq!(fingerprint64(b"hello word"), 2_862_784_602_449_412_590);
    }
}
