use super::*;

fn load(text: &str) -> Result<Loaded, Invalid> {
    load_with_codes(text, "A\nB\n")
}

fn load_with_codes(text: &str, codes: &str) -> Result<Loaded, Invalid> {
    let codes = codes.to_string();
    load_texts(&[(Path::new("conv.toml"), text)], &move |_p: &Path| {
        Ok(codes.clone())
    })
}

fn messages(r: Result<Loaded, Invalid>) -> Vec<String> {
    match r {
        Ok(l) => l.warnings.iter().map(ToString::to_string).collect(),
        Err(e) => e.diagnostics.iter().map(ToString::to_string).collect(),
    }
}

const GOOD: &str = r#"
[conversation]
name = "Winback"
list = "master"
allow_unlimited_entries = true

[[thread]]
name = "Winback Thread"
no_events_required = true

[[thread.step]]
id = "wait-90"
type = "wait"
duration = "90d"

[[thread.step]]
id = "send"
type = "message"
message = "Winback Message"

[[thread]]
name = "Entry Thread"
events = ["checkout"]
rank = 2

[[thread.step]]
id = "to-wait"
type = "goto"
target = "wait-90"
"#;

#[test]
fn good_file_compiles_with_defaults() {
    let l = load(GOOD).expect("valid");
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let c = &l.definitions.conversations[0];
    assert_eq!(c.entry, EntryPolicy::Restart);
    assert_eq!(c.triggers.get("checkout"), Some(&1));
    assert_eq!(l.definitions.purchase_events, ["checkout"]);
    assert_eq!(c.threads[0].rank, DEFAULT_RANK);
}

#[test]
fn unknown_key_is_rejected_with_line() {
    let text = GOOD.replace("duration = \"90d\"", "durration = \"90d\"");
    let m = messages(load(&text));
    assert!(
        m.iter()
            .any(|m| m.starts_with("conv.toml:14:") && m.contains("unknown field `durration`")),
        "{m:?}"
    );
}

#[test]
fn dangling_goto_names_file_line_and_field() {
    let text = GOOD.replace("target = \"wait-90\"", "target = \"wait-91\"");
    let m = messages(load(&text));
    assert_eq!(
        m,
        [r#"conv.toml:29:10: error: thread[1].step[0].target: no step has id "wait-91""#],
        "{m:?}"
    );
}

#[test]
fn bad_duration_is_rejected() {
    let m = messages(load(&GOOD.replace("\"90d\"", "\"90 days\"")));
    assert!(
        m.len() == 1
            && m[0].contains("conv.toml:14:12: error: thread[0].step[0].duration: bad duration"),
        "{m:?}"
    );
}

#[test]
fn unreachable_no_event_thread_is_an_error() {
    let text = GOOD.replace(
        "type = \"goto\"\ntarget = \"wait-90\"",
        "type = \"wait\"\nduration = \"1d\"",
    );
    let m = messages(load(&text));
    assert!(
        m.iter()
            .any(|m| m
                .contains("error: thread[0]: thread \"Winback Thread\" has No Events Required")),
        "{m:?}"
    );
}

#[test]
fn goto_loop_without_wait_is_an_error_but_with_a_wait_is_fine() {
    let with_back = GOOD.replace(
        "message = \"Winback Message\"",
        "message = \"Winback Message\"\n\n[[thread.step]]\nid = \"back\"\ntype = \"goto\"\ntarget = \"wait-90\"",
    );
    let m = messages(load(
        &with_back.replace("duration = \"90d\"", "duration = \"0\""),
    ));
    assert!(m.iter().any(|m| m.contains("error: thread[0].step[2]: GoTo loop with no wait in it (wait-90 → send → back → wait-90)")), "{m:?}");
    // The same shape through a 90-day wait is a legitimate repeating campaign.
    let m = messages(load(&with_back));
    assert!(m.is_empty(), "{m:?}");
}

#[test]
fn x_minus_one_rule_warns() {
    let text = r#"
[conversation]
name = "F"
list = "master"
[[thread]]
name = "Filter"
events = ["checkout"]
[[thread.step]]
id = "w"
type = "wait"
duration = "90d"
[[thread.step]]
id = "g"
type = "goto"
target = "m"
filter = { last_order_before = "90d" }
[[thread]]
name = "Message"
no_events_required = true
[[thread.step]]
id = "m"
type = "message"
message = "hi"
"#;
    let m = messages(load(text));
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(m[0].contains("warning: thread[0].step[1].filter.last_order_before: offset 90d is not one day less than the wait of 90d before it (X-1 = 89d)"), "{m:?}");
    assert!(messages(load(&text.replace("\"90d\" }", "\"89d\" }"))).is_empty());
}

#[test]
fn a_conversation_that_sends_without_a_list_warns() {
    let m = messages(load(&GOOD.replace("list = \"master\"\n", "")));
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].contains("conv.toml:2:1: warning: conversation.list: this conversation sends messages but names no list"),
        "{m:?}"
    );
}

