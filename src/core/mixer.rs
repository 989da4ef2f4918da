//! Puts leg channels into the output layout.

/// How legs become channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// One channel per leg in leg order: two legs give stereo (first left, second right).
    #[default]
    Stereo,
    /// All legs summed into one channel, saturating at the 16-bit limits.
    Mono,
    /// One file per leg (the caller writes each plane to its own file).
    Separate,
}

impl Layout {
    /// Channels in the mixed output for `legs` legs (per file for `Separate`).
    pub fn channels(self, legs: usize) -> u16 {
        match self {
            Layout::Stereo => legs.max(1) as u16,
            Layout::Mono | Layout::Separate => 1,
        }
    }

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Stereo => "stereo",
            Layout::Mono => "mono",
            Layout::Separate => "separate",
        }
    }
}

/// Interleaves (stereo) or sums (mono) equal-length planes, appending to `out`.
pub fn mix(layout: Layout, planes: &[&[i16]], out: &mut Vec<i16>) {
    let frames = planes.first().map_or(0, |p| p.len());
    debug_assert!(planes.iter().all(|p| p.len() == frames), "every leg yields the same frames");
    match (layout, planes) {
        (_, [only]) => out.extend_from_slice(only),
        (Layout::Stereo, [left, right]) => out.extend(left.iter().zip(right.iter()).flat_map(|(&l, &r)| [l, r])),
        (Layout::Stereo, _) => {
            let start = out.len();
            let channels = planes.len();
            out.resize(start + frames * channels, 0);
            for (c, plane) in planes.iter().enumerate() {
                for (frame, &s) in out[start..].chunks_exact_mut(channels).zip(plane.iter()) {
                    frame[c] = s;
                }
            }
        }
        // Two legs: saturating add is exactly the clamped sum.
        (Layout::Mono | Layout::Separate, [a, b]) => {
            out.extend(a.iter().zip(b.iter()).map(|(&a, &b)| a.saturating_add(b)))
        }
        (Layout::Mono | Layout::Separate, _) => {
            out.reserve(frames);
            for i in 0..frames {
                let sum: i32 = planes.iter().map(|p| i32::from(p[i])).sum();
                out.push(sum.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stereo_interleaves_in_leg_order() {
        let mut out = Vec::new();
        mix(Layout::Stereo, &[&[1, 2], &[-1, -2]], &mut out);
        assert_eq!(out, [1, -1, 2, -2]);
    }

    #[test]
    fn three_legs_interleave_and_sum() {
        let mut out = Vec::new();
        mix(Layout::Stereo, &[&[1, 2], &[3, 4], &[5, 6]], &mut out);
        assert_eq!(out, [1, 3, 5, 2, 4, 6]);
        out.clear();
        mix(Layout::Mono, &[&[30000, 1], &[30000, 2], &[-5, 3]], &mut out);
        assert_eq!(out, [i16::MAX, 6]);
    }

    #[test]
    fn mono_saturates() {
        let mut out = Vec::new();
        mix(Layout::Mono, &[&[30000, -30000, 5], &[30000, -30000, 6]], &mut out);
        assert_eq!(out, [i16::MAX, i16::MIN, 11]);
    }
}
