//! Writes small pcap files (Ethernet / IPv4 / UDP) for tests that need signalling the shared
//! captures do not have.

use std::net::SocketAddrV4;

pub struct PcapBuilder {
    bytes: Vec<u8>,
}

impl Default for PcapBuilder {
    fn default() -> Self {
        let mut bytes = Vec::new();
        for v in [
            0xa1b2_c3d4u32.to_le_bytes().as_slice(),
            &2u16.to_le_bytes(),
            &4u16.to_le_bytes(),
            &[0; 8],
            &65535u32.to_le_bytes(),
            &1u32.to_le_bytes(),
        ] {
            bytes.extend_from_slice(v);
        }
        PcapBuilder { bytes }
    }
}

impl PcapBuilder {
    /// Adds one UDP datagram captured at `at_ns` (since the epoch).
    pub fn udp(&mut self, at_ns: u64, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> &mut Self {
        let mut frame = vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x08, 0x00];
        let udp_len = 8 + payload.len();
        let ip_len = 20 + udp_len;
        frame.extend_from_slice(&[0x45, 0]);
        frame.extend_from_slice(&(ip_len as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
        frame.extend_from_slice(&src.ip().octets());
        frame.extend_from_slice(&dst.ip().octets());
        frame.extend_from_slice(&src.port().to_be_bytes());
        frame.extend_from_slice(&dst.port().to_be_bytes());
        frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(payload);
        let secs = (at_ns / 1_000_000_000) as u32;
        let micros = ((at_ns % 1_000_000_000) / 1000) as u32;
        for v in [secs, micros, frame.len() as u32, frame.len() as u32] {
            self.bytes.extend_from_slice(&v.to_le_bytes());
        }
        self.bytes.extend_from_slice(&frame);
        self
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A SIP message with an SDP body offering `port` on `ip` with the given payload types.
pub fn sip_with_sdp(first_line: &str, call_id: &str, ip: &str, port: u16, pts: &[(u8, &str)]) -> Vec<u8> {
    let mut sdp = format!("v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP");
    for (pt, _) in pts {
        sdp.push_str(&format!(" {pt}"));
    }
    sdp.push_str("\r\n");
    for (pt, map) in pts {
        if !map.is_empty() {
            sdp.push_str(&format!("a=rtpmap:{pt} {map}\r\n"));
        }
    }
    sdp.push_str("a=sendrecv\r\n");
    format!(
        "{first_line}\r\nVia: SIP/2.0/UDP {ip}:5060\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
    .into_bytes()
}
