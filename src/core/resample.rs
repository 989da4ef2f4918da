//! Integer-ratio resampling between the recording rates (8, 16 and 48 kHz).
//!
//! A windowed-sinc low-pass FIR in polyphase form: upsampling by `L` computes only the output
//! phases (no zero-stuffed multiplies), downsampling by `M` only the kept outputs. The filter
//! keeps its history across calls, so a leg's packets join without clicks; [`Resampler::reset`]
//! forgets it at a discontinuity. Output length is always input length × ratio (exactly, for
//! inputs that are whole multiples of `M`), so a leg stays 1:1 with wall-clock time.

/// Taps per output phase. 24 gives > 60 dB stop-band with a Blackman window: more than
/// narrow-band speech needs, at a few thousand multiplies per 20 ms packet.
const TAPS_PER_PHASE: usize = 24;

/// Why a resampler could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot resample {from} Hz to {to} Hz: only whole-number ratios between 8000, 16000 and 48000 Hz are supported"
)]
pub struct RatioError {
    pub from: u32,
    pub to: u32,
}

/// A resampler from one rate to another; the identity when they are equal.
#[derive(Debug, Clone)]
pub struct Resampler {
    up: usize,
    down: usize,
    /// Per output phase, the taps that meet the window (oldest input first): `up` rows when
    /// interpolating, one row when decimating.
    phases: Vec<Vec<f32>>,
    /// The input window, written twice (at `i` and `i + n`) so the newest `n` inputs are always
    /// the contiguous slice `ring[at..at + n]`: no shifting per sample.
    ring: Vec<f32>,
    at: usize,
    /// Inputs seen since the last output while decimating (0..down).
    phase: usize,
}

impl Resampler {
    /// A resampler from `from` Hz to `to` Hz.
    pub fn new(from: u32, to: u32) -> Result<Self, RatioError> {
        let err = RatioError { from, to };
        if from == 0 || to == 0 {
            return Err(err);
        }
        let (up, down) = if to >= from {
            if !to.is_multiple_of(from) {
                return Err(err);
            }
            ((to / from) as usize, 1)
        } else {
            if !from.is_multiple_of(to) {
                return Err(err);
            }
            (1, (from / to) as usize)
        };
        if up > 6 || down > 6 {
            return Err(err);
        }
        let factor = up.max(down);
        let mut phases = Vec::new();
        let mut n = 0;
        if factor > 1 {
            let h = design(factor);
            n = h.len() / up;
            // Output phase p of input x[i] is the sum over k of h[k·up + p] · x[i − k]; window
            // slot j holds x[i − (n − 1 − j)]. Each interpolator phase carries 1/up of the gain.
            let gain = up as f32;
            phases = (0..up).map(|p| (0..n).map(|j| h[(n - 1 - j) * up + p] * gain).collect()).collect();
        }
        Ok(Resampler { up, down, phases, ring: vec![0.0; 2 * n], at: 0, phase: 0 })
    }

    /// Whether output equals input.
    pub fn is_identity(&self) -> bool {
        self.up == 1 && self.down == 1
    }

    /// Forgets the history: the next input starts from silence.
    pub fn reset(&mut self) {
        self.ring.iter_mut().for_each(|h| *h = 0.0);
        self.at = 0;
        self.phase = 0;
    }

    /// Resamples `input`, appending to `out`.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        if self.is_identity() {
            out.extend_from_slice(input);
            return;
        }
        let n = self.ring.len() / 2;
        out.reserve(input.len() * self.up / self.down + 1);
        for &x in input {
            let v = f32::from(x);
            self.ring[self.at] = v;
            self.ring[self.at + n] = v;
            self.at += 1;
            if self.at == n {
                self.at = 0;
            }
            let window = &self.ring[self.at..self.at + n];
            if self.up > 1 {
                for taps in &self.phases {
                    out.push(to_i16(dot(window, taps)));
                }
            } else {
                self.phase += 1;
                if self.phase == self.down {
                    self.phase = 0;
                    out.push(to_i16(dot(window, &self.phases[0])));
                }
            }
        }
    }
}

