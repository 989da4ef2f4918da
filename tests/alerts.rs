//! The monitoring that ships with callvault: `docs/prometheus/alerts.yml` passes `promtool check
//! rules` and its alerts fire (and stay quiet) as unit tests under `promtool test rules` say, and
//! neither the alerts nor `docs/grafana/callvault.json` reference a metric the exporter does not
//! have — the list of known metrics here is itself checked against a live daemon's scrape.
//!
//! Without promtool the promtool tests are skipped with a notice, except under `CI`, where they
//! fail.

mod live;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use live::{Daemon, Options};
use serde_json::Value;

/// Every metric family of the exporter, as the classic text format names it, with its type.
const FAMILIES: &[(&str, &str)] = &[
    ("callvault_build_info", "gauge"),
    ("callvault_receive_backend_info", "gauge"),
    ("callvault_draining", "gauge"),
    ("callvault_active_calls", "gauge"),
    ("callvault_active_streams", "gauge"),
    ("callvault_datagrams_received_total", "counter"),
    ("callvault_received_bytes_total", "counter"),
    ("callvault_packets_received_total", "counter"),
    ("callvault_packets_lost_total", "counter"),
    ("callvault_packets_late_total", "counter"),
    ("callvault_packets_ahead_total", "counter"),
    ("callvault_packets_duplicate_total", "counter"),
    ("callvault_packets_reordered_total", "counter"),
    ("callvault_packets_malformed_total", "counter"),
    ("callvault_rtcp_packets_received_total", "counter"),
    ("callvault_dtmf_events_total", "counter"),
    ("callvault_packets_concealed_total", "counter"),
    ("callvault_decode_errors_total", "counter"),
    ("callvault_datagrams_wrong_source_total", "counter"),
    ("callvault_datagrams_stale_total", "counter"),
    ("callvault_datagrams_truncated_total", "counter"),
    ("callvault_socket_overflow_drops_total", "counter"),
    ("callvault_udp_receive_errors_total", "counter"),
    ("callvault_udp_receive_buffer_errors_total", "counter"),
    ("callvault_recordings_started_total", "counter"),
    ("callvault_recordings_ended_total", "counter"),
    ("callvault_audio_written_bytes_total", "counter"),
    ("callvault_spool_bytes", "gauge"),
    ("callvault_spool_free_bytes", "gauge"),
    ("callvault_encryption_enabled", "gauge"),
    ("callvault_leg_jitter_seconds", "histogram"),
    ("callvault_control_requests_total", "counter"),
    ("callvault_ship_backlog_recordings", "gauge"),
    ("callvault_ship_backlog_bytes", "gauge"),
    ("callvault_ship_backlog_age_seconds", "gauge"),
    ("callvault_shipped_files_total", "counter"),
    ("callvault_shipped_bytes_total", "counter"),
    ("callvault_ship_failures_total", "counter"),
    ("callvault_ship_verify_failures_total", "counter"),
    ("callvault_ship_target_down", "gauge"),
    ("callvault_recordings_released_total", "counter"),
    ("callvault_retention_deleted_total", "counter"),
    ("callvault_api_requests_total", "counter"),
    ("callvault_audit_write_errors_total", "counter"),
];

/// Families the exporter leaves out when it cannot read their source (`/proc/net/snmp`, statvfs
/// of the spool).
const CONDITIONAL: &[&str] =
    &["callvault_udp_receive_errors_total", "callvault_udp_receive_buffer_errors_total", "callvault_spool_free_bytes"];

