//! Definition files (TOML) → validated [`Definitions`]. Parse and check
//! everything first, reporting every problem with its file, line and field; the
//! engine only ever sees definitions that passed.

mod cap;
pub mod diagnostic;
pub mod engine;
mod events;
mod graph;
mod profile;
pub mod raw;
mod step;
mod window;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::Spanned;

use crate::domain::definition::{
    Conversation, Definitions, EntryPolicy, PoolDef, PoolIdx, Step, StepIdx, StepKind, Thread,
    ThreadIdx,
};
use crate::domain::time::{DAY_MS, Duration, Timestamp};
pub use diagnostic::{Diagnostic, Severity, Source};
use raw::{RawConversation, RawFile, RawPool, RawThread};

pub const DEFAULT_RANK: u32 = 1;
pub const DEFAULT_MAX_PARALLEL_ENTRIES: u32 = 16;
pub const DEFAULT_PURCHASE_EVENTS: &[&str] = &["checkout"];
pub const DEFAULT_SUBSCRIBE_EVENTS: &[&str] = &["subscribe"];
use crate::domain::definition::FORGET_EVENT;
const RESERVED_FORGET: &str =
    "\"forget\" is reserved: that event erases the contact (README, \"Forgetting a contact\")";
pub const DEFAULT_UNSUBSCRIBE_EVENTS: &[&str] = &["unsubscribe"];
/// The profile field that names a contact's time zone, unless
/// `time_zone_field` says otherwise.
pub const DEFAULT_TIME_ZONE_FIELD: &str = "time_zone";
/// How long after a message a purchase counts as its conversion.
pub const DEFAULT_ATTRIBUTION_WINDOW: Duration = Duration(7 * DAY_MS);

/// Definitions that passed validation, with the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    pub definitions: Definitions,
    pub warnings: Vec<Diagnostic>,
}

/// Everything wrong with a set of definition files (errors, and warnings too).
#[derive(Debug, thiserror::Error)]
#[error("{} error(s) in the definition files", self.errors().count())]
pub struct Invalid {
    pub diagnostics: Vec<Diagnostic>,
}

impl Invalid {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }
}

/// Reads, validates and compiles definition files. Files may hold one
/// conversation each and/or coupon pools; pools are shared by all files.
pub fn load_files(paths: &[PathBuf]) -> Result<Loaded, Invalid> {
    let mut texts = Vec::with_capacity(paths.len());
    let mut diags = Vec::new();
    for p in paths {
        match std::fs::read_to_string(p) {
            Ok(t) => texts.push((p.clone(), t)),
            Err(e) => diags.push(file_diag(p, format!("cannot read the file: {e}"))),
        }
    }
    let inputs: Vec<(&Path, &str)> = texts
        .iter()
        .map(|(p, t)| (p.as_path(), t.as_str()))
        .collect();
    match load_texts(&inputs, &|p: &Path| std::fs::read_to_string(p)) {
        Ok(loaded) if diags.is_empty() => Ok(loaded),
        Ok(loaded) => {
            diags.extend(loaded.warnings);
            Err(Invalid { diagnostics: diags })
        }
        Err(mut inv) => {
            diags.append(&mut inv.diagnostics);
            Err(Invalid { diagnostics: diags })
        }
    }
}

fn file_diag(path: &Path, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        field: String::new(),
        message,
    }
}

type ReadFile<'a> = &'a dyn Fn(&Path) -> std::io::Result<String>;