#[test]
fn unknown_pool_and_missing_fields_are_all_reported() {
    let text = GOOD.replace(
        "[[thread.step]]\nid = \"send\"",
        "[[thread.step]]\nid = \"coupon\"\ntype = \"action\"\naction = \"set_coupon_code\"\npool = \"nope\"\nfield = \"coupon\"\nwhen_exhausted = \"continue\"\n\n[[thread.step]]\nid = \"coupon2\"\ntype = \"action\"\n\n[[thread.step]]\nid = \"send\"",
    );
    let m = messages(load(&text));
    assert!(
        m.iter()
            .any(|m| m.contains("step[1].pool: no coupon pool is named \"nope\"")),
        "{m:?}"
    );
    for f in ["action", "pool", "field", "when_exhausted"] {
        assert!(
            m.iter()
                .any(|m| m.contains(&format!("step[2].{f}: a action step needs `{f}`"))),
            "{f}: {m:?}"
        );
    }
}

#[test]
fn field_of_another_step_type_is_rejected() {
    let m = messages(load(&GOOD.replace(
        "message = \"Winback Message\"",
        "message = \"Winback Message\"\nduration = \"1d\"",
    )));
    assert!(
        m.iter()
            .any(|m| m.contains("step[1].duration: `duration` does not apply to a message step")),
        "{m:?}"
    );
}

#[test]
fn duplicate_codes_are_rejected_with_their_line() {
    let text = GOOD.to_string() + "\n[[coupon_pool]]\nname = \"p\"\ncodes_file = \"codes.txt\"\n";
    let m = messages(load_with_codes(&text, "A\nB\n\nA\n"));
    assert_eq!(
        m,
        [
            "codes.txt:4:1: error: code \"A\" already appears on line 1: a code may be handed out only once"
        ]
    );
}

#[test]
fn rank_picks_the_thread() {
    let text = GOOD.to_string()
        + "\n[[thread]]\nname = \"VIP\"\nevents = [\"checkout\"]\nrank = 1\n[[thread.step]]\nid = \"vip-msg\"\ntype = \"message\"\nmessage = \"vip\"\n";
    let l = load(&text).expect("valid");
    assert_eq!(l.definitions.conversations[0].triggers["checkout"], 2);
}

#[test]
fn toml_syntax_error_has_a_line() {
    let m = messages(load("[conversation\nname = 1"));
    assert!(m[0].starts_with("conv.toml:1:"), "{m:?}");
}

#[test]
fn two_pools_that_share_a_code_are_rejected() {
    let text = GOOD.to_string()
        + "\n[[coupon_pool]]\nname = \"p\"\ncodes_file = \"codes.txt\"\n\n[[coupon_pool]]\nname = \"q\"\ncodes_file = \"codes.txt\"\n";
    let m = messages(load_with_codes(&text, "A\nB\n"));
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].contains("coupon_pool[1].codes_file: code \"A\" is also in coupon pool \"p\""),
        "{m:?}"
    );
}

#[test]
fn the_forget_event_name_is_reserved() {
    let text = GOOD.replace(
        r#"events = ["checkout"]"#,
        r#"events = ["checkout", "forget"]"#,
    );
    let m = messages(load(&text));
    assert!(
        m.iter()
            .any(|m| m.contains("thread[1].events") && m.contains("\"forget\" is reserved")),
        "{m:?}"
    );
    let text = GOOD.replace(
        "allow_unlimited_entries = true",
        "allow_unlimited_entries = true\npurchase_events = [\"checkout\", \"forget\"]",
    );
    let m = messages(load(&text));
    assert!(
        m.iter().any(|m| m.starts_with("conv.toml:6:")
            && m.contains("conversation.purchase_events")
            && m.contains("\"forget\" is reserved")),
        "{m:?}"
    );
}

