//! RTP (RFC 3550) and RTCP parsing over borrowed bytes.
//!
//! Nothing here allocates or copies: a parsed packet borrows the datagram. Every length field is
//! checked against the buffer, so malformed input yields a [`ParseError`], never a panic.

/// Why a datagram is not a usable RTP or RTCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than the fixed 12-byte RTP header (or 8-byte RTCP header).
    #[error("packet too short: {len} bytes")]
    TooShort {
        /// Datagram length in bytes.
        len: usize,
    },
    /// The two version bits are not 2.
    #[error("RTP version {version} (only version 2 exists)")]
    BadVersion {
        /// The version found.
        version: u8,
    },
    /// The CSRC list runs past the end of the packet.
    #[error("CSRC list of {count} entries overruns the packet")]
    CsrcOverrun {
        /// CSRC count from the header.
        count: u8,
    },
    /// The header extension runs past the end of the packet.
    #[error("header extension overruns the packet")]
    ExtensionOverrun,
    /// The padding count is zero or larger than the payload.
    #[error("padding of {padding} bytes does not fit the packet")]
    BadPadding {
        /// Padding length from the last byte.
        padding: u8,
    },
    /// An RTCP packet's length field does not match the datagram.
    #[error("RTCP length field does not match the datagram")]
    RtcpLength,
}

/// What a datagram on a media port turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// An RTP packet.
    Rtp(RtpPacket<'a>),
    /// An RTCP compound packet (on its own port or multiplexed, RFC 5761).
    Rtcp(RtcpPacket<'a>),
}

/// Classifies and parses one datagram.
///
/// RFC 5761 §4: with rtcp-mux, a second byte of 192–223 (marker bit plus payload types 64–95) is
/// RTCP; RTP never uses those payload types, so the test is safe on plain RTP ports too.
pub fn parse(buf: &[u8]) -> Result<Packet<'_>, ParseError> {
    if buf.len() >= 2 && (192..=223).contains(&buf[1]) {
        RtcpPacket::parse(buf).map(Packet::Rtcp)
    } else {
        RtpPacket::parse(buf).map(Packet::Rtp)
    }
}

/// A parsed RTP packet borrowing its datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    /// For audio, marks the first packet of a talk spurt.
    pub marker: bool,
    /// Payload type (0–127); its meaning comes from the leg's payload map.
    pub payload_type: u8,
    /// Sequence number; starts at a random value and wraps.
    pub sequence: u16,
    /// Media timestamp in the payload format's clock; starts at a random value and wraps.
    pub timestamp: u32,
    /// Synchronisation source: identifies the sender's stream. It can change mid-call.
    pub ssrc: u32,
    /// Contributing sources, 4 bytes each (big-endian).
    pub csrc: &'a [u8],
    /// Header extension profile and data, when the X bit is set.
    pub extension: Option<(u16, &'a [u8])>,
    /// The payload with padding removed.
    pub payload: &'a [u8],
}

impl<'a> RtpPacket<'a> {
    /// Parses an RTP packet, validating every length against the buffer.
    pub fn parse(buf: &'a [u8]) -> Result<Self, ParseError> {
        if buf.len() < 12 {
            return Err(ParseError::TooShort { len: buf.len() });
        }
        let version = buf[0] >> 6;
        if version != 2 {
            return Err(ParseError::BadVersion { version });
        }
        let has_padding = buf[0] & 0x20 != 0;
        let has_extension = buf[0] & 0x10 != 0;
        let csrc_count = buf[0] & 0x0f;
        let mut offset = 12 + 4 * usize::from(csrc_count);
        if offset > buf.len() {
            return Err(ParseError::CsrcOverrun { count: csrc_count });
        }
        let csrc = &buf[12..offset];
        let extension = if has_extension {
            if offset + 4 > buf.len() {
                return Err(ParseError::ExtensionOverrun);
            }
            let profile = u16::from_be_bytes([buf[offset], buf[offset + 1]]);
            let words = usize::from(u16::from_be_bytes([buf[offset + 2], buf[offset + 3]]));
            let start = offset + 4;
            let end = start + 4 * words;
            if end > buf.len() {
                return Err(ParseError::ExtensionOverrun);
            }
            offset = end;
            Some((profile, &buf[start..end]))
        } else {
            None
        };
        let mut end = buf.len();
        if has_padding {
            let padding = buf[buf.len() - 1];
            if padding == 0 || usize::from(padding) > end - offset {
                return Err(ParseError::BadPadding { padding });
            }
            end -= usize::from(padding);
        }
        Ok(RtpPacket {
            marker: buf[1] & 0x80 != 0,
            payload_type: buf[1] & 0x7f,
            sequence: u16::from_be_bytes([buf[2], buf[3]]),
            timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
            csrc,
            extension,
            payload: &buf[offset..end],
        })
    }
}

/// An RTCP compound packet; its sub-packets are validated at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpPacket<'a> {
    buf: &'a [u8],
}

/// One packet inside an RTCP compound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpItem<'a> {
    /// RTCP packet type (200 SR, 201 RR, 202 SDES, 203 BYE, 204 APP, …).
    pub packet_type: u8,
    /// The five count bits (reception report count, source count, or subtype).
    pub count: u8,
    /// The body after the 4-byte header, padding included.
    pub body: &'a [u8],
}

/// The NTP ↔ RTP timestamp pair from a sender report: it ties a stream's media clock to wall time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderReport {
    /// Sender's SSRC.
    pub ssrc: u32,
    /// 64-bit NTP timestamp (seconds since 1900 in the upper half).
    pub ntp: u64,
    /// RTP timestamp corresponding to `ntp`.
    pub rtp_timestamp: u32,
}

