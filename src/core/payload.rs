//! Payload maps: what each RTP payload type on a leg carries.
//!
//! Static types (RFC 3551) are known; dynamic ones (96–127) come from SDP or the operator
//! (`--pt 96=opus/48000/2`).

use std::fmt;

/// A media format we can recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// G.711 µ-law.
    Pcmu,
    /// G.711 A-law.
    Pcma,
    /// G.722 (8 kHz RTP clock, 16 kHz audio).
    G722,
    /// Opus (48 kHz RTP clock).
    Opus,
    /// G.729.
    G729,
    /// Comfort noise (RFC 3389): marks silence, carries no speech.
    ComfortNoise,
    /// telephone-event (RFC 4733): DTMF, never audio.
    TelephoneEvent,
    /// A named format callvault cannot decode; its time is kept as silence.
    Other,
}

impl Codec {
    /// Whether packets of this format occupy time on the audio timeline.
    pub fn is_audio(self) -> bool {
        !matches!(self, Codec::ComfortNoise | Codec::TelephoneEvent)
    }
}

/// One payload type's format: encoding name, RTP clock rate and channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadFormat {
    /// Encoding name as in SDP (`PCMU`, `opus`, `telephone-event`).
    pub encoding: String,
    /// RTP clock rate in Hz (not always the audio sample rate: G.722 is 8000).
    pub clock_rate: u32,
    /// Channels, when given.
    pub channels: Option<u8>,
    /// The codec recognised from the name.
    pub codec: Codec,
}

impl PayloadFormat {
    /// Builds a format, recognising the codec from its name (case-insensitive).
    pub fn new(encoding: &str, clock_rate: u32, channels: Option<u8>) -> Self {
        let codec = match encoding.to_ascii_lowercase().as_str() {
            "pcmu" => Codec::Pcmu,
            "pcma" => Codec::Pcma,
            "g722" => Codec::G722,
            "opus" => Codec::Opus,
            "g729" => Codec::G729,
            "cn" => Codec::ComfortNoise,
            "telephone-event" => Codec::TelephoneEvent,
            _ => Codec::Other,
        };
        PayloadFormat { encoding: encoding.to_string(), clock_rate, channels, codec }
    }
}

impl fmt::Display for PayloadFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.encoding, self.clock_rate)?;
        if let Some(ch) = self.channels {
            write!(f, "/{ch}")?;
        }
        Ok(())
    }
}

/// Why a payload mapping such as `96=opus/48000/2` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadMapError {
    /// Not of the form `PT=NAME/RATE[/CHANNELS]`.
    #[error("payload mapping {0:?} is not of the form PT=NAME/RATE[/CHANNELS], e.g. 96=opus/48000/2")]
    Syntax(String),
    /// The payload type is not 0–127, or falls in the RTCP-conflict range 72–76 (RFC 5761).
    #[error("payload type {0} is not usable for RTP: use 0-71 or 77-127")]
    BadPayloadType(String),
    /// The clock rate is not a positive integer.
    #[error("clock rate {0:?} in a payload mapping must be a positive integer in Hz")]
    BadClockRate(String),
    /// The channel count is not 1–255.
    #[error("channel count {0:?} in a payload mapping must be 1-255")]
    BadChannels(String),
}

/// Payload type → format for one leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadMap {
    formats: Vec<Option<PayloadFormat>>,
}

impl Default for PayloadMap {
    fn default() -> Self {
        Self::with_static_types()
    }
}

impl PayloadMap {
    /// A map with nothing in it.
    pub fn empty() -> Self {
        PayloadMap { formats: vec![None; 128] }
    }

    /// The RFC 3551 static audio types callvault knows about.
    pub fn with_static_types() -> Self {
        let mut m = Self::empty();
        m.insert(0, PayloadFormat::new("PCMU", 8000, None));
        m.insert(8, PayloadFormat::new("PCMA", 8000, None));
        m.insert(9, PayloadFormat::new("G722", 8000, None));
        m.insert(13, PayloadFormat::new("CN", 8000, None));
        m.insert(18, PayloadFormat::new("G729", 8000, None));
        m
    }

    /// Sets (or replaces) one payload type's format. Types above 127 are ignored.
    pub fn insert(&mut self, pt: u8, format: PayloadFormat) {
        if let Some(slot) = self.formats.get_mut(usize::from(pt)) {
            *slot = Some(format);
        }
    }

    /// The format of a payload type, if mapped.
    pub fn get(&self, pt: u8) -> Option<&PayloadFormat> {
        self.formats.get(usize::from(pt)).and_then(Option::as_ref)
    }

    /// Parses `PT=NAME/RATE[/CHANNELS]`.
    pub fn parse_mapping(s: &str) -> Result<(u8, PayloadFormat), PayloadMapError> {
        let (pt, rest) = s.split_once('=').ok_or_else(|| PayloadMapError::Syntax(s.to_string()))?;
        let pt_num: u8 = pt
            .trim()
            .parse()
            .ok()
            .filter(|p| *p <= 127 && !(72..=76).contains(p))
            .ok_or_else(|| PayloadMapError::BadPayloadType(pt.trim().to_string()))?;
        let mut parts = rest.trim().split('/');
        let name = parts.next().filter(|n| !n.is_empty()).ok_or_else(|| PayloadMapError::Syntax(s.to_string()))?;
        let rate_s = parts.next().ok_or_else(|| PayloadMapError::Syntax(s.to_string()))?;
        let rate: u32 =
            rate_s.parse().ok().filter(|r| *r > 0).ok_or_else(|| PayloadMapError::BadClockRate(rate_s.to_string()))?;
        let channels = match parts.next() {
            None => None,
            Some(c) => Some(
                c.parse::<u8>().ok().filter(|c| *c > 0).ok_or_else(|| PayloadMapError::BadChannels(c.to_string()))?,
            ),
        };
        if parts.next().is_some() {
            return Err(PayloadMapError::Syntax(s.to_string()));
        }
        Ok((pt_num, PayloadFormat::new(name, rate, channels)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_types_are_known() {
        let m = PayloadMap::default();
        assert_eq!(m.get(0).unwrap().codec, Codec::Pcmu);
        assert_eq!(m.get(8).unwrap().codec, Codec::Pcma);
        assert_eq!(m.get(9).unwrap().clock_rate, 8000, "G.722's RTP clock is 8 kHz (RFC 3551)");
        assert!(m.get(96).is_none());
    }

    #[test]
    fn parses_operator_mappings() {
        let (pt, f) = PayloadMap::parse_mapping("96=opus/48000/2").unwrap();
        assert_eq!((pt, f.codec, f.clock_rate, f.channels), (96, Codec::Opus, 48000, Some(2)));
        assert_eq!(f.to_string(), "opus/48000/2");
        let (pt, f) = PayloadMap::parse_mapping("101=telephone-event/8000").unwrap();
        assert_eq!((pt, f.codec), (101, Codec::TelephoneEvent));
        for bad in [
            "96",
            "96=opus",
            "x=opus/48000",
            "128=opus/48000",
            "72=opus/8000",
            "96=opus/0",
            "96=opus/8000/0",
            "96=/8000",
            "96=a/1/2/3",
        ] {
            assert!(PayloadMap::parse_mapping(bad).is_err(), "{bad}");
        }
    }
}