/// As [`load_files`], over texts already read; `read` loads coupon code files.
pub fn load_texts(inputs: &[(&Path, &str)], read: ReadFile<'_>) -> Result<Loaded, Invalid> {
    let mut diags = Vec::new();
    let mut parsed = Vec::new();
    for &(path, text) in inputs {
        let src = Source { path, text };
        match toml::from_str::<RawFile>(text) {
            Ok(raw) => parsed.push((src, raw)),
            Err(e) => diags.push(src.diag(
                Severity::Error,
                e.span(),
                "",
                e.message().trim_end().to_string(),
            )),
        }
    }

    let mut pools: Vec<PoolDef> = Vec::new();
    let mut pool_index: HashMap<String, PoolIdx> = HashMap::new();
    for (src, raw) in &parsed {
        for (i, p) in raw.coupon_pool.iter().enumerate() {
            if let Some(def) = compile_pool(src, i, p.get_ref(), read, &mut diags) {
                if pool_index.contains_key(&*def.name) {
                    diags.push(src.diag(
                        Severity::Error,
                        Some(p.get_ref().name.span()),
                        format!("coupon_pool[{i}].name"),
                        format!("coupon pool {:?} is declared twice", def.name),
                    ));
                    continue;
                }
                // A code in two pools could be handed out once by each.
                if let Some((other, code)) = pools.iter().find_map(|o| {
                    let theirs: std::collections::HashSet<&str> =
                        o.codes.iter().map(|c| &**c).collect();
                    def.codes
                        .iter()
                        .find(|c| theirs.contains(&***c))
                        .map(|c| (o.name.clone(), c.clone()))
                }) {
                    diags.push(src.diag(
                        Severity::Error,
                        Some(p.get_ref().codes_file.span()),
                        format!("coupon_pool[{i}].codes_file"),
                        format!(
                            "code {code:?} is also in coupon pool {other:?}: a code may be handed out only once, so pools must not share codes"
                        ),
                    ));
                }
                pool_index.insert(def.name.to_string(), pools.len() as PoolIdx);
                pools.push(def);
            }
        }
    }

    let mut conversations = Vec::new();
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for (src, raw) in &parsed {
        let Some(conv) = &raw.conversation else {
            if !raw.thread.is_empty() {
                diags.push(src.diag(
                    Severity::Error,
                    Some(raw.thread[0].span()),
                    "conversation",
                    "threads need a [conversation] table",
                ));
            } else if raw.coupon_pool.is_empty() && raw.frequency_cap.is_none() {
                diags.push(src.diag(
                    Severity::Error,
                    None,
                    "",
                    "the file declares no [conversation], [[coupon_pool]] or [frequency_cap]",
                ));
            }
            continue;
        };
        let name = conv.get_ref().name.get_ref();
        if let Some(other) = names.get(name) {
            diags.push(src.diag(
                Severity::Error,
                Some(conv.get_ref().name.span()),
                "conversation.name",
                format!(
                    "conversation {name:?} is also defined in {}",
                    other.display()
                ),
            ));
            continue;
        }
        names.insert(name.clone(), src.path.to_path_buf());
        if let Some(c) =
            compile_conversation(src, conv, &raw.thread, &pools, &pool_index, &mut diags)
        {
            conversations.push(c);
        }
    }

    let mut purchase = BTreeSet::new();
    let mut subscribe = BTreeSet::new();
    let mut unsubscribe = BTreeSet::new();
    for (_, raw) in &parsed {
        if let Some(c) = &raw.conversation {
            let c = c.get_ref();
            purchase.extend(names_or_default(
                &c.purchase_events,
                DEFAULT_PURCHASE_EVENTS,
            ));
            subscribe.extend(names_or_default(
                &c.subscribe_events,
                DEFAULT_SUBSCRIBE_EVENTS,
            ));
            unsubscribe.extend(names_or_default(
                &c.unsubscribe_events,
                DEFAULT_UNSUBSCRIBE_EVENTS,
            ));
        }
    }
    for (src, raw) in &parsed {
        if let Some(c) = &raw.conversation
            && let Some(u) = &c.get_ref().unsubscribe_events
        {
            for n in u.get_ref().iter().filter(|n| subscribe.contains(*n)) {
                diags.push(src.diag(
                    Severity::Error,
                    Some(u.span()),
                    "conversation.unsubscribe_events",
                    format!("{n:?} is also a subscribe event"),
                ));
            }
        }
    }

    let frequency_cap = cap::compile(&parsed, &mut diags);

    diags.sort_by(|a, b| {
        (&a.file, a.line, a.column, a.severity).cmp(&(&b.file, b.line, b.column, b.severity))
    });
    if diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(Invalid { diagnostics: diags });
    }
    let mut definitions = Definitions::new(
        conversations,
        pools,
        purchase.into_iter().collect(),
        subscribe.into_iter().collect(),
        unsubscribe.into_iter().collect(),
    );
    definitions.frequency_cap = frequency_cap;
    Ok(Loaded {
        definitions,
        warnings: diags,
    })
}