impl<'a> RtcpPacket<'a> {
    /// Parses an RTCP compound packet: every sub-packet must be version 2 and their lengths must
    /// add up to the datagram exactly.
    pub fn parse(buf: &'a [u8]) -> Result<Self, ParseError> {
        if buf.len() < 8 {
            return Err(ParseError::TooShort { len: buf.len() });
        }
        let mut rest = buf;
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(ParseError::RtcpLength);
            }
            let version = rest[0] >> 6;
            if version != 2 {
                return Err(ParseError::BadVersion { version });
            }
            let len = 4 * (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1);
            if len > rest.len() {
                return Err(ParseError::RtcpLength);
            }
            rest = &rest[len..];
        }
        Ok(RtcpPacket { buf })
    }

    /// The sub-packets in order.
    pub fn items(&self) -> impl Iterator<Item = RtcpItem<'a>> + 'a {
        let mut rest = self.buf;
        std::iter::from_fn(move || {
            if rest.len() < 4 {
                return None;
            }
            let len = 4 * (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1);
            let item = RtcpItem { packet_type: rest[1], count: rest[0] & 0x1f, body: rest.get(4..len)? };
            rest = &rest[len..];
            Some(item)
        })
    }

    /// The first sender report in the compound packet, if any.
    pub fn sender_report(&self) -> Option<SenderReport> {
        self.items().find(|i| i.packet_type == 200).and_then(|i| {
            let b = i.body;
            if b.len() < 20 {
                return None;
            }
            Some(SenderReport {
                ssrc: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                ntp: u64::from_be_bytes([b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11]]),
                rtp_timestamp: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x80, pt];
        v.extend_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(&ts.to_be_bytes());
        v.extend_from_slice(&ssrc.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn parses_plain_header() {
        let b = rtp(0x80 | 8, 65535, 0xffff_fff0, 0xdead_beef, &[1, 2, 3]);
        let Packet::Rtp(p) = parse(&b).unwrap() else { panic!("not RTP") };
        assert!(p.marker);
        assert_eq!(p.payload_type, 8);
        assert_eq!(p.sequence, 65535);
        assert_eq!(p.timestamp, 0xffff_fff0);
        assert_eq!(p.ssrc, 0xdead_beef);
        assert_eq!(p.payload, &[1, 2, 3]);
    }

    #[test]
    fn csrc_extension_and_padding_are_skipped() {
        let mut b = rtp(0, 1, 2, 3, &[]);
        b[0] = 0x80 | 0x20 | 0x10 | 2; // padding, extension, 2 CSRCs
        b.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]); // CSRCs
        b.extend_from_slice(&[0xbe, 0xde, 0, 1, 9, 9, 9, 9]); // one-word extension
        b.extend_from_slice(&[7, 7]); // payload
        b.extend_from_slice(&[0, 0, 3]); // 3 bytes padding
        let p = RtpPacket::parse(&b).unwrap();
        assert_eq!(p.csrc.len(), 8);
        assert_eq!(p.extension, Some((0xbede, &[9u8, 9, 9, 9][..])));
        assert_eq!(p.payload, &[7, 7]);
    }

    #[test]
    fn malformed_headers_are_errors() {
        assert_eq!(RtpPacket::parse(&[0x80; 5]), Err(ParseError::TooShort { len: 5 }));
        let mut b = rtp(0, 1, 2, 3, &[1]);
        b[0] = 0x40;
        assert_eq!(RtpPacket::parse(&b), Err(ParseError::BadVersion { version: 1 }));
        b[0] = 0x8f; // 15 CSRCs, not there
        assert_eq!(RtpPacket::parse(&b), Err(ParseError::CsrcOverrun { count: 15 }));
        b[0] = 0x90; // extension missing
        assert_eq!(RtpPacket::parse(&b), Err(ParseError::ExtensionOverrun));
        let mut b = rtp(0, 1, 2, 3, &[1, 200]);
        b[0] = 0xa0; // padding longer than payload
        assert_eq!(RtpPacket::parse(&b), Err(ParseError::BadPadding { padding: 200 }));
        let mut b = rtp(0, 1, 2, 3, &[1, 0]);
        b[0] = 0xa0; // padding of zero is invalid
        assert_eq!(RtpPacket::parse(&b), Err(ParseError::BadPadding { padding: 0 }));
    }

    #[test]
    fn rtcp_is_recognised_by_second_byte_and_never_rtp() {
        // SR (length 6 words) followed by an empty-ish SDES (length 1 word).
        let mut b = vec![0x80, 200, 0, 6];
        b.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        b.extend_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        b.extend_from_slice(&4242u32.to_be_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&[0x81, 202, 0, 1, 0, 0, 0, 0]);
        let Packet::Rtcp(r) = parse(&b).unwrap() else { panic!("not RTCP") };
        assert_eq!(r.items().count(), 2);
        let sr = r.sender_report().unwrap();
        assert_eq!(sr.ssrc, 0x1234_5678);
        assert_eq!(sr.rtp_timestamp, 4242);
        // A length field that overruns is an error.
        let mut bad = b.clone();
        bad[3] = 50;
        assert_eq!(parse(&bad), Err(ParseError::RtcpLength));
        // Every second byte 192..=223 is RTCP territory.
        for second in 192u8..=223 {
            let b = [0x80, second, 0, 1, 0, 0, 0, 0];
            assert!(matches!(parse(&b), Ok(Packet::Rtcp(_))), "{second}");
        }
    }
}
