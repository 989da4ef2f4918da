//! SIP and SDP parsing for one UDP payload (sans-IO).
//!
//! Only what a passive recorder needs to pair RTP streams with calls: the
//! Call-ID, the request method or response status, the CSeq method and the
//! media description of an SDP body. Parsing is deliberately lenient (compact
//! header names, any case, CRLF or bare LF, folded headers, a wrong
//! Content-Length) because captures contain whatever the phones sent; it
//! returns `None` rather than guessing only when the start line or Call-ID is
//! missing.

use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipMessage {
    pub call_id: String,
    pub kind: SipKind,
    pub cseq_method: Option<String>,
    /// The SDP body, also when it is the `application/sdp` part of a multipart body (SIPREC).
    pub sdp: Option<Sdp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipKind {
    Request { method: String },
    Response { status: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    /// Session-level `c=` address.
    pub connection: Option<IpAddr>,
    pub media: Vec<SdpMedia>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpMedia {
    /// "audio", "video", ...
    pub kind: String,
    pub port: u16,
    /// Where this stream's RTP goes: the media-level `c=`, else the session-level one.
    pub connection: Option<IpAddr>,
    /// From the `m=` line's format list (non-numeric formats are left out).
    pub payload_types: Vec<u8>,
    pub rtpmap: Vec<RtpMap>,
    /// sendrecv/sendonly/recvonly/inactive: the media-level attribute, else the session-level one.
    pub direction: Option<String>,
    pub rtcp_mux: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub pt: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: Option<u8>,
}

/// Parses one UDP payload as a SIP message; `None` if it is not SIP.
pub fn parse_sip(payload: &[u8]) -> Option<SipMessage> {
    // Keep-alives and stray CRLFs in front of a message are legal on UDP.
    let start = payload.iter().position(|b| !matches!(b, b'\r' | b'\n'))?;
    let msg = payload.get(start..)?;
    let (head, body) = split_head(msg);
    let mut lines = head.split(|&b| b == b'\n').map(trim_cr);
    let kind = parse_start_line(lines.next()?)?;

    let mut call_id = None;
    let mut cseq_method = None;
    let mut content_type = None;
    let mut content_length = None;
    for (name, value) in headers(lines) {
        match name.to_ascii_lowercase().as_str() {
            "call-id" | "i" => call_id = Some(value),
            "cseq" => cseq_method = value.split_whitespace().nth(1).map(str::to_owned),
            "content-type" | "c" => content_type = Some(value),
            "content-length" | "l" => content_length = value.trim().parse::<usize>().ok(),
            _ => {}
        }
    }
    let call_id = call_id.filter(|c| !c.is_empty())?;
    // A Content-Length beyond the datagram means the message was cut; use what is there.
    let body = match content_length {
        Some(n) => body.get(..n).unwrap_or(body),
        None => body,
    };
    let sdp = content_type.and_then(|ct| sdp_from_body(&ct, body, 0));
    Some(SipMessage { call_id, kind, cseq_method, sdp })
}

/// Splits at the first empty line (CRLF CRLF or LF LF); no empty line means no body.
fn split_head(msg: &[u8]) -> (&[u8], &[u8]) {
    let mut line_start = 0;
    for (i, &b) in msg.iter().enumerate() {
        if b == b'\n' {
            let line = msg.get(line_start..i).unwrap_or(&[]);
            if trim_cr(line).is_empty() && line_start > 0 {
                return (msg.get(..line_start).unwrap_or(&[]), msg.get(i + 1..).unwrap_or(&[]));
            }
            line_start = i + 1;
        }
    }
    (msg, &[])
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn parse_start_line(line: &[u8]) -> Option<SipKind> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ').filter(|p| !p.is_empty());
    let first = parts.next()?;
    if first.eq_ignore_ascii_case("SIP/2.0") {
        let code = parts.next()?;
        if code.len() != 3 {
            return None;
        }
        let status: u16 = code.parse().ok()?;
        return (100..=699).contains(&status).then_some(SipKind::Response { status });
    }
    let uri = parts.next()?;
    let version = parts.next()?;
    let is_token =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b));
    if !version.eq_ignore_ascii_case("SIP/2.0") || parts.next().is_some() || !is_token(first) || uri.is_empty() {
        return None;
    }
    Some(SipKind::Request { method: first.to_owned() })
}

/// Header (name, value) pairs with folded continuation lines joined.
fn headers<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in lines {
        let text = String::from_utf8_lossy(line);
        if text.starts_with([' ', '\t']) {
            if let Some((_, v)) = out.last_mut() {
                if !v.is_empty() {
                    v.push(' ');
                }
                v.push_str(text.trim());
            }
            continue;
        }
        if let Some((name, value)) = text.split_once(':') {
            out.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    out
}

/// The SDP in a body of the given Content-Type, looking inside multipart bodies.
fn sdp_from_body(content_type: &str, body: &[u8], depth: u8) -> Option<Sdp> {
    let media_type = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if media_type == "application/sdp" {
        return parse_sdp(body);
    }
    // Nested multiparts are legal but bounded, so hostile input cannot recurse deeply.
    if !media_type.starts_with("multipart/") || depth > 3 {
        return None;
    }
    let boundary = content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("boundary").then(|| v.trim().trim_matches('"').to_owned())
    })?;
    if boundary.is_empty() {
        return None;
    }
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut rest = body;
    // Skip the preamble, then walk the parts.
    let first = find(rest, delimiter)?;
    rest = rest.get(first + delimiter.len()..)?;
    while !rest.starts_with(b"--") {
        let end = find(rest, delimiter).unwrap_or(rest.len());
        let part = rest.get(..end)?;
        let (head, content) = split_head(part.strip_prefix(b"\r\n").or(part.strip_prefix(b"\n")).unwrap_or(part));
        let part_type = headers(head.split(|&b| b == b'\n').map(trim_cr))
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-type") || n.eq_ignore_ascii_case("c"))
            .map(|(_, v)| v);
        if let Some(sdp) = part_type.and_then(|t| sdp_from_body(&t, content, depth + 1)) {
            return Some(sdp);
        }
        rest = rest.get(end + delimiter.len()..)?;
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses an SDP body (RFC 8866); `None` if it has no `v=` line.
pub fn parse_sdp(body: &[u8]) -> Option<Sdp> {
    let text = String::from_utf8_lossy(body);
    let mut seen_version = false;
    let mut session_conn = None;
    let mut session_dir = None;
    let mut media: Vec<SdpMedia> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match key {
            "v" => seen_version = true,
            "c" => {
                let addr = parse_connection(value);
                match media.last_mut() {
                    Some(m) => m.connection = addr.or(m.connection),
                    None => session_conn = addr.or(session_conn),
                }
            }
            "m" => {
                let mut t = value.split_whitespace();
                let (Some(kind), Some(port)) = (t.next(), t.next()) else {
                    continue;
                };
                // "<port>/<count>" is allowed; the first port is the RTP one.
                let Ok(port) = port.split('/').next().unwrap_or("").parse::<u16>() else {
                    continue;
                };
                let _proto = t.next();
                media.push(SdpMedia {
                    kind: kind.to_owned(),
                    port,
                    connection: None,
                    payload_types: t.filter_map(|f| f.parse().ok()).collect(),
                    rtpmap: Vec::new(),
                    direction: None,
                    rtcp_mux: false,
                });
            }
            "a" => {
                let (name, arg) = value.split_once(':').unwrap_or((value, ""));
                match name {
                    "rtpmap" => {
                        if let (Some(m), Some(map)) = (media.last_mut(), parse_rtpmap(arg)) {
                            m.rtpmap.push(map);
                        }
                    }
                    "sendrecv" | "sendonly" | "recvonly" | "inactive" => match media.last_mut() {
                        Some(m) => m.direction = Some(name.to_owned()),
                        None => session_dir = Some(name.to_owned()),
                    },
                    "rtcp-mux" => {
                        if let Some(m) = media.last_mut() {
                            m.rtcp_mux = true;
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if !seen_version {
        return None;
    }
    for m in &mut media {
        m.connection = m.connection.or(session_conn);
        if m.direction.is_none() {
            m.direction.clone_from(&session_dir);
        }
    }
    Some(Sdp { connection: session_conn, media })
}

/// `IN IP4 192.0.2.1` or `IN IP6 2001:db8::1`; a multicast `/ttl[/count]` suffix is dropped.
fn parse_connection(value: &str) -> Option<IpAddr> {
    let mut t = value.split_whitespace();
    let _net = t.next()?;
    let _addrtype = t.next()?;
    t.next()?.split('/').next()?.parse().ok()
}

/// `96 opus/48000/2`
fn parse_rtpmap(arg: &str) -> Option<RtpMap> {
    let mut t = arg.split_whitespace();
    let pt = t.next()?.parse().ok()?;
    let mut enc = t.next()?.split('/');
    let encoding = enc.next()?.to_owned();
    let clock_rate = enc.next()?.parse().ok()?;
    let channels = enc.next().and_then(|c| c.parse().ok());
    Some(RtpMap { pt, encoding, clock_rate, channels })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::CaptureReader;
    use std::path::Path;

    #[test]
    fn corpus_sip_call() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/captures");
        if !dir.is_dir() {
            assert!(std::env::var_os("CI").is_none(), "capture corpus missing at {}", dir.display());
            eprintln!("skipping: capture corpus not found at {}", dir.display());
            return;
        }
        let mut r = CaptureReader::open(&dir.join("pkts_sip_call_pcmu.pcap")).unwrap();
        let mut sip = Vec::new();
        while let Some(d) = r.next_datagram().unwrap() {
            if let Some(m) = parse_sip(&d.payload) {
                sip.push(m);
            }
        }
        assert_eq!(sip.len(), 6, "{sip:#?}");
        assert!(sip.iter().all(|m| m.call_id == "1-7879@127.0.0.1"));
        let with_sdp: Vec<_> = sip.iter().filter(|m| m.sdp.is_some()).collect();
        assert_eq!(with_sdp.len(), 2);
        let (invite, ok) = (with_sdp[0], with_sdp[1]);
        assert_eq!(invite.kind, SipKind::Request { method: "INVITE".into() });
        assert_eq!(ok.kind, SipKind::Response { status: 200 });
        assert_eq!(ok.cseq_method.as_deref(), Some("INVITE"));
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        for (m, port) in [(invite, 6001), (ok, 6000)] {
            let sdp = m.sdp.as_ref().unwrap();
            assert_eq!(sdp.connection, Some(lo));
            assert_eq!(
                sdp.media,
                [SdpMedia {
                    kind: "audio".into(),
                    port,
                    connection: Some(lo),
                    payload_types: vec![0],
                    rtpmap: vec![RtpMap { pt: 0, encoding: "PCMU".into(), clock_rate: 8000, channels: None }],
                    direction: None,
                    rtcp_mux: false,
                }]
            );
        }
        let methods: Vec<_> = sip.iter().map(|m| m.kind.clone()).collect();
        assert!(methods.contains(&SipKind::Request { method: "BYE".into() }));
        assert!(methods.contains(&SipKind::Response { status: 180 }));
    }

    const SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\na=sendonly\r\n\
        m=audio 49170 RTP/AVP 0 8 96 101\r\na=rtpmap:96 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\na=rtcp-mux\r\n\
        m=video 0 RTP/AVP 31\r\nc=IN IP6 2001:db8::7\r\na=recvonly\r\n\
        m=audio 5000/2 RTP/AVP 18\r\nc=IN IP4 233.252.0.1/127/2\r\n";

    #[test]
    fn compact_headers_lf_and_sdp_attributes() {
        let msg = format!(
            "\r\n\r\nSIP/2.0 183 Session Progress\nv: SIP/2.0/UDP x\ni: abc@host\nCSEQ:  7   invite\nc: Application/SDP\nl: {}\n\n{}",
            SDP.len(),
            SDP
        );
        let m = parse_sip(msg.as_bytes()).unwrap();
        assert_eq!(m.call_id, "abc@host");
        assert_eq!(m.kind, SipKind::Response { status: 183 });
        assert_eq!(m.cseq_method.as_deref(), Some("invite"));
        let sdp = m.sdp.unwrap();
        let s: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(sdp.connection, Some(s));
        assert_eq!(sdp.media.len(), 3);
        let a = &sdp.media[0];
        assert_eq!((a.kind.as_str(), a.port, a.connection), ("audio", 49170, Some(s)));
        assert_eq!(a.payload_types, [0, 8, 96, 101]);
        assert_eq!(a.rtpmap[0], RtpMap { pt: 96, encoding: "opus".into(), clock_rate: 48000, channels: Some(2) });
        assert_eq!(a.rtpmap[1].encoding, "telephone-event");
        assert_eq!(a.direction.as_deref(), Some("sendonly"));
        assert!(a.rtcp_mux);
        let v = &sdp.media[1];
        assert_eq!(v.connection, Some("2001:db8::7".parse().unwrap()));
        assert_eq!(v.direction.as_deref(), Some("recvonly"));
        assert!(!v.rtcp_mux);
        let m3 = &sdp.media[2];
        assert_eq!((m3.port, m3.connection), (5000, Some("233.252.0.1".parse().unwrap())));
    }

    #[test]
    fn request_with_folded_header_and_content_length() {
        let body = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n";
        let msg = format!(
            "INVITE sip:bob@example.com SIP/2.0\r\nCall-ID:\r\n  folded-id\r\nContent-Type: application/sdp;charset=utf-8\r\n\
             Content-Length: {}\r\n\r\n{body}m=audio 9 RTP/AVP 0\r\n",
            body.len()
        );
        let m = parse_sip(msg.as_bytes()).unwrap();
        assert_eq!(m.call_id, "folded-id");
        assert_eq!(m.kind, SipKind::Request { method: "INVITE".into() });
        // Bytes after Content-Length are ignored.
        assert_eq!(m.sdp.unwrap().media.len(), 1);
        // A Content-Length larger than the datagram uses what is there.
        let cut = msg.replace(&format!("Content-Length: {}", body.len()), "Content-Length: 5000");
        assert_eq!(parse_sip(cut.as_bytes()).unwrap().sdp.unwrap().media.len(), 2);
    }

    #[test]
    fn siprec_multipart_body() {
        let sdp = "v=0\r\nc=IN IP4 10.1.1.1\r\nm=audio 7000 RTP/AVP 8\r\na=sendonly\r\nm=audio 7002 RTP/AVP 8\r\n";
        let body = format!(
            "preamble\r\n--XyZ\r\nContent-Type: application/rs-metadata+xml\r\n\r\n<recording/>\r\n--XyZ\r\n\
             Content-Type: application/sdp\r\n\r\n{sdp}\r\n--XyZ--\r\n"
        );
        let msg = format!(
            "INVITE sip:srs@example.com SIP/2.0\r\nCall-ID: rec-1\r\nContent-Type: multipart/mixed;boundary=\"XyZ\"\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let sdp = parse_sip(msg.as_bytes()).unwrap().sdp.unwrap();
        assert_eq!(sdp.media.iter().map(|m| m.port).collect::<Vec<_>>(), [7000, 7002]);
        // A broken multipart is just "no SDP".
        let broken = msg.replace("--XyZ\r\nContent-Type: application/sdp", "--Q\r\nContent-Type: application/sdp");
        let broken = broken.replace("--XyZ--", "");
        assert!(parse_sip(broken.as_bytes()).unwrap().sdp.is_none());
    }

    #[test]
    fn not_sip() {
        for p in [
            &b""[..],
            b"\r\n\r\n",
            b"\x80\x00\x12\x34 rtp bytes",
            b"HTTP/1.1 200 OK\r\nCall-ID: x\r\n\r\n",
            b"SIP/2.0 2000 OK\r\nCall-ID: x\r\n\r\n",
            b"SIP/2.0 099 Weird\r\nCall-ID: x\r\n\r\n",
            b"INVITE sip:a SIP/2.0\r\nFrom: a\r\n\r\n",
            b"INVITE sip:a SIP/2.0\r\nCall-ID:   \r\n\r\n",
            b"INV(TE sip:a SIP/2.0\r\nCall-ID: x\r\n\r\n",
            b"INVITE SIP/2.0\r\nCall-ID: x\r\n\r\n",
        ] {
            assert_eq!(parse_sip(p), None, "{:?}", String::from_utf8_lossy(p));
        }
        // SIP without a body, and with a non-SDP body.
        let m = parse_sip(b"OPTIONS sip:a SIP/2.0\r\ncall-id: o1\r\n").unwrap();
        assert_eq!((m.call_id.as_str(), m.sdp), ("o1", None));
        let m = parse_sip(b"MESSAGE sip:a SIP/2.0\r\nCall-ID: m\r\nContent-Type: text/plain\r\n\r\nv=0\r\n").unwrap();
        assert_eq!(m.sdp, None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse_sip(&bytes);
            let mut framed = b"INVITE sip:x SIP/2.0\r\ni: a\r\nc: multipart/mixed; boundary=b\r\n\r\n--b\r\nc: application/sdp\r\n\r\n".to_vec();
            framed.extend_from_slice(&bytes);
            let _ = parse_sip(&framed);
        }

        #[test]
        fn arbitrary_sdp_lines_never_panic(lines in proptest::collection::vec("[vcmaot]=[ -~]{0,40}", 0..20)) {
            let body = lines.join("\r\n");
            let _ = parse_sdp(body.as_bytes());
        }
    }
}
