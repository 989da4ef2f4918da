//! G.711 µ-law and A-law expansion (ITU-T G.711), bit-exact with the ITU formulas and sox.

/// Expands one µ-law byte to 16-bit linear PCM.
pub const fn ulaw_to_linear(byte: u8) -> i16 {
    let u = !byte;
    let exponent = (u >> 4) & 0x07;
    let mantissa = (u & 0x0f) as i16;
    // Bias 0x84 (132) is added at encode time; undo it after shifting.
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    if u & 0x80 != 0 { -magnitude } else { magnitude }
}

/// Expands one A-law byte to 16-bit linear PCM.
pub const fn alaw_to_linear(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let exponent = (a >> 4) & 0x07;
    let mantissa = (a & 0x0f) as i16;
    let magnitude = if exponent == 0 { (mantissa << 4) + 8 } else { ((mantissa << 4) + 0x108) << (exponent - 1) };
    if a & 0x80 != 0 { magnitude } else { -magnitude }
}

const fn table(alaw: bool) -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if alaw { alaw_to_linear(i as u8) } else { ulaw_to_linear(i as u8) };
        i += 1;
    }
    t
}

/// µ-law expansion table, built at compile time.
pub static ULAW_TABLE: [i16; 256] = table(false);
/// A-law expansion table, built at compile time.
pub static ALAW_TABLE: [i16; 256] = table(true);

/// Compresses one 16-bit linear sample to µ-law (ITU-T G.711: 14-bit magnitude, bias 33,
/// segment and 4-bit mantissa, bits inverted).
pub const fn linear_to_ulaw(sample: i16) -> u8 {
    let mut v = (sample >> 2) as i32;
    let mask: u8 = if v < 0 {
        v = -v;
        0x7f
    } else {
        0xff
    };
    if v > 8159 {
        v = 8159;
    }
    v += 0x21;
    // Segment: the position of the highest set bit above bit 5 (v is 0x21..=0x2000).
    let seg = (31 - (v as u32).leading_zeros()) as i32 - 5;
    let u = if seg >= 8 { 0x7f } else { ((seg << 4) | ((v >> (seg + 1)) & 0x0f)) as u8 };
    u ^ mask
}

/// Compresses one 16-bit linear sample to A-law (ITU-T G.711: 13-bit, segments, even bits
/// inverted).
pub const fn linear_to_alaw(sample: i16) -> u8 {
    let mut v = (sample >> 3) as i32;
    let mask: u8 = if v >= 0 {
        0xd5
    } else {
        v = -v - 1;
        0x55
    };
    // Segment 0 and 1 share the first step size; above, one segment per doubling.
    let seg = if v < 32 { 0 } else { (31 - (v as u32).leading_zeros()) as i32 - 4 };
    let a = if seg >= 8 {
        0x7f
    } else if seg < 2 {
        ((seg << 4) | ((v >> 1) & 0x0f)) as u8
    } else {
        ((seg << 4) | ((v >> seg) & 0x0f)) as u8
    };
    a ^ mask
}

/// Decodes a G.711 payload, appending one sample per byte.
pub fn decode(table: &[i16; 256], payload: &[u8], out: &mut Vec<i16>) {
    out.extend(payload.iter().map(|&b| table[usize::from(b)]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_match_itu_tables() {
        // Values from ITU-T G.711 / sox: 0xff and 0x7f are the two µ-law zeros.
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(ulaw_to_linear(0x7f), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xaa), 32256);
        assert_eq!(alaw_to_linear(0x2a), -32256);
    }

    #[test]
    fn tables_are_symmetric_and_monotone_in_magnitude() {
        for b in 0..=127u8 {
            assert_eq!(ULAW_TABLE[usize::from(b)], -ULAW_TABLE[usize::from(b | 0x80)]);
            assert_eq!(ALAW_TABLE[usize::from(b)], -ALAW_TABLE[usize::from(b | 0x80)]);
        }
    }
}

#[cfg(test)]
mod encode_tests {
    use super::*;

    #[test]
    fn compression_inverts_expansion_for_every_code() {
        for b in 0..=255u8 {
            let u = ulaw_to_linear(b);
            assert_eq!(ulaw_to_linear(linear_to_ulaw(u)), u, "µ-law {b:#04x}");
            let a = alaw_to_linear(b);
            assert_eq!(linear_to_alaw(a), b, "A-law {b:#04x}");
        }
        // Full scale saturates, never wraps.
        assert_eq!(ulaw_to_linear(linear_to_ulaw(i16::MAX)), 32124);
        assert_eq!(ulaw_to_linear(linear_to_ulaw(i16::MIN)), -32124);
        assert_eq!(alaw_to_linear(linear_to_alaw(i16::MAX)), 32256);
        assert_eq!(alaw_to_linear(linear_to_alaw(i16::MIN)), -32256);
    }

    #[test]
    fn compression_picks_the_nearest_code() {
        // Every linear value maps to a code whose expansion is no farther than the step size.
        for x in (i16::MIN..=i16::MAX).step_by(7) {
            let e = (i32::from(ulaw_to_linear(linear_to_ulaw(x))) - i32::from(x)).abs();
            let step = (i32::from(x).abs() / 16).max(4) + 8;
            assert!(e <= step.max(132), "µ-law {x}: error {e}");
            let e = (i32::from(alaw_to_linear(linear_to_alaw(x))) - i32::from(x)).abs();
            assert!(e <= (i32::from(x).abs() / 16).max(16) + 8, "A-law {x}: error {e}");
        }
    }
}