#[test]
fn exit_events_route_and_are_checked_with_their_field() {
    let text = GOOD
        .replace(
            "allow_unlimited_entries = true",
            "allow_unlimited_entries = true\nexit_events = [\"order_refunded\"]",
        )
        .replace(
            "no_events_required = true",
            "no_events_required = true\nexit_events = [\"complaint\"]",
        );
    let l = load(&text).expect("valid");
    let d = &l.definitions;
    assert_eq!(d.route("order_refunded").unwrap().exits, [(0, None)]);
    assert_eq!(d.route("complaint").unwrap().exits, [(0, Some(0))]);
    assert!(d.route("checkout").unwrap().exits.is_empty());

    for (from, to, field, why) in [
        (
            "allow_unlimited_entries = true",
            "allow_unlimited_entries = true\nexit_events = [\"checkout\"]",
            "conversation.exit_events",
            "starts entries of this conversation",
        ),
        (
            "rank = 2",
            "rank = 2\nexit_events = [\"checkout\"]",
            "thread[1].exit_events",
            "starts this thread's entries",
        ),
        (
            "no_events_required = true",
            "no_events_required = true\nexit_events = [\"a\", \"a\"]",
            "thread[0].exit_events",
            "named twice",
        ),
        (
            "no_events_required = true",
            "no_events_required = true\nexit_events = [\"forget\"]",
            "thread[0].exit_events",
            "reserved",
        ),
        (
            "allow_unlimited_entries = true",
            "allow_unlimited_entries = true\nexit_events = [\" \"]",
            "conversation.exit_events",
            "must not be empty",
        ),
    ] {
        let errs = messages(load(&GOOD.replace(from, to)));
        assert!(
            errs.iter()
                .any(|e| e.contains(&format!("error: {field}: ")) && e.contains(why)),
            "{field}: {errs:?}"
        );
    }
}

#[test]
fn profile_filters_and_profile_events_compile_and_are_checked() {
    use crate::domain::definition::ProfileTest;
    let text = GOOD
        .replace(
            "allow_unlimited_entries = true",
            "allow_unlimited_entries = true\nprofile_events = [\"profile_updated\"]",
        )
        .replace(
            "target = \"wait-90\"",
            "target = \"wait-90\"\nfilter = { profile = { tier = { in = [\"gold\"] }, ltv = { min = 100, max = 900 }, name = { exists = true }, plan = { equals = \"pro\" } } }",
        );
    let l = load(&text).expect("valid");
    assert!(l.definitions.route("profile_updated").is_some());
    let c = &l.definitions.conversations[0];
    let StepKind::Goto {
        filter: Some(f), ..
    } = &c.steps[2].kind
    else {
        panic!("{:?}", c.steps[2].kind)
    };
    assert_eq!(
        f.profile,
        [
            (
                "ltv".into(),
                ProfileTest::Between {
                    min: Some(100.0),
                    max: Some(900.0)
                }
            ),
            ("name".into(), ProfileTest::Exists(true)),
            ("plan".into(), ProfileTest::Equals("pro".into())),
            ("tier".into(), ProfileTest::In(vec!["gold".into()])),
        ]
    );
    for (filter, why) in [
        ("{ tier = { in = [] } }", "at least one value"),
        (
            "{ tier = { equals = \"a\", exists = true } }",
            "exactly one condition",
        ),
        ("{ tier = {} }", "exactly one condition"),
        ("{ ltv = { min = 5, max = 1 } }", "greater than `max`"),
    ] {
        let errs = messages(load(&GOOD.replace(
            "target = \"wait-90\"",
            &format!("target = \"wait-90\"\nfilter = {{ profile = {filter} }}"),
        )));
        assert!(
            errs.iter()
                .any(|e| e.contains("thread[1].step[0].filter.profile.") && e.contains(why)),
            "{filter}: {errs:?}"
        );
    }
    let errs = messages(load(&GOOD.replace(
        "target = \"wait-90\"",
        "target = \"wait-90\"\nfilter = { profile = { tier = { like = \"g\" } } }",
    )));
    assert!(
        errs.iter().any(|e| e.contains("unknown field `like`")),
        "{errs:?}"
    );
}

