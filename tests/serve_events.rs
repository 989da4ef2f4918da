//! Event delivery to subscribers (`subscribe`): an ACD must learn of every recording's end. A
//! subscriber that stops reading is disconnected, never silently skipped, and a resubscription
//! with `since` gets exactly what it missed. (Once, a slow subscriber silently lost events and
//! then never got another one, with its connection still open.)

mod live;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use live::{Daemon, Options};
use serde_json::json;

const CALLS: usize = 300;

#[test]
fn a_subscriber_that_stops_reading_is_disconnected_and_resubscribing_gets_every_event() {
    let d = Daemon::start(Options { pairs: 64, ..Options::default() });
    let mut slow = d.client().unwrap();
    let r = slow.request(json!({"cmd": "subscribe"}));
    assert_eq!(r["subscribed"], true, "{r}");
    let first_seq = r["last_seq"].as_u64().unwrap() + 1;

    // Another client makes CALLS recordings end while the subscriber does not read: far more
    // event bytes than a socket buffer holds.
    let mut acd = d.client().unwrap();
    let started = Instant::now();
    for i in 0..CALLS {
        let id = format!("ev-{i}");
        let r = acd.request(json!({"cmd": "start", "call_id": id, "legs": [{"label": "a", "rtcp_mux": true}]}));
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(acd.request(json!({"cmd": "stop", "call_id": id}))["ok"], true);
    }
    // The daemon keeps serving the ACD meanwhile: publishing never waits for a slow reader.
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    // Longer than the daemon's write timeout (5 s): the stalled subscription is given up.
    std::thread::sleep(Duration::from_secs(7));

    // What the slow subscriber gets: events in seq order without a gap, then the end of the
    // connection (or, had everything fitted, all of them).
    let mut seen = Vec::new();
    while let Some(v) = slow.next_line() {
        if v.get("event").is_some() && v["event"] == "recording_finished" {
            seen.push(v["seq"].as_u64().unwrap());
        }
    }
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "a gap in the events: {seen:?}");
    assert!(seen.first().is_none_or(|&s| s == first_seq), "first event {seen:?}, expected seq {first_seq}");
    assert!(seen.len() < CALLS, "all {CALLS} fitted in the socket buffer; the test needs more events");
    assert!(d.log().contains("disconnecting it"), "the daemon says why it let the subscriber go");

    // Reconnect and resubscribe from the last event seen: the rest is replayed.
    let last = seen.last().copied().unwrap_or(first_seq - 1);
    let mut again = d.client().unwrap();
    let r = again.request(json!({"cmd": "subscribe", "since": last}));
    assert_eq!(r["events_lost"], false, "{r}");
    let mut all: BTreeSet<u64> = seen.iter().copied().collect();
    while all.len() < CALLS {
        let v = again.next_line().expect("replayed events");
        if v["event"] == "recording_finished" {
            assert!(all.insert(v["seq"].as_u64().unwrap()), "event {} twice", v["seq"]);
        }
    }
    let ids: BTreeSet<u64> = (first_seq..first_seq + CALLS as u64).collect();
    assert_eq!(all, ids, "every recording's end reported exactly once");
    // The daemon is fine: the ACD's connection still works.
    assert_eq!(acd.request(json!({"cmd": "health"}))["ok"], true);
}
