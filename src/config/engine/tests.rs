use super::*;

fn parse(text: &str, env: &[(&str, &str)]) -> Result<EngineConfig, InvalidEngine> {
    parse_engine(
        Path::new("conf/winback.toml"),
        text,
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

fn errors(text: &str) -> Vec<String> {
    match parse(text, &[]) {
        Ok(_) => vec![],
        Err(e) => e.diagnostics.iter().map(|d| d.to_string()).collect(),
    }
}

#[test]
fn defaults_and_relative_paths() {
    let c = parse("conversations = [\"a.toml\"]\nstate_dir = \"st\"\n", &[]).unwrap();
    assert_eq!(c.conversations, vec![PathBuf::from("conf/a.toml")]);
    assert_eq!(c.state_dir, PathBuf::from("conf/st"));
    assert!(c.embedded());
    assert_eq!(c.group_id, DEFAULT_GROUP_ID);
    assert_eq!(c.inputs.len(), 2);
    assert_eq!(c.input_format("checkouts"), Some(InputFormat::Json));
    assert_eq!(c.outputs.sends, DEFAULT_SENDS_TOPIC);
    assert_eq!(c.commit_interval_ms, DEFAULT_COMMIT_INTERVAL_MS);
    assert_eq!(c.restore_from, RestoreFrom::Start);
}

#[test]
fn gauge_idle_timeout_defaults_and_is_checked_with_its_field() {
    let c = parse("conversations = [\"a.toml\"]\n", &[]).unwrap();
    assert_eq!(c.gauge_idle_timeout, DEFAULT_GAUGE_IDLE_TIMEOUT);
    let c = parse(
        "conversations = [\"a.toml\"]\n[admin]\ngauge_idle_timeout = \"30s\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.gauge_idle_timeout, Duration(30 * SECOND_MS));
    for (v, why) in [("\"0\"", "shorter than 1s"), ("\"later\"", "bad duration")] {
        let errs = errors(&format!(
            "conversations = [\"a.toml\"]\n[admin]\ngauge_idle_timeout = {v}\n"
        ));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains(":3:22: error: admin.gauge_idle_timeout: ") && errs[0].contains(why),
            "{errs:?}"
        );
    }
}

#[test]
fn time_rules_default_and_are_checked_with_their_field() {
    let c = parse("conversations = [\"a.toml\"]\n", &[]).unwrap();
    assert_eq!(c.time, TimeRules::default());
    assert_eq!(c.time.allowed_lateness, Duration(5 * MINUTE_MS));
    let c = parse(
        "conversations = [\"a.toml\"]\n[processing]\nquiet_period = \"2s\"\nallowed_lateness = \"0\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.time.quiet_period, Duration(2 * SECOND_MS));
    assert_eq!(c.time.allowed_lateness, Duration::ZERO);
    let errs = errors(
        "conversations = [\"a.toml\"]\n[processing]\nquiet_period = \"soon\"\nmax_future_skew = \"400d\"\n",
    );
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].contains(":3:16: error: processing.quiet_period: bad duration"),
        "{errs:?}"
    );
    assert!(
        errs[1].contains(":4:19: error: processing.max_future_skew: 400d is longer than 365d"),
        "{errs:?}"
    );
}

#[test]
fn restores_read_from_the_position_on_a_named_broker_unless_told() {
    let named = "conversations = [\"a.toml\"]\n[broker]\nbootstrap_servers = \"k:9092\"\n";
    assert_eq!(
        parse(named, &[]).unwrap().restore_from,
        RestoreFrom::Position
    );
    // The environment names the broker: the default follows it.
    let c = parse(
        "conversations = [\"a.toml\"]\n",
        &[(ENV_BOOTSTRAP, "k:9092")],
    )
    .unwrap();
    assert_eq!(c.restore_from, RestoreFrom::Position);
    let told = format!("{named}restore_from = \"start\"\n");
    assert_eq!(parse(&told, &[]).unwrap().restore_from, RestoreFrom::Start);
    let errs = errors(&format!("{named}restore_from = \"middle\"\n"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("conf/winback.toml:4:16: error: broker.restore_from: \"middle\""),
        "{errs:?}"
    );
}

#[test]
fn the_embedded_broker_defaults_to_at_least_once_and_positions_stop_by_default() {
    let embedded = parse("conversations = [\"a.toml\"]\n", &[]).unwrap();
    assert_eq!(embedded.guarantee, Guarantee::AtLeastOnce);
    assert_eq!(embedded.offset_out_of_range, OffsetOutOfRange::Stop);
    let named = "conversations = [\"a.toml\"]\n[broker]\nbootstrap_servers = \"k:9092\"\n";
    assert_eq!(parse(named, &[]).unwrap().guarantee, Guarantee::ExactlyOnce);
    let told = "conversations = [\"a.toml\"]\n[processing]\nguarantee = \"exactly_once\"\noffset_out_of_range = \"earliest\"\n";
    let c = parse(told, &[]).unwrap();
    assert_eq!(
        (c.guarantee, c.offset_out_of_range),
        (Guarantee::ExactlyOnce, OffsetOutOfRange::Earliest)
    );
    let errs =
        errors("conversations = [\"a.toml\"]\n[processing]\noffset_out_of_range = \"skip\"\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("processing.offset_out_of_range: \"skip\": expected"),
        "{errs:?}"
    );
}

#[test]
fn environment_overrides_brokers_and_carries_secrets() {
    let c = parse(
        "conversations = [\"a.toml\"]\n[broker]\nbootstrap_servers = \"file:9092\"\n[kafka]\n\"security.protocol\" = \"sasl_ssl\"\n",
        &[
            (ENV_BOOTSTRAP, "env:9092"),
            ("WINBACK_KAFKA_SASL_PASSWORD", "s3cret"),
            ("WINBACK_KAFKA_SASL_MECHANISM", "PLAIN"),
            ("UNRELATED", "x"),
        ],
    )
    .unwrap();
    assert_eq!(c.bootstrap_servers, "env:9092");
    assert!(!c.embedded());
    assert_eq!(c.kafka["sasl.password"], "s3cret");
    assert_eq!(c.kafka["security.protocol"], "sasl_ssl");
}

#[test]
fn contact_history_defaults_on_and_can_be_turned_off() {
    let on = parse("conversations = [\"a.toml\"]\n", &[]).unwrap();
    assert!(on.contact_history);
    let off = parse(
        "conversations = [\"a.toml\"]\n[processing]\ncontact_history = false\n",
        &[],
    )
    .unwrap();
    assert!(!off.contact_history);
}

#[test]
fn sasl_without_libsasl2_accepts_scram_and_names_the_gssapi_feature() {
    let ok = parse(
        "conversations = [\"a.toml\"]\n[kafka]\n\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n",
        &[],
    );
    assert!(ok.is_ok(), "{:?}", ok.err());
    let errs = errors(
        "conversations = [\"a.toml\"]\n[kafka]\n\"security.protocol\" = \"sasl_plaintext\"\n\"sasl.mechanisms\" = \"GSSAPI\"\n",
    );
    // librdkafka itself, at client creation (where a missing SASL provider shows).
    let client = |mechanism: &str| {
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("security.protocol", "sasl_ssl")
            .set("sasl.mechanisms", mechanism)
            .set("sasl.username", "u")
            .set("sasl.password", "p")
            .create::<rdkafka::producer::BaseProducer>()
            .map(|_| ())
    };
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        assert!(
            client(mechanism).is_ok(),
            "{mechanism}: {:?}",
            client(mechanism)
        );
    }
    assert_eq!(client("GSSAPI").is_ok(), cfg!(feature = "gssapi"));
    if cfg!(feature = "gssapi") {
        assert!(errs.is_empty(), "{errs:?}");
    } else {
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("conf/winback.toml:4:1: error: kafka.\"sasl.mechanisms\": GSSAPI"),
            "{errs:?}"
        );
    }
}

