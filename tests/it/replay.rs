//! Integration tests: `gc-assist replay` over the recorded calls (the shared set when it is
//! beside the project, else examples/calls), its JSON shape, `--compare`, the compiled-calls
//! cache (cold, warm and `--no-cache` give the same report; an unusable cache is a warning),
//! and exit 2 with file:line messages for a broken rules file, a missing folder, no calls or
//! a bad line.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support;

fn manifest() -> Value {
    let text = std::fs::read_to_string(support::shared_calls().join("calls.json")).expect("calls.json");
    serde_json::from_str(&text).expect("calls.json is JSON")
}

fn replay_json(extra: &[&str]) -> Value {
    let calls = support::shared_calls();
    let calls = calls.to_str().expect("utf-8 path");
    let mut args = vec!["replay", "--rules", "examples/rules.yaml", "--calls", calls, "--json"];
    args.extend_from_slice(extra);
    let out = support::run(&args, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
    serde_json::from_str(&support::stdout(&out)).expect("--json prints JSON")
}

#[test]
fn replay_json_reports_every_rule_and_label() {
    let m = manifest();
    let v = replay_json(&[]);
    let report = &v["report"];
    let calls = m["calls"].as_array().expect("calls");
    assert_eq!(report["calls"].as_u64(), Some(calls.len() as u64));
    assert!(report["utterances"].as_u64().unwrap_or(0) > 0);
    assert_eq!(report["labelled"], Value::Bool(true));
    let rules = report["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 18, "examples/rules.yaml has 18 enabled rules");
    for r in rules {
        for field in [
            "id",
            "fires",
            "firesPerCall",
            "medianIntoCallMs",
            "p90IntoCallMs",
            "suppressedCooldown",
            "suppressedCap",
            "shadowFires",
            "precision",
            "recall",
        ] {
            assert!(r.get(field).is_some(), "rule {} lacks {field}", r["id"]);
        }
    }
    // Every label type the calls carry has a line; the example rules cover them all.
    let want: BTreeSet<&str> = calls
        .iter()
        .flat_map(|c| c["labels"].as_array().into_iter().flatten())
        .filter_map(|l| l["label"].as_str())
        .collect();
    let labels = report["labels"].as_array().expect("labels");
    let got: BTreeSet<&str> = labels.iter().filter_map(|l| l["label"].as_str()).collect();
    assert_eq!(got, want);
    for l in labels {
        assert!(!l["rules"].as_array().expect("rules").is_empty(), "{l}");
        assert!(l["recalled"].as_u64() <= l["moments"].as_u64(), "{l}");
    }
    // A refund rule fires on every refund-labelled call at (or just after) the label, and
    // only customer speech counts: agent-only calls fire no keyword rule.
    let by_call = report["firesByCall"].as_object().expect("firesByCall");
    for call in calls {
        let file = call["file"].as_str().expect("file");
        let fires = by_call[file].as_array().expect("fires of a call");
        if call["scenario"] == "agent_only_keyword" {
            assert!(fires.iter().all(|f| f["ruleId"] == "long-unhappy-call"), "{file}: {fires:?}");
        }
        if call["scenario"] == "billing_refund" {
            assert!(
                fires.iter().any(|f| f["ruleId"].as_str().is_some_and(|r| r.starts_with("refund_request"))),
                "{file}"
            );
        }
    }
    let refund = rules.iter().find(|r| r["id"] == "refund_request").expect("refund rule");
    assert!(refund["precision"].as_f64().unwrap_or(0.0) >= 0.5, "{refund}");
    assert!(refund["recall"].as_f64().unwrap_or(0.0) > 0.0, "{refund}");
    // Shadow rules: every fire is a shadow fire.
    for r in rules.iter().filter(|r| r["id"].as_str().is_some_and(|id| id.starts_with("upsell"))) {
        assert_eq!(r["fires"], r["shadowFires"], "{r}");
    }
    let timing = &v["timing"];
    assert!(timing["utterancesPerSecondEvaluate"].as_f64().unwrap_or(0.0) > 0.0, "{timing}");
    assert!(timing["utterancesPerSecondEndToEnd"].as_f64().unwrap_or(0.0) > 0.0, "{timing}");
}

#[test]
fn replay_table_for_people() {
    let calls = support::shared_calls();
    let out = support::run(
        &[
            "replay",
            "--rules",
            "examples/rules.yaml",
            "--calls",
            calls.to_str().expect("path"),
            "--catalogue",
            "examples/prompts.yaml",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
    let text = support::stdout(&out);
    for want in ["refund_request", "precision", "recall", "cooldown", "Labels", "utterances/s"] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // Not a terminal: no progress bar drawn on stderr.
    assert!(!support::stderr(&out).contains("calls  replaying"), "{}", support::stderr(&out));
}

#[test]
fn compare_shows_what_changes_between_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = dir.path().join("old.yaml");
    // The old version: only a refund rule, on a phrase nobody says in full.
    std::fs::write(
        &old,
        "rules:\n  - id: refund_request\n    promptId: d4e5f6a7-b8c9-0123-4567-890abcdef123\n    conditions:\n      - {type: keyword, value: refund for my cat}\n  - id: retired\n    promptId: d4e5f6a7-b8c9-0123-4567-890abcdef123\n    conditions: [{type: keyword, value: hello}]\n",
    )
    .expect("write old rules");
    let v = replay_json(&["--compare", old.to_str().expect("path")]);
    let cmp = &v["comparison"];
    let rules = cmp["rules"].as_array().expect("comparison rules");
    let refund = rules.iter().find(|r| r["id"] == "refund_request").expect("refund in both");
    assert_eq!(refund["old"]["fires"].as_u64(), Some(0), "{refund}");
    assert!(refund["new"]["fires"].as_u64().unwrap_or(0) > 0, "{refund}");
    assert!(!refund["changedCalls"].as_array().expect("changedCalls").is_empty(), "{refund}");
    let retired = rules.iter().find(|r| r["id"] == "retired").expect("old-only rule listed");
    assert!(retired["new"].is_null(), "{retired}");
    assert!(!cmp["changedCalls"].as_array().expect("changedCalls").is_empty());

    let calls = support::shared_calls();
    let out = support::run(
        &[
            "replay",
            "--rules",
            "examples/rules.yaml",
            "--calls",
            calls.to_str().expect("path"),
            "--compare",
            old.to_str().expect("path"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
    let text = support::stdout(&out);
    assert!(text.contains("Compared with") && text.contains("fire differently"), "{text}");
}

#[test]
fn broken_rules_file_names_file_line_and_field_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "rules:\n  - id: a\n    promptId: d4e5f6a7-b8c9-0123-4567-890abcdef123\n    conditions:\n      - type: keyword\n        value: refund\n        threshold: 1.5\n    maxPerConversation: 0\n    colldownSeconds: 5\n",
    )
    .expect("write");
    let calls = support::shared_calls();
    let out = support::run(
        &["replay", "--rules", bad.to_str().expect("path"), "--calls", calls.to_str().expect("path")],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = support::stderr(&out);
    let file = bad.display().to_string();
    for want in [
        format!("{file}:7:9: rules[0].conditions[0].threshold: must be at most 1"),
        format!("{file}:8:5: rules[0].maxPerConversation: must be at least 1"),
        format!(
            "{file}:9:5: rules[0].colldownSeconds: unknown field \"colldownSeconds\"; did you mean `cooldownSeconds`?"
        ),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn missing_folder_or_no_calls_exit_2() {
    let out = support::run(&["replay", "--rules", "examples/rules.yaml", "--calls", "/nonexistent/calls"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(support::stderr(&out).contains("does not exist"), "{}", support::stderr(&out));
    let dir = tempfile::tempdir().expect("tempdir");
    let out =
        support::run(&["replay", "--rules", "examples/rules.yaml", "--calls", dir.path().to_str().expect("path")], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(support::stderr(&out).contains("no recorded calls"), "{}", support::stderr(&out));
    let out = support::run(&["replay", "--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(support::stdout(&out).contains("--compare"));
}

/// `replay --json` over `calls` with `extra` flags and environment; (stdout JSON, stderr).
fn replay_json_in(calls: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> (Value, String) {
    let mut args = vec!["replay", "--rules", "examples/rules.yaml", "--calls", calls.to_str().expect("path"), "--json"];
    args.extend_from_slice(extra);
    let out = support::run(&args, env);
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
    (serde_json::from_str(&support::stdout(&out)).expect("--json prints JSON"), support::stderr(&out))
}

#[test]
fn cold_warm_and_no_cache_runs_report_the_same() {
    let calls = support::shared_calls();
    let n = manifest()["calls"].as_array().expect("calls").len() as u64;
    let cache = tempfile::tempdir().expect("cache");
    let old = cache.path().join("old.yaml");
    std::fs::write(
        &old,
        "- id: refund_request\n  promptId: d4e5f6a7-b8c9-0123-4567-890abcdef123\n  conditions: [{type: keyword, value: money back}]\n",
    )
    .expect("old rules");
    let dir = cache.path().join("entries");
    let with = ["--cache", dir.to_str().expect("path"), "--compare", old.to_str().expect("path")];
    let (cold, _) = replay_json_in(&calls, &with, &[]);
    let (warm, _) = replay_json_in(&calls, &with, &[]);
    let (none, _) = replay_json_in(&calls, &["--no-cache", "--compare", old.to_str().expect("path")], &[]);
    assert_eq!((cold["timing"]["callsParsed"].as_u64(), cold["timing"]["callsFromCache"].as_u64()), (Some(n), Some(0)));
    assert_eq!((warm["timing"]["callsParsed"].as_u64(), warm["timing"]["callsFromCache"].as_u64()), (Some(0), Some(n)));
    assert!(none["timing"]["cacheDir"].is_null(), "{}", none["timing"]);
    for v in [&warm, &none] {
        assert_eq!(v["report"], cold["report"]);
        assert_eq!(v["comparison"], cold["comparison"]);
    }
    assert!(cold["report"]["rules"].as_array().is_some_and(|r| !r.is_empty()));
    // The default cache folder follows XDG_CACHE_HOME.
    let xdg = tempfile::tempdir().expect("xdg");
    let (v, _) = replay_json_in(&calls, &[], &[("XDG_CACHE_HOME", xdg.path().to_str().expect("path"))]);
    let want = xdg.path().join("gc-assist").join("replay");
    assert_eq!(v["timing"]["cacheDir"].as_str(), want.to_str());
    assert_eq!(v["report"], cold["report"]);
    assert!(std::fs::read_dir(&want).expect("cache made").count() as u64 >= n);
}

#[test]
fn an_unusable_cache_folder_is_a_warning_not_a_failure() {
    let calls = support::shared_calls();
    let file = tempfile::NamedTempFile::new().expect("file");
    let (v, err) = replay_json_in(&calls, &["--cache", file.path().to_str().expect("path")], &[]);
    assert!(err.contains("warning: cannot use") && err.contains("without the cache"), "{err}");
    assert!(v["timing"]["cacheDir"].is_null());
    assert!(v["report"]["calls"].as_u64().unwrap_or(0) > 0);
    // A table run says where the calls came from.
    let out = support::run(
        &["replay", "--rules", "examples/rules.yaml", "--calls", calls.to_str().expect("path"), "--no-cache"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
    assert!(support::stdout(&out).contains("parsed, no cache"), "{}", support::stdout(&out));
}

#[test]
fn a_bad_line_names_its_file_and_line_with_the_cache_on() {
    let dir = tempfile::tempdir().expect("calls");
    let cache = tempfile::tempdir().expect("cache");
    std::fs::write(
        dir.path().join("a.jsonl"),
        "{\"recordedAt\":\"2025-01-01T00:00:00Z\",\"topicName\":\"channel.metadata\"}\n{\"recordedAt\":\n",
    )
    .expect("write");
    let out = support::run(
        &[
            "replay",
            "--rules",
            "examples/rules.yaml",
            "--calls",
            dir.path().to_str().expect("path"),
            "--cache",
            cache.path().to_str().expect("path"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(support::stderr(&out).contains("a.jsonl:2: not JSON"), "{}", support::stderr(&out));
}
