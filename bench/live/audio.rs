//! Speech-like test audio, made here so the benchmark needs no files: talk spurts of voiced
//! syllables (a glottal pulse train at a wandering pitch through two formant resonators, with a
//! syllable envelope) separated by short and phrase-long pauses. Real speech beats a tone: a tone
//! repeats every few samples, so misplaced audio could still match.

use callvault::core::g711;

/// A small deterministic generator (xorshift64*), so every run sends the same audio.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded; a zero seed is replaced (xorshift must not start at 0).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
}

/// A two-pole resonator (one formant).
struct Resonator {
    a1: f64,
    a2: f64,
    gain: f64,
    y1: f64,
    y2: f64,
}

impl Resonator {
    fn new(freq: f64, bandwidth: f64, rate: f64) -> Resonator {
        let r = (-std::f64::consts::PI * bandwidth / rate).exp();
        let theta = 2.0 * std::f64::consts::PI * freq / rate;
        Resonator { a1: 2.0 * r * theta.cos(), a2: -r * r, gain: 1.0 - r, y1: 0.0, y2: 0.0 }
    }
    fn step(&mut self, x: f64) -> f64 {
        let y = self.gain * x + self.a1 * self.y1 + self.a2 * self.y2;
        self.y2 = self.y1;
        self.y1 = y;
        y
    }
}

/// `seconds` of speech-like 16-bit audio at `rate` Hz.
pub fn speech(seconds: f64, rate: u32, seed: u64) -> Vec<i16> {
    let rate_f = f64::from(rate);
    let total = (seconds * rate_f) as usize;
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(total);
    let mut syllables_left = 0u32;
    while out.len() < total {
        if syllables_left == 0 {
            // A phrase pause, then a phrase of 4-9 syllables.
            let pause = (rng.range(0.3, 0.8) * rate_f) as usize;
            out.extend(std::iter::repeat_n(0i16, pause));
            syllables_left = 4 + (rng.next_u64() % 6) as u32;
            continue;
        }
        syllables_left -= 1;
        let len = (rng.range(0.12, 0.3) * rate_f) as usize;
        let mut f1 = Resonator::new(rng.range(300.0, 800.0), 90.0, rate_f);
        let mut f2 = Resonator::new(rng.range(900.0, 2300.0), 120.0, rate_f);
        let f0_start = rng.range(95.0, 210.0);
        let f0_end = f0_start * rng.range(0.8, 1.1);
        let loudness = rng.range(0.4, 1.0);
        let mut phase = 0.0f64;
        for i in 0..len {
            let t = i as f64 / len as f64;
            let f0 = f0_start + (f0_end - f0_start) * t;
            phase += f0 / rate_f;
            // A glottal pulse at each period, a little breath noise in between.
            let pulse = if phase >= 1.0 {
                phase -= 1.0;
                1.0
            } else {
                0.0
            };
            let src = pulse + 0.02 * (rng.unit() - 0.5);
            let v = f2.step(f1.step(src));
            let envelope = (std::f64::consts::PI * t).sin().powf(0.7);
            out.push((v * envelope * loudness * 60_000.0).clamp(-32_000.0, 32_000.0) as i16);
        }
        let gap = (rng.range(0.04, 0.12) * rate_f) as usize;
        out.extend(std::iter::repeat_n(0i16, gap));
    }
    out.truncate(total);
    out
}

/// G.711 encoding by nearest decoded value, so that decoding gives back the closest sample the
/// codec can carry (built once: a sorted table of the 256 code points).
pub struct G711Encoder {
    sorted: Vec<(i16, u8)>,
}

impl G711Encoder {
    /// µ-law (`alaw` false) or A-law.
    pub fn new(alaw: bool) -> G711Encoder {
        let table = if alaw { &g711::ALAW_TABLE } else { &g711::ULAW_TABLE };
        let mut sorted: Vec<(i16, u8)> = (0..=255u8).map(|b| (table[usize::from(b)], b)).collect();
        sorted.sort();
        sorted.dedup_by_key(|e| e.0);
        G711Encoder { sorted }
    }
    /// The code point decoding closest to `sample`.
    pub fn encode(&self, sample: i16) -> u8 {
        let i = self.sorted.partition_point(|e| e.0 < sample);
        match (self.sorted.get(i.wrapping_sub(1)), self.sorted.get(i)) {
            (Some(lo), Some(hi)) => {
                if i32::from(sample) - i32::from(lo.0) <= i32::from(hi.0) - i32::from(sample) {
                    lo.1
                } else {
                    hi.1
                }
            }
            (Some(only), None) | (None, Some(only)) => only.1,
            (None, None) => 0xff,
        }
    }
}