/// Series names a query may use: the families (a histogram's `_bucket`, `_sum` and `_count`),
/// and Prometheus's own `up`.
fn known_series() -> BTreeSet<String> {
    let mut known = BTreeSet::from(["up".to_string()]);
    for (name, kind) in FAMILIES {
        if *kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                known.insert(format!("{name}{suffix}"));
            }
        } else {
            known.insert(name.to_string());
        }
    }
    known
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Words of PromQL that are neither metrics nor followed by a parenthesis of arguments.
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
/// Modifiers whose parenthesis holds label names.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// Metric names a PromQL expression selects: identifiers outside strings, label matchers,
/// ranges and label lists, that are not functions, aggregations or keywords. Grafana variables
/// (`$instance`, `${datasource}`, `$__rate_interval`) are skipped.
fn metric_names(expr: &str) -> Vec<String> {
    let c: Vec<char> = expr.chars().collect();
    let ident = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':';
    // Index just past the bracket that closes the one at `i`, strings inside skipped.
    let close = |mut i: usize, open: char, shut: char| {
        let mut depth = 0;
        while i < c.len() {
            match c[i] {
                '"' | '\'' | '`' => {
                    i = skip_string(&c, i);
                    continue;
                }
                ch if ch == open => depth += 1,
                ch if ch == shut => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        panic!("unbalanced {open} in {expr:?}");
    };
    let mut names = Vec::new();
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '"' | '\'' | '`' => i = skip_string(&c, i),
            '{' => i = close(i, '{', '}'),
            '[' => i = close(i, '[', ']'),
            '#' => i = c[i..].iter().position(|&ch| ch == '\n').map_or(c.len(), |n| i + n),
            '$' => {
                i += 1;
                if c.get(i) == Some(&'{') {
                    i = close(i, '{', '}');
                } else {
                    while i < c.len() && ident(c[i]) {
                        i += 1;
                    }
                }
            }
            ch if ch.is_ascii_digit() || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit)) => {
                while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.' || c[i] == '_') {
                    i += 1;
                }
            }
            ch if ident(ch) => {
                let start = i;
                while i < c.len() && ident(c[i]) {
                    i += 1;
                }
                let word: String = c[start..i].iter().collect();
                let mut j = i;
                while j < c.len() && c[j].is_whitespace() {
                    j += 1;
                }
                let next: String = c[j..].iter().take_while(|&&ch| ident(ch)).collect();
                // A function's or aggregation's name: `rate(`, `sum (`, `sum by (`.
                let call = c.get(j) == Some(&'(') || next == "by" || next == "without";
                if LABEL_LISTS.contains(&word.as_str()) {
                    if call {
                        i = close(j, '(', ')');
                    }
                } else if !call && !KEYWORDS.contains(&word.as_str()) {
                    names.push(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Index just past the string literal that starts at `i`.
fn skip_string(c: &[char], mut i: usize) -> usize {
    let q = c[i];
    i += 1;
    while i < c.len() && c[i] != q {
        i += if c[i] == '\\' { 2 } else { 1 };
    }
    i + 1
}

#[test]
fn metric_names_finds_selectors_only() {
    let expr = r#"histogram_quantile(0.95, sum by (instance, le) (rate(a_bucket{instance=~"$instance", x="y{z}"}[$__rate_interval])))
        / on (instance) group_left (version) b_info offset 1h > bool 5e9 and ignoring(worker) c:d
        # a comment naming not_a_metric
        + predict_linear(e[1h], 4 * 3600) unless sum(f) without (worker) or g{a='b'} > 1.5"#;
    assert_eq!(metric_names(expr), ["a_bucket", "b_info", "c:d", "e", "f", "g"]);
}

/// The `expr` of every rule in the alert rules file (one line, or a `|`/`>` block), and the
/// number of rules, to make sure none was missed.
fn rule_exprs(yaml: &str) -> (Vec<String>, usize) {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        let Some(rest) = line.trim_start().strip_prefix("expr:") else { continue };
        let rest = rest.trim();
        if rest.starts_with('|') || rest.starts_with('>') {
            let indent = line.len() - line.trim_start().len();
            let mut block = String::new();
            while i < lines.len()
                && (lines[i].trim().is_empty() || lines[i].len() - lines[i].trim_start().len() > indent)
            {
                block.push_str(lines[i].trim());
                block.push('\n');
                i += 1;
            }
            exprs.push(block);
        } else {
            exprs.push(rest.to_string());
        }
    }
    let rules = lines.iter().filter(|l| l.trim_start().starts_with("- alert:")).count();
    (exprs, rules)
}

#[test]
fn alert_rules_reference_only_known_metrics() {
    let yaml = std::fs::read_to_string(repo("docs/prometheus/alerts.yml")).unwrap();
    let (exprs, rules) = rule_exprs(&yaml);
    assert!(rules >= 11, "expected at least 11 alerts, found {rules}");
    assert_eq!(exprs.len(), rules, "every alert has one expr: {exprs:#?}");
    let known = known_series();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric found in {expr:?}");
        for name in names {
            assert!(known.contains(&name), "alerts.yml uses {name}, which callvault does not export: {expr:?}");
        }
    }
    for rule in [
        "CallvaultDown",
        "CallvaultPacketLoss",
        "CallvaultSocketOverflow",
        "CallvaultNamespaceUdpErrors",
        "CallvaultSpoolLow",
        "CallvaultSpoolFilling",
        "CallvaultRecordingsFailing",
        "CallvaultRecordingsRecovered",
        "CallvaultEncryptionOff",
        "CallvaultShippingBacklog",
        "CallvaultStorageMismatch",
        "CallvaultDraining",
        "CallvaultControlErrors",
        "CallvaultWrongSource",
    ] {
        assert!(yaml.contains(&format!("- alert: {rule}\n")), "alerts.yml lacks {rule}");
    }
}

/// Every `expr` string anywhere in the dashboard.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn dashboard_references_only_known_metrics() {
    let text = std::fs::read_to_string(repo("docs/grafana/callvault.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("docs/grafana/callvault.json is not valid JSON");
    assert_eq!(dash["schemaVersion"], 39);
    assert_eq!(dash["__inputs"][0]["name"], "DS_PROMETHEUS");
    let vars = dash["templating"]["list"].as_array().unwrap();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no ${name} variable"));
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    let known = known_series();

    // The instance variable's query: label_values(metric, label).
    let query = var("instance")["query"]["query"].as_str().or(var("instance")["query"].as_str()).unwrap();
    let metric = query.strip_prefix("label_values(").and_then(|r| r.split_once(',')).map(|(m, _)| m.trim()).unwrap();
    assert!(known.contains(metric), "the instance variable uses {metric}, which callvault does not export");

    let mut exprs = Vec::new();
    dashboard_exprs(&dash, &mut exprs);
    assert!(exprs.len() >= 20, "only {} queries in the dashboard", exprs.len());
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric found in {expr:?}");
        for name in names {
            assert!(known.contains(&name), "the dashboard uses {name}, which callvault does not export: {expr:?}");
            used.insert(name);
        }
    }
    // Every panel (rows aside) queries something, through the dashboard's data source variable.
    for p in dash["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {} has no targets", p["title"]));
        assert!(!targets.is_empty(), "panel {} has no targets", p["title"]);
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {}", p["title"]);
    }
    // Every family shows somewhere on the dashboard.
    for (name, kind) in FAMILIES {
        let shown = if *kind == "histogram" { used.iter().any(|u| u.starts_with(name)) } else { used.contains(*name) };
        assert!(shown, "the dashboard never shows {name}");
    }
}