#[test]
fn cadence_waits_compile_and_are_checked() {
    use crate::domain::definition::Cadence;
    let with = |c: &str| GOOD.replace("duration = \"90d\"", &format!("cadence = {c}"));
    let l = load(&with(
        "{ factor = 1.5, min = \"7d\", max = \"365d\", fallback = \"90d\" }",
    ))
    .expect("valid");
    let StepKind::CadenceWait(c) = &l.definitions.conversations[0].steps[0].kind else {
        panic!()
    };
    assert_eq!(
        *c,
        Cadence {
            factor: 1.5,
            min: Duration(7 * DAY_MS),
            max: Duration(365 * DAY_MS),
            fallback: Duration(90 * DAY_MS)
        }
    );
    for (c, field, why) in [
        (
            "{ factor = 0, min = \"7d\", max = \"9d\", fallback = \"9d\" }",
            "cadence.factor",
            "above 0",
        ),
        (
            "{ min = \"9d\", max = \"7d\", fallback = \"9d\" }",
            "cadence.min",
            "longer than `max`",
        ),
        (
            "{ min = \"0\", max = \"7d\", fallback = \"9d\" }",
            "cadence.min",
            "longer than 0",
        ),
        (
            "{ min = \"1d\", max = \"7d\", fallback = \"soon\" }",
            "cadence.fallback",
            "bad duration",
        ),
    ] {
        let errs = messages(load(&with(c)));
        assert!(
            errs.iter()
                .any(|e| e.contains(&format!("thread[0].step[0].{field}")) && e.contains(why)),
            "{c}: {errs:?}"
        );
    }
    let both = GOOD.replace(
        "duration = \"90d\"",
        "duration = \"90d\"\ncadence = { min = \"1d\", max = \"7d\", fallback = \"9d\" }",
    );
    assert!(messages(load(&both)).iter().any(|e| e.contains("not both")));
}

#[test]
fn send_windows_and_time_zones_compile_and_are_checked() {
    use crate::domain::window::SendWindow;
    let text = GOOD.replace(
        "allow_unlimited_entries = true",
        "allow_unlimited_entries = true\ntime_zone = \"Europe/Paris\"\nsend_window = { days = [\"mon\", \"Sat\"], from = \"08:30\", to = \"24:00\" }",
    );
    let l = load(&text).expect("valid");
    let c = &l.definitions.conversations[0];
    assert_eq!(c.time_zone, chrono_tz::Europe::Paris);
    assert_eq!(&*c.time_zone_field, DEFAULT_TIME_ZONE_FIELD);
    let StepKind::Message { window, .. } = &c.steps[1].kind else {
        panic!("{:?}", c.steps[1].kind)
    };
    assert_eq!(
        *window,
        Some(SendWindow {
            days: [true, false, false, false, false, true, false],
            from_min: 510,
            to_min: 1440
        })
    );
    // A step's own window wins over the conversation's.
    let own = text.replace(
        "message = \"Winback Message\"",
        "message = \"Winback Message\"\nsend_window = { from = \"10:00\", to = \"11:00\" }",
    );
    let l = load(&own).expect("valid");
    let StepKind::Message { window, .. } = &l.definitions.conversations[0].steps[1].kind else {
        panic!()
    };
    assert_eq!(window.map(|w| (w.days, w.from_min)), Some(([true; 7], 600)));
    // A wait has a window only of its own, never the conversation's.
    assert_eq!(c.steps[0].window, None);
    let wait = text.replace(
        "duration = \"90d\"",
        "duration = \"90d\"\nsend_window = { days = [\"tue\"], from = \"10:00\", to = \"11:00\" }",
    );
    let l = load(&wait).expect("valid");
    let steps = &l.definitions.conversations[0].steps;
    assert_eq!(
        steps[0].window.map(|w| (w.days[1], w.from_min)),
        Some((true, 600))
    );
    assert_eq!(steps[1].window, None);

    for (from, to, field, why) in [
        (
            "allow_unlimited_entries = true",
            "allow_unlimited_entries = true\ntime_zone = \"Mars/Olympus\"",
            "conversation.time_zone",
            "not a time zone",
        ),
        (
            "allow_unlimited_entries = true",
            "allow_unlimited_entries = true\nsend_window = { from = \"20:00\", to = \"09:00\" }",
            "conversation.send_window.to",
            "is not after",
        ),
        (
            "allow_unlimited_entries = true",
            "allow_unlimited_entries = true\nsend_window = { days = [\"someday\"], from = \"09:00\", to = \"10:00\" }",
            "conversation.send_window.days",
            "not a day",
        ),
        (
            "allow_unlimited_entries = true",
            "allow_unlimited_entries = true\nsend_window = { days = [], from = \"09:00\", to = \"10:00\" }",
            "conversation.send_window.days",
            "at least one day",
        ),
        (
            "message = \"Winback Message\"",
            "message = \"Winback Message\"\nsend_window = { from = \"9\", to = \"10:00\" }",
            "thread[0].step[1].send_window.from",
            "not a time",
        ),
        (
            "duration = \"90d\"",
            "duration = \"90d\"\nsend_window = { from = \"09:00\", to = \"9:60\" }",
            "thread[0].step[0].send_window.to",
            "not a time",
        ),
    ] {
        let errs = messages(load(&GOOD.replace(from, to)));
        assert!(
            errs.iter()
                .any(|e| e.contains(&format!("error: {field}")) && e.contains(why)),
            "{field}: {errs:?}"
        );
    }
}

