//! Integration tests: the contract commands (`validate`, `schema`, `prompts`) run as the
//! real binary: exit codes 0/1/2, the `--json` shapes, and the catalogue on disk.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use super::support::{self, stderr, stdout};

const REFUND_PROMPT: &str = "d4e5f6a7-b8c9-0123-4567-890abcdef123";

fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples").join(name).display().to_string()
}

/// Run with the catalogue pointed into `dir`, so no test touches the working tree.
fn run_in(dir: &Path, args: &[&str]) -> Output {
    let cat = dir.join("catalogue/prompts.yaml");
    support::run(args, &[("GC_ASSIST__CATALOGUE__PATH", cat.to_str().unwrap())])
}

fn run_with_stdin(dir: &Path, args: &[&str], input: &[u8]) -> Output {
    let cat = dir.join("catalogue/prompts.yaml");
    let mut child = Command::new(support::bin())
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("GC_ASSIST__CATALOGUE__PATH", cat)
        .env_remove("GC_ASSIST_CONFIG")
        .env_remove("GENESYSCLOUD_REGION")
        .env_remove("GENESYSCLOUD_API_REGION")
        .env_remove("GC_ENV_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn json_out(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(o)))
}

fn codes(report: &Value) -> Vec<(String, String)> {
    report["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["path"].as_str().unwrap().to_string(), i["code"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn validate_accepts_the_tutorial_payload() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_in(dir.path(), &["validate", &example("injection.json")]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(stdout(&o).trim(), "✔ valid");
    // No catalogue installed: a note, not an issue.
    assert!(stderr(&o).contains("does not exist, so promptId was not looked up"), "{}", stderr(&o));

    let o = run_in(dir.path(), &["validate", "--json", &example("injection.json")]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(json_out(&o), serde_json::json!({"valid": true, "issues": []}));
}

#[test]
fn validate_reports_every_issue_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_in(dir.path(), &["validate", &example("invalid/ui-limits.json")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains(
            "displaySettings.delayMs: display timing violated: the delay must be at least 500 ms so the panel \
             does not flicker [too_small]"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "displaySettings.maxConcurrentPrompts: UI rendering constraint violated: at most 3 prompts may be \
             shown at once [too_big]"
        ),
        "{out}"
    );

    let o = run_in(dir.path(), &["validate", "--json", &example("invalid/typos-and-types.json")]);
    assert_eq!(o.status.code(), Some(1));
    let report = json_out(&o);
    assert_eq!(report["valid"], false);
    for issue in report["issues"].as_array().unwrap() {
        let keys: Vec<&String> = issue.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["path", "code", "message"], "{issue}");
    }
    let got = codes(&report);
    for want in [
        ("conversationID", "unknown_field"),
        ("conversationId", "required"),
        ("promptId", "invalid_uuid"),
        ("triggerConditions[0].treshold", "unknown_field"),
        ("triggerConditions[1].threshold", "too_big"),
        ("triggerConditions[1].value", "invalid_enum"),
        ("triggerConditions[2].value", "invalid_type"),
        ("displaySettings.delayMs", "invalid_type"),
        ("displaySettings.maxConcurrentPrompts", "not_integer"),
        ("displaySettings.autoDismissMs", "too_big"),
        ("webhookUrl", "invalid_url"),
    ] {
        assert!(got.contains(&(want.0.to_string(), want.1.to_string())), "missing {want:?} in {got:?}");
    }
    assert_eq!(got.len(), 11, "{got:?}");
}

#[test]
fn validate_bad_json_is_an_issue_but_a_missing_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_in(dir.path(), &["validate", "--json", &example("invalid/not-json.json")]);
    assert_eq!(o.status.code(), Some(1));
    let report = json_out(&o);
    assert_eq!(codes(&report), [(String::new(), "invalid_json".to_string())]);
    assert!(report["issues"][0]["message"].as_str().unwrap().contains("line 4 column"), "{report}");

    let not_utf8 = dir.path().join("latin1.json");
    std::fs::write(&not_utf8, b"{\"x\": \"caf\xe9\"}").unwrap();
    let o = run_in(dir.path(), &["validate", not_utf8.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stdout(&o).contains("[invalid_json]"), "{}", stdout(&o));

    let missing = dir.path().join("missing.json");
    let o = run_in(dir.path(), &["validate", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read payload file"), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
}

#[test]
fn validate_reads_standard_input() {
    let dir = tempfile::tempdir().unwrap();
    let payload = std::fs::read(example("injection.json")).unwrap();
    let o = run_with_stdin(dir.path(), &["validate", "-"], &payload);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let o = run_with_stdin(dir.path(), &["validate", "--json", "-"], b"[]");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(codes(&json_out(&o)), [(String::new(), "invalid_type".to_string())]);
}

#[test]
fn validate_looks_the_prompt_up_in_the_installed_catalogue() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_in(dir.path(), &["prompts", "import", &example("prompts.yaml")]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));

    let o = run_in(dir.path(), &["validate", &example("injection.json")]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(!stderr(&o).contains("note:"), "{}", stderr(&o));

    let text = std::fs::read_to_string(example("injection.json")).unwrap();
    let unknown = dir.path().join("unknown.json");
    std::fs::write(&unknown, text.replace(REFUND_PROMPT, "00000000-0000-4000-8000-000000000001")).unwrap();
    let o = run_in(dir.path(), &["validate", "--json", unknown.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(codes(&json_out(&o)), [("promptId".to_string(), "unknown_prompt".to_string())]);

    // Other issues and the catalogue lookup come out together.
    let both = dir.path().join("both.json");
    std::fs::write(
        &both,
        text.replace(REFUND_PROMPT, "00000000-0000-4000-8000-000000000001")
            .replace("\"delayMs\": 1000", "\"delayMs\": 1"),
    )
    .unwrap();
    let o = run_in(dir.path(), &["validate", "--json", both.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        codes(&json_out(&o)),
        [
            ("displaySettings.delayMs".to_string(), "too_small".to_string()),
            ("promptId".to_string(), "unknown_prompt".to_string())
        ]
    );

    // An inline prompt needs no catalogue entry.
    let inline = dir.path().join("inline.json");
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v["promptId"] = "00000000-0000-4000-8000-000000000001".into();
    v["prompt"] = serde_json::json!({"title": "Refunds", "body": "Offer credit after 30 days."});
    std::fs::write(&inline, v.to_string()).unwrap();
    let o = run_in(dir.path(), &["validate", inline.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn prompts_import_checks_writes_and_lists() {
    let dir = tempfile::tempdir().unwrap();
    let installed = dir.path().join("catalogue/prompts.yaml");

    let o = run_in(dir.path(), &["prompts", "list"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("gc-assist prompts import"), "{}", stderr(&o));

    let o = run_in(dir.path(), &["prompts", "import", "--dry-run", "--json", &example("prompts.yaml")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report = json_out(&o);
    assert_eq!(report["valid"], true);
    assert_eq!(report["count"], 8);
    assert_eq!(report["written"], false);
    assert!(!installed.exists(), "--dry-run wrote the catalogue");

    let o = run_in(dir.path(), &["prompts", "import", &example("prompts.yaml")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("imported 8 prompts into"), "{}", stdout(&o));
    let written = std::fs::read_to_string(&installed).unwrap();
    assert!(written.contains(REFUND_PROMPT), "{written}");

    let o = run_in(dir.path(), &["prompts", "list"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(REFUND_PROMPT) && out.contains("Refund policy") && out.contains("critical"), "{out}");

    let o = run_in(dir.path(), &["prompts", "list", "--json"]);
    let list = json_out(&o);
    assert_eq!(list["prompts"].as_array().unwrap().len(), 8);
    assert_eq!(list["prompts"][0]["id"], REFUND_PROMPT);

    // A JSON catalogue with problems: exit 1, every issue, the installed one untouched.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        format!(r#"{{"prompts": [{{"id": "{REFUND_PROMPT}", "title": "a", "body": "b"}}, {{"id": "{REFUND_PROMPT}", "titel": "x", "body": "b"}}]}}"#),
    )
    .unwrap();
    let o = run_in(dir.path(), &["prompts", "import", "--json", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        codes(&json_out(&o)),
        [
            ("prompts[1].titel".to_string(), "unknown_field".to_string()),
            ("prompts[1].title".to_string(), "required".to_string()),
        ]
    );
    let o = run_in(dir.path(), &["prompts", "import", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("did you mean `title`?"), "{}", stdout(&o));
    assert_eq!(std::fs::read_to_string(&installed).unwrap(), written);

    let o = run_in(dir.path(), &["prompts", "import", dir.path().join("nope.yaml").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn schema_prints_or_writes_the_json_schema() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_in(dir.path(), &["schema"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let schema = json_out(&o);
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert_eq!(schema["properties"]["displaySettings"]["properties"]["maxConcurrentPrompts"]["maximum"], 3);

    let out = dir.path().join("schema.json");
    let o = run_in(dir.path(), &["schema", "--output", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(written, schema);

    let o = run_in(dir.path(), &["schema", "--output", dir.path().join("no/such/dir/s.json").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
}