/// `GET /metrics` in the classic text format.
fn scrape(port: u16) -> String {
    let mut http = TcpStream::connect(("127.0.0.1", port)).unwrap();
    http.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(http, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    http.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}

#[test]
fn known_metrics_are_what_the_exporter_exports() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let d = Daemon::start(Options {
        extra: format!(
            "[metrics]\nlisten = \"127.0.0.1:{port}\"\n[storage]\nship = true\n[api]\nlisten = \"127.0.0.1:{api}\"\n"
        ),
        ..Options::default()
    });
    let text = scrape(port);
    drop(d);
    let exported: BTreeSet<(String, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|r| {
            let (name, kind) = r.split_once(' ').unwrap();
            (name.to_string(), kind.to_string())
        })
        .collect();
    let known: BTreeSet<(String, String)> = FAMILIES.iter().map(|(n, k)| (n.to_string(), k.to_string())).collect();
    let unknown: Vec<_> = exported.difference(&known).collect();
    assert!(unknown.is_empty(), "exported but not in FAMILIES (add them, and to the dashboard): {unknown:?}");
    let missing: Vec<_> = known.difference(&exported).filter(|(n, _)| !CONDITIONAL.contains(&n.as_str())).collect();
    assert!(missing.is_empty(), "in FAMILIES but not exported: {missing:?}\n{text}");
}