#[test]
fn a_frequency_cap_is_one_table_checked_with_its_field() {
    use crate::domain::definition::{CapOutcome, FrequencyCap};
    let load_two = |a: &str, b: &str| {
        let (a, b) = (a.to_string(), b.to_string());
        load_texts(
            &[
                (Path::new("conv.toml"), a.as_str()),
                (Path::new("cap.toml"), b.as_str()),
            ],
            &|_p: &Path| Ok("A\nB\n".to_string()),
        )
    };
    let with_wait = GOOD.replace(
        "message = \"Winback Message\"",
        "message = \"Winback Message\"\nwhen_capped = \"wait\"",
    );
    let l = load_two(&with_wait, "[frequency_cap]\nmessages = 2\nper = \"3d\"\n").expect("valid");
    assert_eq!(
        l.definitions.frequency_cap,
        Some(FrequencyCap {
            messages: 2,
            per: Duration(3 * DAY_MS)
        })
    );
    let StepKind::Message { when_capped, .. } = &l.definitions.conversations[0].steps[1].kind
    else {
        panic!()
    };
    assert_eq!(*when_capped, CapOutcome::Wait);
    for (cap, field, why) in [
        (
            "[frequency_cap]\nmessages = 0\nper = \"7d\"\n",
            "frequency_cap.messages",
            "1 to 16",
        ),
        (
            "[frequency_cap]\nmessages = 1\nper = \"0\"\n",
            "frequency_cap.per",
            "longer than 0",
        ),
        (
            "[frequency_cap]\nmessages = 1\nper = \"7d\"\nscope = \"all\"\n",
            "",
            "unknown field `scope`",
        ),
    ] {
        let errs = messages(load_two(GOOD, cap));
        assert!(
            errs.iter().any(|e| e.contains(field) && e.contains(why)),
            "{cap}: {errs:?}"
        );
    }
    let twice = format!("{GOOD}\n[frequency_cap]\nmessages = 1\nper = \"7d\"\n");
    let errs = messages(load_two(
        &twice,
        "[frequency_cap]\nmessages = 1\nper = \"7d\"\n",
    ));
    assert!(
        errs.iter().any(|e| e.contains("already declared in")),
        "{errs:?}"
    );
    let errs = messages(load(&GOOD.replace(
        "message = \"Winback Message\"",
        "message = \"Winback Message\"\nwhen_capped = \"later\"",
    )));
    assert!(
        errs.iter()
            .any(|e| e.contains("when_capped") && e.contains("\"suppress\" or \"wait\"")),
        "{errs:?}"
    );
}