/// A dot product in eight lanes, which the compiler keeps in vector registers.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Blackman-windowed sinc with its cut-off a little below the lower rate's Nyquist frequency.
fn design(factor: usize) -> Vec<f32> {
    let len = TAPS_PER_PHASE * factor;
    let cutoff = 0.9 / (2.0 * factor as f64); // cycles per sample at the higher rate
    let mid = (len - 1) as f64 / 2.0;
    let mut h: Vec<f64> = (0..len)
        .map(|i| {
            let t = i as f64 - mid;
            let sinc = if t == 0.0 {
                2.0 * cutoff
            } else {
                (2.0 * std::f64::consts::PI * cutoff * t).sin() / (std::f64::consts::PI * t)
            };
            let w = 0.42 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / (len - 1) as f64).cos()
                + 0.08 * (4.0 * std::f64::consts::PI * i as f64 / (len - 1) as f64).cos();
            sinc * w
        })
        .collect();
    // Unity gain at DC for the decimator; × factor for the interpolator's phases (each phase
    // sums to about 1/factor of the whole).
    let sum: f64 = h.iter().sum();
    h.iter_mut().for_each(|v| *v /= sum);
    h.into_iter().map(|v| v as f32).collect()
}

/// Rounds half away from zero; `as` saturates at the i16 range (no libm call on the hot path).
fn to_i16(v: f32) -> i16 {
    (v + 0.5f32.copysign(v)) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, hz: f64, n: usize, amp: f64) -> Vec<i16> {
        (0..n).map(|i| (amp * (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate)).sin()) as i16).collect()
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn lengths_follow_the_ratio_exactly_across_calls() {
        for (from, to) in [(8000, 16000), (8000, 48000), (16000, 8000), (48000, 8000), (48000, 16000), (16000, 48000)] {
            let mut r = Resampler::new(from, to).unwrap();
            let mut out = Vec::new();
            let frame = (from / 50) as usize; // 20 ms
            for _ in 0..10 {
                r.process(&vec![0; frame], &mut out);
            }
            assert_eq!(out.len(), frame * 10 * to as usize / from as usize, "{from}->{to}");
        }
    }

    #[test]
    fn a_tone_in_the_pass_band_keeps_its_level_and_one_above_the_lower_nyquist_is_removed() {
        // 1 kHz passes every conversion; 6 kHz cannot exist at 8 kHz and must be filtered out.
        let mut up = Resampler::new(8000, 48000).unwrap();
        let mut out = Vec::new();
        up.process(&tone(8000, 1000.0, 8000, 10000.0), &mut out);
        let tail = &out[4800..];
        let ratio = rms(tail) / (10000.0 / 2f64.sqrt());
        assert!((0.97..1.03).contains(&ratio), "1 kHz level after 8k→48k: {ratio}");

        let mut down = Resampler::new(48000, 8000).unwrap();
        let mut out = Vec::new();
        down.process(&tone(48000, 6000.0, 48000, 10000.0), &mut out);
        assert!(rms(&out[800..]) < 10000.0 * 0.01, "6 kHz leaked through 48k→8k: rms {}", rms(&out[800..]));
        let mut out = Vec::new();
        let mut down = Resampler::new(16000, 8000).unwrap();
        down.process(&tone(16000, 1000.0, 16000, 10000.0), &mut out);
        let ratio = rms(&out[800..]) / (10000.0 / 2f64.sqrt());
        assert!((0.97..1.03).contains(&ratio), "1 kHz level after 16k→8k: {ratio}");
    }

    #[test]
    fn output_is_the_same_whether_fed_at_once_or_a_packet_at_a_time() {
        let input = tone(8000, 440.0, 1600, 8000.0);
        let mut whole = Vec::new();
        Resampler::new(8000, 16000).unwrap().process(&input, &mut whole);
        let mut r = Resampler::new(8000, 16000).unwrap();
        let mut pieces = Vec::new();
        for c in input.chunks(160) {
            r.process(c, &mut pieces);
        }
        assert_eq!(whole, pieces);
    }

    #[test]
    fn only_supported_ratios_are_accepted() {
        assert!(Resampler::new(8000, 8000).unwrap().is_identity());
        for (f, t) in [(8000, 12000), (44100, 48000), (0, 8000), (8000, 96000)] {
            let e = Resampler::new(f, t).unwrap_err();
            assert!(e.to_string().contains("whole-number ratios"), "{e}");
        }
    }
}