fn names_or_default(v: &Option<Spanned<Vec<String>>>, default: &[&str]) -> Vec<String> {
    match v {
        Some(v) => v.get_ref().clone(),
        None => default.iter().map(|s| s.to_string()).collect(),
    }
}

fn compile_pool(
    src: &Source<'_>,
    i: usize,
    p: &RawPool,
    read: ReadFile<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<PoolDef> {
    let at = |f: &str| format!("coupon_pool[{i}].{f}");
    let name = p.name.get_ref().trim();
    if name.is_empty() {
        diags.push(src.diag(
            Severity::Error,
            Some(p.name.span()),
            at("name"),
            "must not be empty",
        ));
        return None;
    }
    let rel = Path::new(p.codes_file.get_ref());
    let path = if rel.is_absolute() {
        rel.to_path_buf()
    } else {
        src.path.parent().unwrap_or(Path::new("")).join(rel)
    };
    let text = match read(&path) {
        Ok(t) => t,
        Err(e) => {
            diags.push(src.diag(
                Severity::Error,
                Some(p.codes_file.span()),
                at("codes_file"),
                format!("cannot read {}: {e}", path.display()),
            ));
            return None;
        }
    };
    let mut codes: Vec<Arc<str>> = Vec::new();
    let mut first_line: HashMap<&str, usize> = HashMap::new();
    let mut ok = true;
    for (n, line) in text.lines().enumerate() {
        let code = line.trim();
        if code.is_empty() {
            continue;
        }
        if let Some(prev) = first_line.insert(code, n + 1) {
            ok = false;
            diags.push(Diagnostic {
                severity: Severity::Error,
                file: path.clone(),
                line: n + 1,
                column: 1,
                field: String::new(),
                message: format!("code {code:?} already appears on line {prev}: a code may be handed out only once"),
            });
        }
        codes.push(code.into());
    }
    if codes.is_empty() {
        diags.push(src.diag(
            Severity::Warning,
            Some(p.codes_file.span()),
            at("codes_file"),
            format!(
                "{} holds no codes: every assignment will find the pool exhausted",
                path.display()
            ),
        ));
    }
    let expires_at = match &p.expires_at {
        Some(s) => match Timestamp::parse_rfc3339(s.get_ref()) {
            Ok(t) => Some(t),
            Err(e) => {
                diags.push(src.diag(Severity::Error, Some(s.span()), at("expires_at"), e));
                ok = false;
                None
            }
        },
        None => None,
    };
    let low_stock = p.low_stock.as_ref().map_or_else(
        || (codes.len() as u64).div_ceil(10).max(1),
        |l| *l.get_ref(),
    );
    ok.then(|| PoolDef {
        name: name.into(),
        codes: codes.into(),
        low_stock,
        expires_at,
    })
}

fn parse_duration(
    src: &Source<'_>,
    s: &Spanned<String>,
    field: String,
    diags: &mut Vec<Diagnostic>,
) -> Option<Duration> {
    match Duration::parse(s.get_ref()) {
        Ok(d) if d > crate::domain::time::MAX_WAIT => {
            diags.push(src.diag(
                Severity::Error,
                Some(s.span()),
                field,
                format!(
                    "{} is longer than {}, the longest duration accepted",
                    d,
                    crate::domain::time::MAX_WAIT
                ),
            ));
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            diags.push(src.diag(Severity::Error, Some(s.span()), field, e));
            None
        }
    }
}

fn non_empty(
    src: &Source<'_>,
    s: &Spanned<String>,
    field: String,
    diags: &mut Vec<Diagnostic>,
) -> Option<Arc<str>> {
    let v = s.get_ref().trim();
    if v.is_empty() {
        diags.push(src.diag(Severity::Error, Some(s.span()), field, "must not be empty"));
        None
    } else {
        Some(v.into())
    }
}

fn compile_conversation(
    src: &Source<'_>,
    conv: &Spanned<RawConversation>,
    threads: &[Spanned<RawThread>],
    pools: &[PoolDef],
    pool_index: &HashMap<String, PoolIdx>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Conversation> {
    let errors_before = count_errors(diags);
    let c = conv.get_ref();
    let name = non_empty(src, &c.name, "conversation.name".into(), diags);
    let list = c
        .list
        .as_ref()
        .and_then(|l| non_empty(src, l, "conversation.list".into(), diags))
        .map(|l| Box::from(&*l));
    let unlimited = c
        .allow_unlimited_entries
        .as_ref()
        .is_some_and(|b| *b.get_ref());
    let max = c
        .max_parallel_entries
        .as_ref()
        .map_or(DEFAULT_MAX_PARALLEL_ENTRIES, |m| *m.get_ref());
    if let Some(m) = &c.max_parallel_entries
        && *m.get_ref() == 0
    {
        diags.push(src.diag(
            Severity::Error,
            Some(m.span()),
            "conversation.max_parallel_entries",
            "must be at least 1",
        ));
    }
    let entry = match (&c.reentry, unlimited) {
        (Some(r), false) => {
            diags.push(src.diag(
                Severity::Warning,
                Some(r.span()),
                "conversation.reentry",
                "ignored: allow_unlimited_entries is false, so a contact enters only once",
            ));
            EntryPolicy::Once
        }
        (None, false) => EntryPolicy::Once,
        (None, true) => EntryPolicy::Restart,
        (Some(r), true) => match r.get_ref().as_str() {
            "restart" => EntryPolicy::Restart,
            "parallel" => EntryPolicy::Parallel { max },
            other => {
                diags.push(src.diag(
                    Severity::Error,
                    Some(r.span()),
                    "conversation.reentry",
                    format!("unknown re-entry mode {other:?}: use \"restart\" or \"parallel\""),
                ));
                EntryPolicy::Restart
            }
        },
    };
    if c.max_parallel_entries.is_some() && !matches!(entry, EntryPolicy::Parallel { .. }) {
        let span = c.max_parallel_entries.as_ref().map(|m| m.span());
        diags.push(src.diag(
            Severity::Warning,
            span,
            "conversation.max_parallel_entries",
            "ignored: re-entry mode is not \"parallel\"",
        ));
    }
    for (field, v) in [
        ("purchase_events", &c.purchase_events),
        ("subscribe_events", &c.subscribe_events),
        ("unsubscribe_events", &c.unsubscribe_events),
    ] {
        if let Some(v) = v {
            if field == "purchase_events" && v.get_ref().is_empty() {
                diags.push(src.diag(
                    Severity::Error,
                    Some(v.span()),
                    format!("conversation.{field}"),
                    "name at least one purchase event",
                ));
            }
            if v.get_ref().iter().any(|n| n.trim().is_empty()) {
                diags.push(src.diag(
                    Severity::Error,
                    Some(v.span()),
                    format!("conversation.{field}"),
                    "event names must not be empty",
                ));
            }
            if v.get_ref().iter().any(|n| n.trim() == FORGET_EVENT) {
                diags.push(src.diag(
                    Severity::Error,
                    Some(v.span()),
                    format!("conversation.{field}"),
                    RESERVED_FORGET,
                ));
            }
        }
    }
    if threads.is_empty() {
        diags.push(src.diag(
            Severity::Error,
            Some(conv.span()),
            "thread",
            "a conversation needs at least one [[thread]]",
        ));
    }

    let conv_window = c
        .send_window
        .as_ref()
        .and_then(|w| window::compile(src, w, "conversation.send_window", diags));
    let time_zone = window::zone(src, c.time_zone.as_ref(), diags);
    let holdout = match &c.holdout {
        Some(h) if !(0.0..=1.0).contains(h.get_ref()) => {
            diags.push(src.diag(
                Severity::Error,
                Some(h.span()),
                "conversation.holdout",
                "a share from 0 to 1 (0.1 holds out a tenth of the contacts)",
            ));
            0.0
        }
        Some(h) => *h.get_ref(),
        None => 0.0,
    };
    let experiment_salt: Arc<str> = c
        .experiment_salt
        .as_ref()
        .map_or_else(|| "".into(), |s| s.get_ref().as_str().into());
    let attribution_window = c
        .attribution_window
        .as_ref()
        .and_then(|w| parse_duration(src, w, "conversation.attribution_window".into(), diags))
        .unwrap_or(DEFAULT_ATTRIBUTION_WINDOW);
    let time_zone_field: Arc<str> = match &c.time_zone_field {
        Some(f) => non_empty(src, f, "conversation.time_zone_field".into(), diags)
            .unwrap_or_else(|| DEFAULT_TIME_ZONE_FIELD.into()),
        None => DEFAULT_TIME_ZONE_FIELD.into(),
    };

    // Threads and step ids first, so GoTo targets can point forward.
    let mut compiled_threads = Vec::new();
    let mut step_ids: HashMap<String, StepIdx> = HashMap::new();
    let mut thread_names: HashMap<String, usize> = HashMap::new();
    let mut next_step: StepIdx = 0;
    for (ti, t) in threads.iter().enumerate() {
        let t = t.get_ref();
        let tname = non_empty(src, &t.name, format!("thread[{ti}].name"), diags)
            .unwrap_or_else(|| "".into());
        if let Some(prev) = thread_names.insert(tname.to_string(), ti) {
            diags.push(src.diag(
                Severity::Error,
                Some(t.name.span()),
                format!("thread[{ti}].name"),
                format!("thread {tname:?} is already thread[{prev}]"),
            ));
        }
        let rank = match &t.rank {
            Some(r) if *r.get_ref() < 0 || *r.get_ref() > i64::from(u32::MAX) => {
                diags.push(src.diag(
                    Severity::Error,
                    Some(r.span()),
                    format!("thread[{ti}].rank"),
                    "must be a whole number from 0",
                ));
                DEFAULT_RANK
            }
            Some(r) => *r.get_ref() as u32,
            None => DEFAULT_RANK,
        };
        let no_events = t.no_events_required.as_ref().is_some_and(|b| *b.get_ref());
        let events: Vec<String> = match (&t.events, no_events) {
            (Some(ev), true) => {
                diags.push(src.diag(
                    Severity::Error,
                    Some(ev.span()),
                    format!("thread[{ti}].events"),
                    "a thread with no_events_required = true takes no events",
                ));
                vec![]
            }
            (Some(ev), false)
                if ev.get_ref().is_empty() || ev.get_ref().iter().any(|e| e.trim().is_empty()) =>
            {
                diags.push(src.diag(
                    Severity::Error,
                    Some(ev.span()),
                    format!("thread[{ti}].events"),
                    "name at least one event, none empty (or set no_events_required = true)",
                ));
                vec![]
            }
            (Some(ev), false) if ev.get_ref().iter().any(|e| e.trim() == FORGET_EVENT) => {
                diags.push(src.diag(
                    Severity::Error,
                    Some(ev.span()),
                    format!("thread[{ti}].events"),
                    RESERVED_FORGET,
                ));
                vec![]
            }
            (Some(ev), false) => ev.get_ref().iter().map(|e| e.trim().to_string()).collect(),
            (None, true) => vec![],
            (None, false) => {
                diags.push(src.diag(
                    Severity::Error,
                    Some(t.name.span()),
                    format!("thread[{ti}]"),
                    "the trigger step needs `events = [...]` or `no_events_required = true`",
                ));
                vec![]
            }
        };
        let first_step = next_step;
        for (si, s) in t.step.iter().enumerate() {
            let id = s.get_ref().id.get_ref().trim().to_string();
            if id.is_empty() {
                diags.push(src.diag(
                    Severity::Error,
                    Some(s.get_ref().id.span()),
                    format!("thread[{ti}].step[{si}].id"),
                    "must not be empty",
                ));
            } else if id == crate::wire::TRIGGER_STEP {
                diags.push(src.diag(
                    Severity::Error,
                    Some(s.get_ref().id.span()),
                    format!("thread[{ti}].step[{si}].id"),
                    "\"trigger\" is reserved for the thread's trigger step",
                ));
            } else if step_ids.insert(id.clone(), next_step).is_some() {
                diags.push(src.diag(
                    Severity::Error,
                    Some(s.get_ref().id.span()),
                    format!("thread[{ti}].step[{si}].id"),
                    format!("step id {id:?} is used twice"),
                ));
            }
            next_step += 1;
        }
        if t.step.is_empty() {
            diags.push(src.diag(
                Severity::Warning,
                Some(t.name.span()),
                format!("thread[{ti}].step"),
                "the thread has no steps: an entry exits right after its trigger",
            ));
        }
        compiled_threads.push(Thread {
            name: tname,
            rank,
            events,
            first_step,
            end_step: next_step,
            exit_events: events::names(
                src,
                t.exit_events.as_ref(),
                &format!("thread[{ti}].exit_events"),
                diags,
            ),
        });
    }

    let mut steps: Vec<Step> = Vec::new();
    let mut step_at: Vec<(usize, usize)> = Vec::new();
    for (ti, t) in threads.iter().enumerate() {
        for (si, s) in t.get_ref().step.iter().enumerate() {
            let (kind, window) = step::compile_step(
                src,
                ti,
                si,
                s.get_ref(),
                &step_ids,
                pools,
                pool_index,
                conv_window,
                diags,
            )
            .unwrap_or((StepKind::Wait(Duration::ZERO), None));
            steps.push(Step {
                id: s.get_ref().id.get_ref().trim().into(),
                thread: ti as ThreadIdx,
                kind,
                window,
            });
            step_at.push((ti, si));
        }
    }

    let mut triggers: HashMap<String, ThreadIdx> = HashMap::new();
    for (ti, t) in compiled_threads.iter().enumerate() {
        for ev in &t.events {
            match triggers.get(ev) {
                Some(&other) if compiled_threads[other as usize].rank <= t.rank => {}
                _ => {
                    triggers.insert(ev.clone(), ti as ThreadIdx);
                }
            }
        }
    }

    let exit_events = events::names(
        src,
        c.exit_events.as_ref(),
        "conversation.exit_events",
        diags,
    );
    let profile_events = events::names(
        src,
        c.profile_events.as_ref(),
        "conversation.profile_events",
        diags,
    );
    let thread_exits: Vec<_> = compiled_threads
        .iter()
        .zip(threads)
        .map(|(t, raw)| (t, raw.get_ref().exit_events.as_ref()))
        .collect();
    events::check_exits(
        src,
        (&exit_events, c.exit_events.as_ref()),
        &thread_exits,
        &triggers,
        diags,
    );

    if list.is_none()
        && steps
            .iter()
            .any(|s| matches!(s.kind, StepKind::Message { .. }))
    {
        // Both seeds begin "ensure you are on your main marketing list": a
        // conversation without one mails everyone, unsubscribers included.
        diags.push(src.diag(
            Severity::Warning,
            Some(conv.span()),
            "conversation.list",
            "this conversation sends messages but names no list: every contact gets them, including those who unsubscribed or never subscribed; name the marketing list (e.g. list = \"master\")",
        ));
    }
    if count_errors(diags) > errors_before {
        return None;
    }
    let name = name?;
    let conversation = Conversation {
        id_salt: crate::domain::transition::conversation_salt(&name),
        name,
        campaign: c.campaign.clone(),
        list,
        entry,
        threads: compiled_threads,
        steps,
        triggers,
        exit_events,
        profile_events,
        time_zone,
        time_zone_field,
        holdout,
        experiment_salt,
        attribution_window,
    };
    graph::check(src, &conversation, threads, &step_at, diags);
    (count_errors(diags) == errors_before).then_some(conversation)
}

fn count_errors(diags: &[Diagnostic]) -> usize {
    diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count()
}

/// The seeds' rule: a filter right after a wait of X days checks "last order
/// before X-1 days", so the contact's own purchase that started the wait is out.
pub(crate) fn expected_offset(wait: Duration) -> Duration {
    Duration(wait.0 - DAY_MS)
}

#[cfg(test)]
mod tests;
