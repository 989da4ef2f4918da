//! Calls found from SIP/SDP in a capture: legs by direction, payload maps from SDP, a re-INVITE
//! that moves the media to a new port continues the same leg; unsignalled streams beside them.

mod common;

use std::net::SocketAddrV4;

use callvault::core::mixer::Layout;
use callvault::import::{self, ImportOptions};
use common::pcapgen::{PcapBuilder, sip_with_sdp};
use common::{MS, rtp};

const T0: u64 = 1_700_000_000_000_000_000;

fn addr(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn event(digit: u8, end: bool, duration: u16) -> Vec<u8> {
    let mut p = vec![digit, if end { 0x80 } else { 0 } | 10];
    p.extend_from_slice(&duration.to_be_bytes());
    p
}

#[test]
fn sip_call_with_reinvite_is_one_recording_with_caller_and_callee() {
    let (caller_sig, callee_sig) = (addr("10.0.0.1:5060"), addr("10.0.0.2:5060"));
    let (caller_media, callee_media, callee_media2) =
        (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"), addr("10.0.0.2:5002"));
    let mut cap = PcapBuilder::default();
    let te = [(0u8, ""), (97, "telephone-event/8000")];
    cap.udp(
        T0,
        caller_sig,
        callee_sig,
        &sip_with_sdp("INVITE sip:agent@10.0.0.2 SIP/2.0", "call-1@pbx", "10.0.0.1", 4000, &te),
    );
    cap.udp(T0 + 50 * MS, callee_sig, caller_sig, &sip_with_sdp("SIP/2.0 200 OK", "call-1@pbx", "10.0.0.2", 5000, &te));
    // Two seconds each way, callee 5 ms behind; then the callee re-INVITEs to port 5002.
    for i in 0..200u64 {
        let at = T0 + 100 * MS + i * 20 * MS;
        let (c_dst, e_src) = if i < 100 { (callee_media, callee_media) } else { (callee_media2, callee_media2) };
        cap.udp(at, caller_media, c_dst, &rtp(0, 1000 + i as u16, 8000 + 160 * i as u32, 0xca11e4, &[0x11; 160]));
        cap.udp(at + 5 * MS, e_src, caller_media, &rtp(0, 7 + i as u16, 160 * i as u32, 0xca11ee, &[0x22; 160]));
        if i == 99 {
            cap.udp(
                at + 10 * MS,
                callee_sig,
                caller_sig,
                &sip_with_sdp("INVITE sip:cust@10.0.0.1 SIP/2.0", "call-1@pbx", "10.0.0.2", 5002, &te),
            );
        }
    }
    // The caller presses 7 (PT 97, known only from the SDP).
    for (k, end) in [(0u64, false), (1, false), (2, true)] {
        cap.udp(
            T0 + 5 * 1000 * MS + k * 20 * MS,
            caller_media,
            callee_media2,
            &rtp(97, 1200 + k as u16, 8000 + 160 * 200, 0xca11e4, &event(7, end, 160 * (k as u16 + 1))),
        );
    }
    // An unsignalled one-way stream beside the call.
    for i in 0..50u64 {
        cap.udp(
            T0 + i * 20 * MS,
            addr("192.168.1.9:7000"),
            addr("192.168.1.10:8000"),
            &rtp(8, i as u16, 160 * i as u32, 0x99, &[0xd5; 160]),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sip.pcap");
    std::fs::write(&path, cap.bytes()).unwrap();
    let opts = ImportOptions {
        capture: path,
        out_dir: dir.path().join("out"),
        layout: Layout::Stereo,
        payload_overrides: vec![],
        keep_dtmf_digits: true,
        sealing: None,
        sample_rate: None,
        comfort_noise: true,
        format: Default::default(),
    };
    let report = import::run(&opts, None).unwrap();
    assert_eq!(report.exit_code(), 0, "{:?}", report.errors);
    assert_eq!(report.recordings.len(), 2, "the SIP call and the unsignalled stream");
    let call = report.recordings.iter().find(|r| r.call_id == "call-1@pbx").expect("SIP call");
    let (caller, callee) = (&call.legs[0], &call.legs[1]);
    assert_eq!((caller.label.as_str(), callee.label.as_str()), ("caller", "callee"));
    assert_eq!(caller.src.as_deref(), Some("10.0.0.1:4000"));
    assert_eq!(callee.dst.as_deref(), Some("10.0.0.1:4000"));
    // Both legs continued across the re-INVITE: 200 audio packets each, nothing lost.
    assert_eq!((caller.packets, caller.lost), (203, 0));
    assert_eq!((callee.packets, callee.lost), (200, 0));
    assert_eq!(caller.payload_types.get("97").map(String::as_str), Some("telephone-event/8000"));
    assert_eq!(caller.dtmf.len(), 1);
    assert_eq!(caller.dtmf[0].digit.as_deref(), Some("7"));
    assert_eq!(caller.dtmf[0].duration_ms, 60);
    assert_eq!(callee.start_offset_ms, Some(5), "callee starts 5 ms after the caller");
    assert_eq!(caller.start_offset_ms, Some(0));
    // Stereo: caller left, callee right, equal length.
    let mut wav = hound::WavReader::open(call.file.as_deref().unwrap()).unwrap();
    assert_eq!(wav.spec().channels, 2);
    let s: Vec<i16> = wav.samples::<i16>().map(Result::unwrap).collect();
    let left_nonzero = s.iter().step_by(2).filter(|&&v| v != 0).count();
    let right_nonzero = s.iter().skip(1).step_by(2).filter(|&&v| v != 0).count();
    assert_eq!((left_nonzero, right_nonzero), (200 * 160, 200 * 160));
    let other = report.recordings.iter().find(|r| r.call_id != "call-1@pbx").unwrap();
    assert_eq!(other.legs.len(), 1);
    assert_eq!(other.legs[0].payload_types.get("8").map(String::as_str), Some("PCMA/8000"));
}
