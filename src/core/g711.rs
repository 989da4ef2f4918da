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