#[test]
fn every_problem_is_reported_with_line_and_field() {
    let errs = errors(
        "conversations = [\"a.toml\"]\n\
         [[input]]\ntopic = \"bad topic\"\nformat = \"xml\"\n\
         [processing]\ncommit_interval_ms = 0\n\
         [kafka]\n\"group.id\" = \"x\"\n\"no.such.property\" = \"1\"\n",
    );
    let joined = errs.join("\n");
    assert!(
        joined.contains("conf/winback.toml:3:9: error: input[0].topic: ' '"),
        "{joined}"
    );
    assert!(
        joined.contains(":4:10: error: input[0].format: \"xml\""),
        "{joined}"
    );
    assert!(
        joined.contains(":6:22: error: processing.commit_interval_ms"),
        "{joined}"
    );
    assert!(
        joined.contains(":8:1: error: kafka.\"group.id\": winback sets"),
        "{joined}"
    );
    assert!(
        joined.contains(":9:1: error: kafka.\"no.such.property\": librdkafka rejects it"),
        "{joined}"
    );
    assert_eq!(errs.len(), 5, "{joined}");
}

#[test]
fn unknown_keys_are_rejected_with_their_line() {
    let errs = errors("conversations = [\"a.toml\"]\n[broker]\nbootstrap = \"x\"\n");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("conf/winback.toml:3:1: error:"),
        "{errs:?}"
    );
    assert!(errs[0].contains("unknown field `bootstrap`"), "{errs:?}");
}

#[test]
fn outputs_must_differ_from_inputs_and_each_other() {
    let errs = errors(
        "conversations = [\"a.toml\"]\n[output]\ntransitions = \"checkouts\"\nsends = \"checkouts\"\n",
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("both an input and an output")),
        "{errs:?}"
    );
    assert!(errs.iter().any(|e| e.contains("must differ")), "{errs:?}");
}