/// Whether promtool can be run; without it, skips (false) with a notice, or fails under `CI`.
fn promtool_available() -> bool {
    match Command::new("promtool").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        other => {
            let why = match other {
                Ok(o) => format!("promtool --version failed: {}", String::from_utf8_lossy(&o.stderr)),
                Err(e) => format!("promtool cannot be run: {e}"),
            };
            assert!(std::env::var_os("CI").is_none(), "{why} (required under CI)");
            eprintln!("skipping: {why}");
            false
        }
    }
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_checks_the_rules() {
    if !promtool_available() {
        return;
    }
    promtool(&["check", "rules", repo("docs/prometheus/alerts.yml").to_str().unwrap()]);
}

/// Unit tests of the alerts (`promtool test rules`); `{RULES}` is the rules file.
const RULE_TESTS: &str = r#"rule_files:
  - "{RULES}"
evaluation_interval: 1m
tests:
  - name: recordings failing
    interval: 1m
    input_series:
      - series: 'callvault_recordings_ended_total{job="callvault",instance="cv1",outcome="failed"}'
        values: '0 0 0 1 1 1 1 1 1 1'
      - series: 'callvault_recordings_ended_total{job="callvault",instance="cv1",outcome="finished"}'
        values: '0+10x10'
    alert_rule_test:
      - eval_time: 2m
        alertname: CallvaultRecordingsFailing
        exp_alerts: []
      - eval_time: 5m
        alertname: CallvaultRecordingsFailing
        exp_alerts:
          - exp_labels: {severity: page, instance: cv1}
            exp_annotations:
              summary: "Recordings failing on cv1"
              description: "1 recordings could not be completed on cv1 in the last 10 minutes (outcome=\"failed\"). Check the daemon's log and the spool file system."

  - name: packet loss at 5 % fires, at 0.1 % does not
    interval: 1m
    input_series:
      - series: 'callvault_packets_received_total{job="callvault",instance="cv-bad",worker="0"}'
        values: '0+950x20'
      - series: 'callvault_packets_lost_total{job="callvault",instance="cv-bad",worker="0"}'
        values: '0+50x20'
      - series: 'callvault_packets_received_total{job="callvault",instance="cv-good",worker="0"}'
        values: '0+999x20'
      - series: 'callvault_packets_lost_total{job="callvault",instance="cv-good",worker="0"}'
        values: '0+1x20'
    alert_rule_test:
      - eval_time: 5m
        alertname: CallvaultPacketLoss
        exp_alerts: []
      - eval_time: 15m
        alertname: CallvaultPacketLoss
        exp_alerts:
          - exp_labels: {severity: ticket, instance: cv-bad}
            exp_annotations:
              summary: "RTP packet loss above 1 % on cv-bad"
              description: "5% of the RTP packets expected on cv-bad were lost over the last 5 minutes (RFC 3550 loss). Usually the network between the media sources and the recorder; recordings have gaps."

  - name: down
    interval: 1m
    input_series:
      - series: 'up{job="callvault",instance="cv1"}'
        values: '1 1 0 0 0 0'
      - series: 'up{job="other",instance="x"}'
        values: '0 0 0 0 0 0'
    alert_rule_test:
      - eval_time: 2m
        alertname: CallvaultDown
        exp_alerts: []
      - eval_time: 4m
        alertname: CallvaultDown
        exp_alerts:
          - exp_labels: {severity: page, instance: cv1, job: callvault}
            exp_annotations:
              summary: "callvault on cv1 is down"
              description: "Prometheus has not been able to scrape callvault on cv1 for 1 minute (up = 0): calls routed to it are not being recorded."

  - name: socket overflow
    interval: 1m
    input_series:
      - series: 'callvault_socket_overflow_drops_total{job="callvault",instance="cv1",worker="0"}'
        values: '0+60x20'
      - series: 'callvault_socket_overflow_drops_total{job="callvault",instance="cv1",worker="1"}'
        values: '0x20'
      - series: 'callvault_socket_overflow_drops_total{job="callvault",instance="cv2",worker="0"}'
        values: '7x20'
    alert_rule_test:
      - eval_time: 10m
        alertname: CallvaultSocketOverflow
        exp_alerts:
          - exp_labels: {severity: page, instance: cv1}
            exp_annotations:
              summary: "Kernel drops datagrams on full receive buffers on cv1"
              description: "The kernel dropped 1 datagrams/s on cv1 because callvault's socket receive buffers were full (SO_RXQ_OVFL): the receive buffers are too small or the workers fall behind. Recorded audio is lost. See docs/tuning.md (net.core.rmem_max, [rtp] receive buffer)."

  - name: spool
    interval: 1m
    input_series:
      - series: 'callvault_spool_free_bytes{job="callvault",instance="cv-filling"}'
        values: '1e10-1e8x120'
      - series: 'callvault_spool_free_bytes{job="callvault",instance="cv-flat"}'
        values: '2e10x120'
    alert_rule_test:
      - eval_time: 20m
        alertname: CallvaultSpoolFilling
        exp_alerts: []
      - eval_time: 40m
        alertname: CallvaultSpoolFilling
        exp_alerts:
          - exp_labels: {severity: ticket, instance: cv-filling, job: callvault}
            exp_annotations:
              summary: "Spool of cv-filling will be full within 4 hours"
              description: "At the rate of the last hour the spool file system of cv-filling runs out of space within 4 hours (predicted free space in 4 h: -16.76GiB)."
      - eval_time: 40m
        alertname: CallvaultSpoolLow
        exp_alerts: []
      - eval_time: 60m
        alertname: CallvaultSpoolLow
        exp_alerts:
          - exp_labels: {severity: page, instance: cv-filling, job: callvault}
            exp_annotations:
              summary: "Spool of cv-filling has less than 5 GB free"
              description: "Only 3.725GiB are free on the spool file system of cv-filling. Below 256 MiB /readyz fails and new calls cannot be recorded for long."

  - name: recovered at start
    interval: 1m
    input_series:
      - series: 'callvault_recordings_ended_total{job="callvault",instance="cv1",outcome="recovered"}'
        values: '2x10'
      - series: 'callvault_recordings_ended_total{job="callvault",instance="cv2",outcome="recovered"}'
        values: '0x10'
    alert_rule_test:
      - eval_time: 5m
        alertname: CallvaultRecordingsRecovered
        exp_alerts:
          - exp_labels: {severity: ticket, instance: cv1}
            exp_annotations:
              summary: "callvault on cv1 recovered recordings after a crash"
              description: "At its last start callvault on cv1 found and repaired 2 recordings left unfinished by a crash or power loss. Find out why the previous process died; the repaired recordings end at the crash."

  - name: encryption off
    interval: 1m
    input_series:
      - series: 'callvault_encryption_enabled{job="callvault",instance="cv1"}'
        values: '0x10'
      - series: 'callvault_encryption_enabled{job="callvault",instance="cv2"}'
        values: '1x10'
    alert_rule_test:
      - eval_time: 8m
        alertname: CallvaultEncryptionOff
        exp_alerts:
          - exp_labels: {severity: page, instance: cv1}
            exp_annotations:
              summary: "callvault on cv1 writes recordings in the clear"
              description: "callvault on cv1 runs with [recording] encryption = \"off\": recordings and their metadata (caller numbers, ACD metadata) reach the disk unencrypted. Unless this is a deliberate test machine, set encryption = \"on\" (docs/keys.md) and restart."

  - name: shipping backlog
    interval: 1m
    input_series:
      - series: 'callvault_ship_backlog_age_seconds{job="callvault",instance="cv1"}'
        values: '0 60 120 600 960 1020 1080 1140 1200 1260 1320 1380'
      - series: 'callvault_ship_backlog_age_seconds{job="callvault",instance="cv2"}'
        values: '0x12'
    alert_rule_test:
      - eval_time: 5m
        alertname: CallvaultShippingBacklog
        exp_alerts: []
      - eval_time: 10m
        alertname: CallvaultShippingBacklog
        exp_alerts:
          - exp_labels: {severity: ticket, instance: cv1}
            exp_annotations:
              summary: "callvault on cv1 has recordings waiting for storage for over 15 minutes"
              description: "The oldest finished recording on cv1 has waited 1320 s to reach storage. The spool keeps it, but the spool is one machine's disk: check callvault_ship_target_down and the log's shipper lines (store unreachable, credentials, bucket) before the spool fills and new calls are refused."

  - name: storage mismatch
    interval: 1m
    input_series:
      - series: 'callvault_ship_verify_failures_total{job="callvault",instance="cv1",target="backup"}'
        values: '0 0 1 1'
      - series: 'callvault_ship_verify_failures_total{job="callvault",instance="cv1",target="primary"}'
        values: '0x3'
    alert_rule_test:
      - eval_time: 3m
        alertname: CallvaultStorageMismatch
        exp_alerts:
          - exp_labels: {severity: page, instance: cv1, target: backup}
            exp_annotations:
              summary: "storage target backup of cv1 returned other bytes than were sent"
              description: "An upload read back from the backup target did not match the spool's copy (size or SHA-256). The spool kept the recording and sends it again, but a store that corrupts data must be looked at now."

  - name: forgotten drain
    interval: 1m
    input_series:
      - series: 'callvault_draining{job="callvault",instance="cv1"}'
        values: '0 1x40'
    alert_rule_test:
      - eval_time: 20m
        alertname: CallvaultDraining
        exp_alerts: []
      - eval_time: 35m
        alertname: CallvaultDraining
        exp_alerts:
          - exp_labels: {severity: ticket, instance: cv1}
            exp_annotations:
              summary: "callvault on cv1 has been draining for 30 minutes"
              description: "callvault on cv1 has refused new calls (drain) for more than 30 minutes (draining = 1). A forgotten drain? Drain lasts until the daemon restarts: finish the maintenance and restart it."

  - name: control errors
    interval: 1m
    input_series:
      - series: 'callvault_control_requests_total{job="callvault",instance="cv1",command="start",result="ok"}'
        values: '0+90x20'
      - series: 'callvault_control_requests_total{job="callvault",instance="cv1",command="stop",result="unknown_call"}'
        values: '0+10x20'
      - series: 'callvault_control_requests_total{job="callvault",instance="cv2",command="start",result="ok"}'
        values: '0+100x20'
    alert_rule_test:
      - eval_time: 15m
        alertname: CallvaultControlErrors
        exp_alerts:
          - exp_labels: {severity: ticket, instance: cv1}
            exp_annotations:
              summary: "Control requests failing on cv1"
              description: "10% of the control requests to callvault on cv1 were answered with an error over the last 5 minutes. See callvault_control_requests_total by command and result for the error codes."

  - name: audit trail and API
    interval: 1m
    input_series:
      - series: 'callvault_audit_write_errors_total{job="callvault",instance="cv1"}'
        values: '0x20'
      - series: 'callvault_api_requests_total{job="callvault",instance="cv1",action="play",result="ok"}'
        values: '0+5x10 50+5x10'
      - series: 'callvault_api_requests_total{job="callvault",instance="cv1",action="play",result="audit_unavailable"}'
        values: '0x10 0+3x10'
      - series: 'callvault_audit_write_errors_total{job="callvault",instance="cv2"}'
        values: '0x20'
      - series: 'callvault_api_requests_total{job="callvault",instance="cv2",action="search",result="audit_unavailable"}'
        values: '0x20'
      - series: 'callvault_api_requests_total{job="callvault",instance="cv2",action="search",result="unauthorized"}'
        values: '0+120x20'
    alert_rule_test:
      - eval_time: 5m
        alertname: CallvaultAuditTrailFailing
        exp_alerts: []
      - eval_time: 15m
        alertname: CallvaultAuditTrailFailing
        exp_alerts:
          - exp_labels: {severity: page, instance: cv1}
            exp_annotations:
              summary: "The audit trail cannot be written on cv1"
              description: "callvault on cv1 failed to write 12 audit entries in 5 minutes: API requests are refused (503 audit_unavailable) and control commands go on unrecorded. Check the data directory's disk and audit.db (docs/audit.md)."
      - eval_time: 15m
        alertname: CallvaultApiTokenGuessing
        exp_alerts:
          - exp_labels: {severity: ticket, instance: cv2}
            exp_annotations:
              summary: "Many refused API tokens on cv2"
              description: "The API on cv2 refuses 2 requests/s for a missing or bad token. A client with a revoked or expired token, or someone trying tokens: the audit trail (action, source) says who and from where."
"#;

#[test]
fn promtool_unit_tests_of_the_alerts_pass() {
    if !promtool_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rules = repo("docs/prometheus/alerts.yml");
    let tests = dir.path().join("alerts_test.yml");
    std::fs::write(&tests, RULE_TESTS.replace("{RULES}", rules.to_str().unwrap())).unwrap();
    promtool(&["test", "rules", tests.to_str().unwrap()]);
}
