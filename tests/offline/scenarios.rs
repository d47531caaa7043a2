//! Golden scenarios: every `tests/scenarios/*.toml` names definition files,
//! lists events in a compact readable form and the transitions expected, one per
//! line (`wire::text` form). Lines are compared with whitespace folded; `#`
//! lines in `expect` are comments.
//!
//! `WINBACK_BLESS=1 cargo test --test offline scenarios` rewrites the `expect` blocks from
//! the actual output - review the diff before committing it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use winback::domain::Timestamp;
use winback::sim::Simulator;
use winback::wire;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    description: String,
    /// Paths relative to the repository root.
    config: Vec<PathBuf>,
    until: Option<String>,
    events: String,
    expect: String,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn normalize(s: &str) -> Vec<String> {
    s.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// Runs a scenario; returns (text lines, JSON lines).
fn run(path: &Path, sc: &Scenario) -> Result<(Vec<String>, Vec<String>), String> {
    let files: Vec<PathBuf> = sc.config.iter().map(|c| root().join(c)).collect();
    let loaded = winback::config::load_files(&files).map_err(|e| {
        let d: Vec<String> = e.diagnostics.iter().map(ToString::to_string).collect();
        format!("definitions invalid:\n{}", d.join("\n"))
    })?;
    let defs = Arc::new(loaded.definitions);
    let mut sim = Simulator::new(defs.clone());
    let mut out = Vec::new();
    let mut n = 0;
    for (i, line) in sc.events.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        n += 1;
        let ev = wire::text::parse_event(line, &format!("e{n}"))
            .map_err(|e| format!("{}: events line {}: {e}", path.display(), i + 1))?;
        sim.feed(&ev, &mut out)
            .map_err(|e| format!("events line {}: {e}", i + 1))?;
    }
    if let Some(u) = &sc.until {
        sim.advance_to(Timestamp::parse_rfc3339(u)?, &mut out);
    }
    let text = out.iter().map(|t| wire::text::render(&defs, t)).collect();
    let json = out
        .iter()
        .map(|t| wire::json::encode_transition(&defs, t))
        .collect();
    Ok((text, json))
}

fn bless(path: &Path, src: &str, actual: &[String]) {
    let start = src.find("expect = \"\"\"").expect("expect block") + "expect = \"\"\"".len();
    let end = start + src[start..].find("\"\"\"").expect("end of expect block");
    let body = format!("\n{}\n", actual.join("\n"));
    let new = format!("{}{}{}", &src[..start], body, &src[end..]);
    std::fs::write(path, new).expect("write blessed scenario");
}

#[test]
fn golden_scenarios() {
    let dir = root().join("tests/scenarios");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/scenarios")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 10,
        "expected the scenario files, found {}",
        paths.len()
    );
    let blessing = std::env::var_os("WINBACK_BLESS").is_some();
    let mut failures = Vec::new();
    for path in &paths {
        let src = std::fs::read_to_string(path).expect("read scenario");
        let sc: Scenario = match toml::from_str(&src) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let (text, json) = match run(path, &sc) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        match run(path, &sc) {
            Ok((_, again)) if again == json => {}
            _ => failures.push(format!(
                "{}: a second run gave different JSON",
                path.display()
            )),
        }
        let actual = normalize(&text.join("\n"));
        let expected = normalize(&sc.expect);
        if actual != expected {
            if blessing {
                bless(path, &src, &text);
                continue;
            }
            let mut msg = format!("{} ({})\n", path.display(), sc.description);
            for i in 0..actual.len().max(expected.len()) {
                let (a, e) = (actual.get(i), expected.get(i));
                if a != e {
                    msg += &format!(
                        "  line {}:\n    expected: {}\n    actual:   {}\n",
                        i + 1,
                        e.map_or("<none>", |s| s),
                        a.map_or("<none>", |s| s)
                    );
                }
            }
            failures.push(msg);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        paths.len(),
        failures.join("\n")
    );
}
