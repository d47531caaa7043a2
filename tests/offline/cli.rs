//! The `winback` binary end to end: exit codes, messages, files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn winback(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_winback"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run winback")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write");
    p
}

const EVENTS: &str = r#"{"event_id":"s1","name":"subscribe","contact_id":"c1","list_id":"master","occurred_at":"2026-01-01T00:00:00Z"}
{"event_id":"e1","name":"checkout","contact_id":"c1","occurred_at":"2026-01-05T10:00:00Z","merchant_id":"m1","order_id":"o1","total":49.9}

{"event_id":"e2","name":"checkout","contact_id":"c1","occurred_at":"2026-02-04T10:00:00Z"}
{"event_id":"e2","name":"checkout","contact_id":"c1","occurred_at":"2026-02-04T10:00:00Z"}
{"event_id":"e3","name":"checkout","occurred_at":"2026-02-05T10:00:00Z"}
{"event_id":"e4","name":"subscribe","contact_id":"c2","occurred_at":"2026-02-05T10:00:00Z"}
"#;

#[test]
fn validate_accepts_the_shipped_conversations() {
    let o = winback(&[
        "validate",
        "config/winback-90d.toml",
        "config/winback-filter-coupon.toml",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).starts_with("valid: 2 conversation(s)"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn validate_rejects_with_file_line_and_field_and_exit_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = std::fs::read_to_string("config/winback-90d.toml")
        .expect("seed")
        .replace("target = \"winback-wait\"", "target = \"winback-wiat\"")
        .replace("duration = \"90d\"", "duration = \"90 days\"");
    let f = write(dir.path(), "bad.toml", &body);
    let o = winback(&["validate", f.to_str().expect("utf-8 path")]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    let name = f.display().to_string();
    assert!(
        err.contains(&format!(
            "{name}:24:12: error: thread[0].step[0].duration: bad duration"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{name}:40:10: error: thread[1].step[0].target: no step has id \"winback-wiat\""
        )),
        "{err}"
    );
}

/// A line stamped far after `--until` is reported with its number and
/// skipped (`run` dead-letters it), so it moves no clock: the earlier
/// purchase's wait still ends at its own expiry, and late events are counted.
#[test]
fn simulate_skips_a_line_stamped_beyond_the_future_skew_and_counts_late_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ev = write(
        dir.path(),
        "events.jsonl",
        concat!(
            r#"{"event_id":"s1","name":"subscribe","contact_id":"ann","list_id":"master","occurred_at":"2026-01-01T00:00:00Z"}"#,
            "\n",
            r#"{"event_id":"o1","name":"checkout","contact_id":"ann","occurred_at":"2026-01-05T10:00:00Z"}"#,
            "\n",
            r#"{"event_id":"o9","name":"checkout","contact_id":"bob","occurred_at":"9999-12-31T00:00:00Z"}"#,
            "\n",
            r#"{"event_id":"o2","name":"checkout","contact_id":"cyd","occurred_at":"2026-01-04T10:00:00Z"}"#,
            "\n",
        ),
    );
    let args = [
        "simulate",
        "--config",
        "config/winback-90d.toml",
        "--events",
        ev.to_str().expect("utf-8"),
        "--until",
        "2026-12-31T00:00:00Z",
    ];
    let o = winback(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("events.jsonl:3: occurred_at 9999-12-31T00:00:00Z is more than 1h after 2026-12-31T00:00:00Z (--max-future-skew)"),
        "{err}"
    );
    assert!(
        err.contains("late events (before the clock when folded): 1"),
        "{err}"
    );
    let out = text(&o.stdout);
    assert!(
        out.contains(r#""type":"send","conversation":"Winback","contact_id":"ann","at":"2026-04-05T10:00:00Z""#),
        "{out}"
    );
    assert!(!out.contains("\"bob\""), "{out}");
}

#[test]
fn simulate_reports_bad_lines_by_number_and_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ev = write(dir.path(), "events.jsonl", EVENTS);
    let out = dir.path().join("out.jsonl");
    let args = [
        "simulate",
        "--config",
        "config/winback-filter-coupon.toml",
        "--events",
        ev.to_str().expect("utf-8"),
        "--until",
        "2026-12-31T00:00:00Z",
        "--out",
        out.to_str().expect("utf-8"),
    ];
    let o = winback(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    let name = ev.display().to_string();
    assert!(
        err.contains(&format!(
            "{name}:5: duplicate event_id \"e2\" for contact \"c1\": ignored"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{name}:6: invalid JSON event: missing field `contact_id`"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{name}:7: invalid event: event `subscribe` is a subscription event and needs `list_id`"
        )),
        "{err}"
    );
    assert!(
        err.contains("events: 6 line(s), 3 folded, 1 duplicate(s) ignored, 2 malformed skipped"),
        "{err}"
    );
    assert!(err.contains("2026-W19  1"), "sends per week: {err}");
    let first = std::fs::read(&out).expect("output");
    let lines = text(&first);
    let send = lines
        .lines()
        .find(|l| l.contains("\"type\":\"send\""))
        .expect("a send");
    let v: serde_json::Value = serde_json::from_str(send).expect("JSON line");
    assert_eq!(v["at"], "2026-05-05T10:00:00Z");
    assert_eq!(v["conversation"], "Winback Coupon");
    assert_eq!(v["contact_id"], "c1");
    assert_eq!(v["fields"]["coupon_code"], "WB15-0001");
    assert_eq!(v["transition_id"].as_str().map(str::len), Some(32));

    // Same input, byte-identical output.
    let o = winback(&args);
    assert!(o.status.success());
    assert_eq!(std::fs::read(&out).expect("output"), first);
}

/// `simulate --strict` of the 90-day seed over `events`, which must stop it.
fn simulate_strict(events: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let ev = write(dir.path(), "events.jsonl", events);
    let o = winback(&[
        "simulate",
        "--config",
        "config/winback-90d.toml",
        "--events",
        ev.to_str().expect("utf-8"),
        "--strict",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    o
}

#[test]
fn simulate_strict_stops_at_the_first_bad_line() {
    let o = simulate_strict(EVENTS);
    let err = text(&o.stderr);
    assert!(err.contains(":6: stopping (--strict)"), "{err}");
    // What came before the bad line was still written.
    assert!(
        text(&o.stdout).contains("\"type\":\"reentered\""),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn simulate_strict_folds_nothing_after_an_invalid_event() {
    // The invalid event decodes: it is refused by the fold, in the middle of
    // a batch of decoded events, and the events after it must not be folded.
    let events = concat!(
        r#"{"event_id":"e1","name":"checkout","contact_id":"before","occurred_at":"2026-01-05T10:00:00Z","total":10}"#,
        "\n",
        r#"{"event_id":"e2","name":"subscribe","contact_id":"c1","occurred_at":"2026-01-05T11:00:00Z"}"#,
        "\n",
        r#"{"event_id":"e3","name":"checkout","contact_id":"after","occurred_at":"2026-01-05T12:00:00Z","total":10}"#,
        "\n",
    );
    let o = simulate_strict(events);
    let err = text(&o.stderr);
    assert!(
        err.contains(":2: invalid event: event `subscribe`"),
        "{err}"
    );
    assert!(err.contains(":2: stopping (--strict)"), "{err}");
    let out = text(&o.stdout);
    assert!(out.contains("\"contact_id\":\"before\""), "{out}");
    assert!(!out.contains("\"contact_id\":\"after\""), "{out}");
}

#[test]
fn simulate_without_until_fires_nothing_past_the_last_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ev = write(dir.path(), "events.jsonl", EVENTS);
    let o = winback(&[
        "simulate",
        "--config",
        "config/winback-90d.toml",
        "--events",
        ev.to_str().expect("utf-8"),
        "--format",
        "text",
    ]);
    assert!(o.status.success());
    assert!(!text(&o.stdout).contains(" send "), "{}", text(&o.stdout));
}

#[test]
fn simulate_rejects_a_bad_until_and_invalid_definitions() {
    let o = winback(&[
        "simulate",
        "--config",
        "config/winback-90d.toml",
        "--events",
        "/dev/null",
        "--until",
        "soon",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("--until \"soon\""),
        "{}",
        text(&o.stderr)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let f = write(dir.path(), "package.toml", "[package]\nname = \"x\"\n");
    let o = winback(&[
        "simulate",
        "--config",
        f.to_str().expect("utf-8"),
        "--events",
        "/dev/null",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let want = format!(
        "{}:1:2: error: unknown field `package`, expected one of `conversation`, `thread`, `coupon_pool`",
        f.display()
    );
    assert!(text(&o.stderr).contains(&want), "{}", text(&o.stderr));
}

/// The JSON form, byte for byte: every field of every transition type the
/// golden files hold (review a diff here like an API change).
#[test]
fn json_output_matches_the_golden_files() {
    let cases = [
        (
            vec![
                "config/winback-90d.toml",
                "config/winback-filter-coupon.toml",
            ],
            "examples/events.jsonl",
            Some("2027-01-01T00:00:00Z"),
            "tests/golden/examples.transitions.jsonl",
        ),
        (
            vec!["tests/scenarios/defs/small-pool.toml"],
            "tests/golden/small-pool.events.jsonl",
            None,
            "tests/golden/small-pool.transitions.jsonl",
        ),
    ];
    for (configs, events, until, golden) in cases {
        let mut args = vec!["simulate", "--config"];
        args.extend(configs);
        args.extend(["--events", events]);
        if let Some(u) = until {
            args.extend(["--until", u]);
        }
        let o = winback(&args);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let want = std::fs::read_to_string(golden).expect("golden file");
        let got = text(&o.stdout);
        for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
            assert_eq!(g, w, "{golden} line {}", i + 1);
        }
        assert_eq!(
            got.lines().count(),
            want.lines().count(),
            "{golden}: line count"
        );
    }
}

#[test]
fn validate_checks_an_engine_config_and_its_conversations() {
    let o = winback(&["validate", "--config", "config/winback.toml"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("valid: 2 conversation(s)"),
        "{}",
        text(&o.stdout)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = write(
        dir.path(),
        "engine.toml",
        "conversations = [\"missing.toml\"]\n[processing]\ncommit_interval_ms = -5\n[kafka]\n\"enable.auto.commit\" = true\n",
    );
    let o = winback(&["validate", "--config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("engine.toml:3:22: error: processing.commit_interval_ms"),
        "{err}"
    );
    assert!(
        err.contains("engine.toml:5:1: error: kafka.\"enable.auto.commit\""),
        "{err}"
    );
}

/// A child process killed when the test leaves it behind (a failed
/// assertion), so that it does not outlive the test binary.
struct Killed(Option<std::process::Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn run_with_the_embedded_broker_produce_tail_and_a_clean_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let port = free_port();
    let admin_port = free_port();
    let cfg = write(
        dir.path(),
        "engine.toml",
        &format!(
            "conversations = [{:?}]\nstate_dir = \"state\"\n[broker]\nembedded_listen = \"127.0.0.1:{port}\"\nembedded_partitions = 2\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[processing]\ncommit_interval_ms = 200\n",
            root.join("config/winback-90d.toml").display().to_string()
        ),
    );
    let cfg = cfg.to_str().unwrap();
    let mut run = Killed(Some(
        Command::new(env!("CARGO_BIN_EXE_winback"))
            .args(["run", "--config", cfg])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start run"),
    ));
    // The broker is up once its port answers.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "embedded broker never listened"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let events = write(
        dir.path(),
        "events.jsonl",
        "{\"event_id\":\"s1\",\"name\":\"subscribe\",\"contact_id\":\"ann\",\"list_id\":\"master\",\"occurred_at\":\"2026-01-01T00:00:00Z\"}\n\
         {\"event_id\":\"o1\",\"name\":\"checkout\",\"contact_id\":\"ann\",\"occurred_at\":\"2026-01-05T10:00:00Z\"}\nnot json\n",
    );
    let o = winback(&[
        "produce",
        "--config",
        cfg,
        "--events",
        events.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a malformed line is reported: {}",
        text(&o.stderr)
    );
    assert!(
        text(&o.stderr).contains("events.jsonl:3:"),
        "{}",
        text(&o.stderr)
    );
    assert!(
        text(&o.stderr).contains("produced 2 event(s)"),
        "{}",
        text(&o.stderr)
    );

    // Against today's wall clock the purchase is long past: once the
    // partition has been quiet for the quiet period, its clock moves to the
    // wall clock less the allowed lateness, and the send comes out: entered,
    // goto, wait_started, send, exited. Stamped at the wait's expiry, as
    // `simulate` stamps it: the purchase was folded before the clock moved.
    let o = winback(&["tail", "--config", cfg, "--max", "5", "--idle-exit", "30"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let lines: Vec<String> = text(&o.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    let send: serde_json::Value = lines
        .iter()
        .find(|l| l.contains("\"type\":\"send\""))
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .unwrap_or_else(|| panic!("no send in {lines:?}"));
    assert_eq!(send["at"], "2026-04-05T10:00:00Z");
    assert_eq!(send["contact_id"], "ann");
    let o = winback(&[
        "tail",
        "--config",
        cfg,
        "--topic",
        "sends",
        "--max",
        "1",
        "--idle-exit",
        "10",
    ]);
    assert_eq!(text(&o.stdout).lines().count(), 1);

    // The admin server: ready, and the send counted once it is committed.
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], admin_port).into();
    assert_eq!(
        crate::common::admin::get(admin, "/readyz"),
        (200, "ready\n".to_string())
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, page) = crate::common::admin::get(admin, "/metrics");
        assert_eq!(status, 200);
        let sends = crate::common::admin::value(
            &page,
            "winback_transitions_total",
            &[("conversation", "Winback"), ("type", "send")],
        );
        if sends == Some(1.0) {
            assert_eq!(
                crate::common::admin::value(
                    &page,
                    "winback_dead_letters_total",
                    &[("reason", "malformed")]
                ),
                None,
                "produce refused the malformed line: nothing reached the engine"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "send never counted: {page}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // SIGTERM: finish the batch, write, exit 0.
    let run = run.0.take().expect("still running");
    let pid = run.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let out = run.wait_with_output().expect("run exits");
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("stopped: 2 event(s) (0 late, 0 misrouted), 5 transition(s)"),
        "{err}"
    );
    assert!(dir.path().join("state/rocksdb").is_dir());
}

/// `simulate --partitions 4` makes what `run` makes over 4 partitions (the
/// kit's oracle of the live tests): the same transitions as without it but
/// for the coupon codes, each partition drawing from its share of the pool.
#[test]
fn simulate_over_partitions_draws_codes_as_run_does() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let events = root.join("examples/events.jsonl");
    let until = "2027-01-01T00:00:00Z";
    let run = |extra: &[&str]| {
        let mut args = vec![
            "simulate",
            "--config",
            "config/winback-90d.toml",
            "config/winback-filter-coupon.toml",
            "--events",
            events.to_str().unwrap(),
            "--until",
            until,
        ];
        args.extend_from_slice(extra);
        let o = winback(&args);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let mut lines: Vec<String> = text(&o.stdout).lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    let defs = crate::common::definitions(&crate::common::SEEDS);
    let lines: Vec<String> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    let until = winback::domain::Timestamp::parse_rfc3339(until).unwrap();
    let mut want = crate::common::kafka::simulate_partitioned(&defs, &lines, until, 4);
    want.sort();
    let split = run(&["--partitions", "4"]);
    assert_eq!(split, want);
    let whole = run(&[]);
    assert_eq!(run(&["--partitions", "1"]), whole);
    // Only the codes differ: same transitions, same instants.
    let without_codes = |ls: &[String]| -> Vec<String> {
        let mut v: Vec<String> = ls
            .iter()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                for key in ["code", "fields"] {
                    if let Some(o) = v.as_object_mut() {
                        o.remove(key);
                    }
                }
                v.to_string()
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(without_codes(&split), without_codes(&whole));
    assert_ne!(split, whole, "the pools' shares give other codes");
}

/// `simulate` over the experiment example prints the per-variant report:
/// entries, sends, held-out messages and conversions (a purchase 3 days
/// after c0's message converts it for B; c3 is held out).
#[test]
fn simulate_prints_the_experiment_report_per_variant() {
    let dir = tempfile::tempdir().unwrap();
    let events = write(
        dir.path(),
        "events.jsonl",
        concat!(
            r#"{"event_id":"s0","name":"subscribe","contact_id":"c0","list_id":"master","occurred_at":"2026-01-01T00:00:00Z"}"#,
            "\n",
            r#"{"event_id":"s1","name":"subscribe","contact_id":"c3","list_id":"master","occurred_at":"2026-01-01T00:00:00Z"}"#,
            "\n",
            r#"{"event_id":"o0","name":"checkout","contact_id":"c0","occurred_at":"2026-01-05T10:00:00Z"}"#,
            "\n",
            r#"{"event_id":"o1","name":"checkout","contact_id":"c3","occurred_at":"2026-01-05T10:00:00Z"}"#,
            "\n",
            r#"{"event_id":"o2","name":"checkout","contact_id":"c0","occurred_at":"2026-04-08T10:00:00Z"}"#,
            "\n",
        ),
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = winback(&[
        "simulate",
        "--config",
        root.join("config/examples/winback-experiment.toml")
            .to_str()
            .unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--until",
        "2026-06-01T00:00:00Z",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "experiment \"Winback Experiment\" (conversions: a purchase within 7d after a message):"
        ),
        "{err}"
    );
    let row = |variant: &str| {
        err.lines()
            .find(|l| l.trim_start().starts_with(variant))
            .map(|l| l.split_whitespace().skip(3).collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("no row {variant}: {err}"))
    };
    // entries, sent, held out, conversions, rate
    assert_eq!(row("control / B"), ["1", "1", "0", "1", "100.0%"], "{err}");
    assert_eq!(row("holdout / B"), ["1", "0", "1", "0", "0.0%"], "{err}");
}
