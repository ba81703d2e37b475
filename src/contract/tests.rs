//! Table tests of the contract: payload edits → expected issues (path, code), the typed
//! result of valid payloads, the catalogue, and agreement between schema and validation.

use serde_json::{json, Value};

use super::*;

/// The tutorial's example payload, unchanged.
fn tutorial() -> Value {
    json!({
        "conversationId": "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
        "promptId": "d4e5f6a7-b8c9-0123-4567-890abcdef123",
        "triggerConditions": [
            { "type": "keyword", "value": "refund" },
            { "type": "sentiment", "value": "negative", "threshold": 0.7 }
        ],
        "displaySettings": { "delayMs": 1000, "maxConcurrentPrompts": 2, "autoDismissMs": 30000 },
        "webhookUrl": "https://internal-knowledge.example.com/api/v1/sync",
        "contextData": { "agentId": "agent-01", "queue": "billing-support" }
    })
}

/// Apply edits to the tutorial payload. A path is dotted, with numeric segments indexing
/// arrays; `None` removes the field.
fn edited(edits: &[(&str, Option<Value>)]) -> Value {
    let mut v = tutorial();
    for (path, new) in edits {
        let segs: Vec<&str> = path.split('.').collect();
        let (last, parents) = segs.split_last().unwrap();
        let mut node = &mut v;
        for s in parents {
            node = match s.parse::<usize>() {
                Ok(i) => &mut node[i],
                Err(_) => &mut node[*s],
            };
        }
        match (node, new) {
            (Value::Object(m), None) => {
                m.shift_remove(*last);
            }
            (Value::Object(m), Some(x)) => {
                m.insert(last.to_string(), x.clone());
            }
            (Value::Array(a), Some(x)) => a[last.parse::<usize>().unwrap()] = x.clone(),
            (Value::Array(a), None) => {
                a.remove(last.parse::<usize>().unwrap());
            }
            (other, _) => panic!("cannot edit {path} in {other}"),
        }
    }
    v
}

fn set(path: &str, v: Value) -> (&str, Option<Value>) {
    (path, Some(v))
}

fn del(path: &str) -> (&str, Option<Value>) {
    (path, None)
}

fn issues_of(v: &Value) -> Vec<(String, IssueCode)> {
    match validate_value(v) {
        Ok(_) => vec![],
        Err(issues) => issues.into_iter().map(|i| (i.path, i.code)).collect(),
    }
}

use IssueCode::*;

/// Expected issues of one table row: (path, code) in order.
type Expected = Vec<(&'static str, IssueCode)>;

#[test]
fn table_of_payloads_and_their_issues() {
    let long = "x".repeat(101);
    let big_context: serde_json::Map<String, Value> =
        (0..200).map(|i| (format!("key{i:03}"), Value::String("v".repeat(80)))).collect();
    let deep = json!({"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}});
    let eight = json!({"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}});
    #[rustfmt::skip]
    let cases: Vec<(&str, Value, Expected)> = vec![
        ("tutorial payload", tutorial(), vec![]),
        ("upper-case uuids", edited(&[set("conversationId", json!("A1B2C3D4-E5F6-7890-ABCD-EF1234567890"))]), vec![]),
        ("no conditions", edited(&[set("triggerConditions", json!([]))]), vec![]),
        ("optional fields absent", edited(&[del("webhookUrl"), del("contextData")]), vec![]),
        ("bounds inclusive", edited(&[set("displaySettings", json!({"delayMs": 500, "maxConcurrentPrompts": 3, "autoDismissMs": 60000}))]), vec![]),
        ("bounds inclusive low", edited(&[set("displaySettings", json!({"delayMs": 5000, "maxConcurrentPrompts": 1, "autoDismissMs": 10000}))]), vec![]),
        ("integer written as 2.0", edited(&[set("displaySettings.maxConcurrentPrompts", json!(2.0))]), vec![]),
        ("all condition types", edited(&[set("triggerConditions", json!([
            {"type": "keyword", "value": "cancel", "threshold": 0.6},
            {"type": "sentiment", "value": "neutral"},
            {"type": "duration", "value": 86400},
            {"type": "confidence", "value": "transcript", "threshold": 0}]))]), vec![]),
        ("context depth 8", edited(&[set("contextData", eight)]), vec![]),
        ("extensions", edited(&[set("prompt", json!({"title": "T", "body": "B", "url": "http://kb.example.com/a", "priority": "critical"})),
            set("onCapacity", json!("reject")), set("queueTimeoutMs", json!(600000))]), vec![]),

        ("not an object", json!([1, 2]), vec![("", InvalidType)]),
        ("missing required", json!({}), vec![("conversationId", Required), ("promptId", Required), ("triggerConditions", Required), ("displaySettings", Required)]),
        ("bad uuid", edited(&[set("conversationId", json!("a1b2c3d4e5f67890abcdef1234567890"))]), vec![("conversationId", InvalidUuid)]),
        ("uuid wrong type", edited(&[set("promptId", json!(42))]), vec![("promptId", InvalidType)]),
        ("braced uuid", edited(&[set("promptId", json!("{d4e5f6a7-b8c9-0123-4567-890abcdef123}"))]), vec![("promptId", InvalidUuid)]),
        ("too many conditions", edited(&[set("triggerConditions", json!([
            {"type": "keyword", "value": "a"}, {"type": "keyword", "value": "b"}, {"type": "keyword", "value": "c"},
            {"type": "keyword", "value": "d"}, {"type": "keyword", "value": "e"}, {"type": "keyword", "value": "f"}]))]),
            vec![("triggerConditions", TooBig)]),
        ("conditions not an array", edited(&[set("triggerConditions", json!({"type": "keyword"}))]), vec![("triggerConditions", InvalidType)]),
        ("condition not an object", edited(&[set("triggerConditions.0", json!("refund"))]), vec![("triggerConditions[0]", InvalidType)]),
        ("unknown type", edited(&[set("triggerConditions.0.type", json!("keywrd"))]), vec![("triggerConditions[0].type", InvalidEnum)]),
        ("type missing, value of wrong shape", edited(&[set("triggerConditions.0", json!({"value": [1]}))]),
            vec![("triggerConditions[0].type", Required), ("triggerConditions[0].value", InvalidType)]),
        ("value missing", edited(&[del("triggerConditions.0.value")]), vec![("triggerConditions[0].value", Required)]),
        ("threshold above 1", edited(&[set("triggerConditions.1.threshold", json!(1.5))]), vec![("triggerConditions[1].threshold", TooBig)]),
        ("threshold below 0", edited(&[set("triggerConditions.0.threshold", json!(-0.1))]), vec![("triggerConditions[0].threshold", TooSmall)]),
        ("threshold a string", edited(&[set("triggerConditions.1.threshold", json!("0.7"))]), vec![("triggerConditions[1].threshold", InvalidType)]),
        ("keyword empty", edited(&[set("triggerConditions.0.value", json!("   "))]), vec![("triggerConditions[0].value", TooShort)]),
        ("keyword too long", edited(&[set("triggerConditions.0.value", json!(long))]), vec![("triggerConditions[0].value", TooLong)]),
        ("keyword a number", edited(&[set("triggerConditions.0.value", json!(7))]), vec![("triggerConditions[0].value", InvalidType)]),
        ("sentiment word", edited(&[set("triggerConditions.1.value", json!("Negative"))]), vec![("triggerConditions[1].value", InvalidEnum)]),
        ("duration as string", edited(&[set("triggerConditions.0", json!({"type": "duration", "value": "30"}))]), vec![("triggerConditions[0].value", InvalidType)]),
        ("duration zero", edited(&[set("triggerConditions.0", json!({"type": "duration", "value": 0}))]), vec![("triggerConditions[0].value", TooSmall)]),
        ("duration over a day", edited(&[set("triggerConditions.0", json!({"type": "duration", "value": 86401}))]), vec![("triggerConditions[0].value", TooBig)]),
        ("duration fraction", edited(&[set("triggerConditions.0", json!({"type": "duration", "value": 1.5}))]), vec![("triggerConditions[0].value", NotInteger)]),
        ("duration with threshold", edited(&[set("triggerConditions.0", json!({"type": "duration", "value": 30, "threshold": 0.5}))]), vec![("triggerConditions[0].threshold", NotAllowed)]),
        ("confidence without threshold", edited(&[set("triggerConditions.0", json!({"type": "confidence", "value": "transcript"}))]), vec![("triggerConditions[0].threshold", Required)]),
        ("confidence other value", edited(&[set("triggerConditions.0", json!({"type": "confidence", "value": 0.9, "threshold": 0.9}))]), vec![("triggerConditions[0].value", InvalidEnum)]),
        ("unknown condition field", edited(&[set("triggerConditions.0.treshold", json!(0.5))]), vec![("triggerConditions[0].treshold", UnknownField)]),
        ("delay below 500", edited(&[set("displaySettings.delayMs", json!(200))]), vec![("displaySettings.delayMs", TooSmall)]),
        ("delay above 5000", edited(&[set("displaySettings.delayMs", json!(5001))]), vec![("displaySettings.delayMs", TooBig)]),
        ("delay a string", edited(&[set("displaySettings.delayMs", json!("1000"))]), vec![("displaySettings.delayMs", InvalidType)]),
        ("max concurrent 4", edited(&[set("displaySettings.maxConcurrentPrompts", json!(4))]), vec![("displaySettings.maxConcurrentPrompts", TooBig)]),
        ("max concurrent 0", edited(&[set("displaySettings.maxConcurrentPrompts", json!(0))]), vec![("displaySettings.maxConcurrentPrompts", TooSmall)]),
        ("max concurrent 1.5", edited(&[set("displaySettings.maxConcurrentPrompts", json!(1.5))]), vec![("displaySettings.maxConcurrentPrompts", NotInteger)]),
        ("max concurrent 4.5", edited(&[set("displaySettings.maxConcurrentPrompts", json!(4.5))]),
            vec![("displaySettings.maxConcurrentPrompts", NotInteger), ("displaySettings.maxConcurrentPrompts", TooBig)]),
        ("huge numbers do not panic", edited(&[set("displaySettings.maxConcurrentPrompts", json!(u64::MAX)), set("displaySettings.delayMs", json!(-1e300))]),
            vec![("displaySettings.delayMs", TooSmall), ("displaySettings.maxConcurrentPrompts", TooBig)]),
        ("auto dismiss range", edited(&[set("displaySettings.autoDismissMs", json!(9999))]), vec![("displaySettings.autoDismissMs", TooSmall)]),
        ("display missing field", edited(&[del("displaySettings.autoDismissMs")]), vec![("displaySettings.autoDismissMs", Required)]),
        ("display unknown field", edited(&[set("displaySettings.delay_ms", json!(1000))]), vec![("displaySettings.delay_ms", UnknownField)]),
        ("display not an object", edited(&[set("displaySettings", json!(null))]), vec![("displaySettings", InvalidType)]),
        ("webhook not http", edited(&[set("webhookUrl", json!("ftp://kb.example.com/x"))]), vec![("webhookUrl", InvalidUrl)]),
        ("webhook relative", edited(&[set("webhookUrl", json!("/api/v1/sync"))]), vec![("webhookUrl", InvalidUrl)]),
        ("webhook with credentials", edited(&[set("webhookUrl", json!("https://user:pw@kb.example.com/x"))]), vec![("webhookUrl", InvalidUrl)]),
        ("webhook null", edited(&[set("webhookUrl", json!(null))]), vec![("webhookUrl", InvalidType)]),
        ("context not an object", edited(&[set("contextData", json!(["a"]))]), vec![("contextData", InvalidType)]),
        ("context too deep", edited(&[set("contextData", deep)]), vec![("contextData", TooDeep)]),
        ("context too large", edited(&[set("contextData", Value::Object(big_context))]), vec![("contextData", TooLarge)]),
        ("top-level unknown", edited(&[set("webhookURL", json!("https://kb.example.com"))]), vec![("webhookURL", UnknownField)]),
        ("field at the wrong level", edited(&[set("delayMs", json!(1000))]), vec![("delayMs", UnknownField)]),
        ("odd unknown key", { let mut v = tutorial(); v["a.b"] = json!(1); v }, vec![("[\"a.b\"]", UnknownField)]),
        ("prompt title too long", edited(&[set("prompt", json!({"title": "t".repeat(81), "body": "b"}))]), vec![("prompt.title", TooLong)]),
        ("prompt body missing, priority bad, extra field", edited(&[set("prompt", json!({"title": "t", "priority": "urgent", "colour": "red"}))]),
            vec![("prompt.colour", UnknownField), ("prompt.body", Required), ("prompt.priority", InvalidEnum)]),
        ("prompt body too long", edited(&[set("prompt", json!({"title": "t", "body": "é".repeat(601)}))]), vec![("prompt.body", TooLong)]),
        ("prompt body 600 accented chars", edited(&[set("prompt", json!({"title": "t", "body": "é".repeat(600)}))]), vec![]),
        ("prompt url", edited(&[set("prompt", json!({"title": "t", "body": "b", "url": "kb.example.com"}))]), vec![("prompt.url", InvalidUrl)]),
        ("onCapacity", edited(&[set("onCapacity", json!("drop"))]), vec![("onCapacity", InvalidEnum)]),
        ("queue timeout too big", edited(&[set("queueTimeoutMs", json!(600001))]), vec![("queueTimeoutMs", TooBig)]),
        ("queue timeout negative", edited(&[set("queueTimeoutMs", json!(-1))]), vec![("queueTimeoutMs", TooSmall)]),
        ("type errors alongside range errors", edited(&[
            set("conversationID", json!("a1b2c3d4-e5f6-7890-abcd-ef1234567890")), del("conversationId"),
            set("promptId", json!("nope")),
            set("triggerConditions.1.threshold", json!(2)),
            set("displaySettings.delayMs", json!("fast")),
            set("displaySettings.maxConcurrentPrompts", json!(9)),
            set("displaySettings.autoDismissMs", json!(true)),
            set("contextData", json!("x")),
        ]), vec![
            ("conversationID", UnknownField),
            ("conversationId", Required),
            ("promptId", InvalidUuid),
            ("triggerConditions[1].threshold", TooBig),
            ("displaySettings.delayMs", InvalidType),
            ("displaySettings.maxConcurrentPrompts", TooBig),
            ("displaySettings.autoDismissMs", InvalidType),
            ("contextData", InvalidType),
        ]),
    ];
    let mut failures = Vec::new();
    for (name, payload, want) in &cases {
        let got = issues_of(payload);
        let want: Vec<(String, IssueCode)> = want.iter().map(|(p, c)| (p.to_string(), *c)).collect();
        if got != want {
            failures.push(format!("{name}:\n   want {want:?}\n   got  {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

fn messages(v: &Value) -> Vec<String> {
    validate_value(v)
        .err()
        .map(|i| i.into_iter().map(|i| format!("{}: {}", i.path, i.message)).collect())
        .unwrap_or_default()
}

#[test]
fn ui_constraint_messages_use_the_contract_words() {
    let m = messages(&edited(&[set("displaySettings.maxConcurrentPrompts", json!(4))]));
    assert_eq!(
        m,
        ["displaySettings.maxConcurrentPrompts: UI rendering constraint violated: at most 3 prompts may be shown at once"]
    );
    let m = messages(&edited(&[set("displaySettings.delayMs", json!(499))]));
    assert_eq!(
        m,
        ["displaySettings.delayMs: display timing violated: the delay must be at least 500 ms so the panel does not flicker"]
    );
}

#[test]
fn messages_say_what_to_fix() {
    let m = messages(&edited(&[set("displaySettings.delayMs", json!("1000"))])).join("\n");
    assert!(m.contains("expected a number, got a string"), "{m}");
    let m = messages(&edited(&[set("conversationID", json!("x")), del("conversationId")])).join("\n");
    assert!(m.contains("did you mean `conversationId`?"), "{m}");
    let m = messages(&edited(&[set("displaySettings.maxConcurentPrompts", json!(2))])).join("\n");
    assert!(m.contains("did you mean `maxConcurrentPrompts`?"), "{m}");
    let m = messages(&edited(&[set("triggerConditions.0.treshold", json!(0.5))])).join("\n");
    assert!(m.contains("did you mean `threshold`?"), "{m}");
    let m = messages(&edited(&[set("prompt", json!({"titel": "t", "body": "b"}))])).join("\n");
    assert!(m.contains("prompt.titel: unknown field \"titel\"; did you mean `title`?"), "{m}");
    let m = messages(&edited(&[set("delayMs", json!(1000))])).join("\n");
    assert!(m.contains("belongs inside `displaySettings`"), "{m}");
    let m = messages(&edited(&[set("zzz", json!(1))])).join("\n");
    assert!(m.contains("allowed fields here: `conversationId`"), "{m}");
    let m = messages(&edited(&[set("triggerConditions.1.value", json!("Negative"))])).join("\n");
    assert!(m.contains("did you mean `negative`?"), "{m}");
    let m = messages(&edited(&[set("triggerConditions.0.type", json!("sentimnet"))])).join("\n");
    assert!(m.contains("did you mean `sentiment`?"), "{m}");
    let m = messages(&edited(&[set("webhookUrl", json!(null))])).join("\n");
    assert!(m.contains("got null; leave the field out"), "{m}");
    let m = messages(&edited(&[set("displaySettings.maxConcurrentPrompts", json!(1.5))])).join("\n");
    assert!(m.contains("whole number, got 1.5"), "{m}");
    let m = messages(&edited(&[set("displaySettings.autoDismissMs", json!(1e300))])).join("\n");
    assert!(m.contains("at most 60000 ms, got 1e+300"), "{m}");
}

#[test]
fn secrets_in_urls_are_not_echoed() {
    let m = messages(&edited(&[set("webhookUrl", json!("https://user:hunter2@kb.example.com/x"))])).join("\n");
    assert!(!m.contains("hunter2"), "{m}");
}

#[test]
fn tutorial_payload_is_valid_and_typed() {
    let text = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/injection.json")).unwrap();
    let p = validate_json(&text).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&text).unwrap(), tutorial(), "examples/injection.json drifted");
    assert_eq!(p.conversation_id().to_string(), "a1b2c3d4-e5f6-7890-abcd-ef1234567890");
    assert_eq!(p.prompt_id().to_string(), "d4e5f6a7-b8c9-0123-4567-890abcdef123");
    assert_eq!(
        p.trigger_conditions(),
        [
            TriggerCondition::Keyword { phrase: "refund".into(), threshold: None },
            TriggerCondition::Sentiment { polarity: Polarity::Negative, threshold: 0.7 },
        ]
    );
    assert_eq!(p.display(), DisplaySettings { delay_ms: 1000, max_concurrent_prompts: 2, auto_dismiss_ms: 30000 });
    assert_eq!(p.webhook_url().map(|u| u.as_str()), Some("https://internal-knowledge.example.com/api/v1/sync"));
    assert_eq!(p.context_data().unwrap()["queue"], "billing-support");
    assert!(p.inline_prompt().is_none());
    assert_eq!(p.on_capacity(), OnCapacity::Queue);
    assert_eq!(p.queue_timeout_ms(), 120_000);
}

#[test]
fn defaults_and_canonical_form_round_trip() {
    let raw = edited(&[
        set("conversationId", json!("A1B2C3D4-E5F6-7890-ABCD-EF1234567890")),
        set("triggerConditions.1", json!({"type": "sentiment", "value": "negative"})),
        set("prompt", json!({"title": "Refunds", "body": "Offer credit."})),
        set("displaySettings.delayMs", json!(1000.4)),
    ]);
    let p = validate_value(&raw).unwrap();
    assert_eq!(p.trigger_conditions()[1], TriggerCondition::Sentiment { polarity: Polarity::Negative, threshold: 0.5 });
    assert_eq!(p.inline_prompt().unwrap().priority, Priority::Normal);
    assert_eq!(p.display().delay_ms, 1000);
    let canon = p.to_json();
    assert_eq!(canon["conversationId"], "a1b2c3d4-e5f6-7890-abcd-ef1234567890");
    assert_eq!(canon["triggerConditions"][1]["threshold"], 0.5);
    assert_eq!(canon["onCapacity"], "queue");
    assert_eq!(canon["queueTimeoutMs"], 120000);
    assert_eq!(canon["prompt"], json!({"title": "Refunds", "body": "Offer credit.", "priority": "normal"}));
    let again = validate_value(&canon).unwrap();
    assert_eq!(again, p);
    // Serde goes through validation both ways.
    let text = serde_json::to_string(&p).unwrap();
    let back: ValidPayload = serde_json::from_str(&text).unwrap();
    assert_eq!(back, p);
    let err = serde_json::from_value::<ValidPayload>(json!({"promptId": 1})).unwrap_err().to_string();
    assert!(err.contains("conversationId"), "{err}");
}

#[test]
fn raw_bytes_that_are_not_json_give_one_issue_with_a_position() {
    for (bytes, needle) in [
        (&b"{\"conversationId\": }"[..], "line 1 column 20"),
        (&b""[..], "ends too early"),
        (&b"\xff\xfe{}"[..], "line 1"),
        (&b"{\"a\": 1e400}"[..], "out of range"),
    ] {
        let issues = validate_json(bytes).unwrap_err();
        assert_eq!(issues.len(), 1, "{issues}");
        let i = &issues.0[0];
        assert_eq!((i.path.as_str(), i.code), ("", InvalidJson));
        assert!(i.message.contains(needle), "{} lacks {needle}", i.message);
    }
    let big = vec![b' '; limits::MAX_BODY_BYTES + 1];
    assert_eq!(validate_json(&big).unwrap_err().0[0].code, TooLarge);
    // A byte-order mark is not content.
    let mut with_bom = b"\xEF\xBB\xBF".to_vec();
    with_bom.extend(serde_json::to_vec(&tutorial()).unwrap());
    assert!(validate_json(&with_bom).is_ok());
}

#[test]
fn deeply_nested_input_does_not_overflow() {
    // Deeper than serde_json's own parser allows: built in code.
    let mut v = json!(1);
    for _ in 0..10_000 {
        v = Value::Array(vec![v]);
    }
    let mut payload = tutorial();
    let mut context = serde_json::Map::new();
    context.insert("x".into(), v);
    payload["contextData"] = Value::Object(context);
    let got = issues_of(&payload);
    assert_eq!(got, [("contextData".to_string(), TooDeep)]);
    // Dropping the nested value recursively would overflow a test thread's stack; unwind it by hand.
    let mut cur = payload["contextData"]["x"].take();
    while let Value::Array(mut a) = cur {
        cur = a.pop().unwrap_or(Value::Null);
    }
}

const CATALOGUE_YAML: &str = "\
prompts:
  - id: d4e5f6a7-b8c9-0123-4567-890abcdef123
    name: Refund policy
    title: Refund policy
    body: Offer credit after 30 days.
    url: https://kb.example.com/refunds
    priority: high
    tags: [refund_request]
  - id: 6F1C2A3B-4D5E-4F60-8A71-92B3C4D5E6F7
    title: Retention
    body: Make one offer before cancelling.
";

#[test]
fn catalogue_parses_yaml_and_json_and_resolves() {
    let c = Catalogue::parse(CATALOGUE_YAML, None).unwrap();
    assert_eq!(c.len(), 2);
    let refund: uuid::Uuid = "d4e5f6a7-b8c9-0123-4567-890abcdef123".parse().unwrap();
    let e = c.get(&refund).unwrap();
    assert_eq!(e.name.as_deref(), Some("Refund policy"));
    assert_eq!(e.content.priority, Priority::High);
    assert_eq!(e.tags, ["refund_request"]);
    let retention: uuid::Uuid = "6f1c2a3b-4d5e-4f60-8a71-92b3c4d5e6f7".parse().unwrap();
    assert_eq!(c.get(&retention).unwrap().content.priority, Priority::Normal);
    assert_eq!(c.iter().map(|e| e.id).collect::<Vec<_>>(), [refund, retention]);

    // Canonical YAML and JSON read back to the same catalogue.
    assert_eq!(Catalogue::parse(&c.to_yaml(), Some(Format::Yaml)).unwrap(), c);
    assert_eq!(Catalogue::parse(&c.to_json().to_string(), None).unwrap(), c);

    let tutorial = validate_value(&tutorial()).unwrap();
    assert_eq!(resolve_prompt(&tutorial, Some(&c)).unwrap().title, "Refund policy");
    let other = validate_value(&edited(&[set("promptId", json!("00000000-0000-4000-8000-000000000000"))])).unwrap();
    let issue = resolve_prompt(&other, Some(&c)).unwrap_err();
    assert_eq!((issue.path.as_str(), issue.code), ("promptId", UnknownPrompt));
    assert!(issue.message.contains("gc-assist prompts import"), "{}", issue.message);
    assert_eq!(resolve_prompt(&other, None).unwrap_err().code, UnknownPrompt);
    let inline = validate_value(&edited(&[
        set("prompt", json!({"title": "Inline", "body": "b"})),
        set("promptId", json!("00000000-0000-4000-8000-000000000000")),
    ]))
    .unwrap();
    assert_eq!(resolve_prompt(&inline, Some(&c)).unwrap().title, "Inline");
    assert_eq!(resolve_prompt(&inline, None).unwrap().title, "Inline");
}

fn catalogue_issues(text: &str) -> Vec<(String, IssueCode)> {
    match Catalogue::parse(text, None) {
        Ok(_) => vec![],
        Err(e) => e.issues().expect("content error").iter().map(|i| (i.path.clone(), i.code)).collect(),
    }
}

#[test]
fn catalogue_issues_name_the_entry() {
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, Expected)> = vec![
        ("valid", CATALOGUE_YAML, vec![]),
        ("empty list", "prompts: []", vec![]),
        ("missing list", "{}", vec![("prompts", Required)]),
        ("bare list", "- id: x", vec![("", InvalidType)]),
        ("top-level typo", "prompt: []", vec![("prompt", UnknownField), ("prompts", Required)]),
        ("entry problems", "\
prompts:
  - id: d4e5f6a7-b8c9-0123-4567-890abcdef123
    title: ok
    body: ok
  - id: nope
    title: ''
    body: 12
    priority: urgent
    tags: [ok, '']
    colour: red
  - id: D4E5F6A7-B8C9-0123-4567-890ABCDEF123
    title: dup
    body: dup
", vec![
            ("prompts[1].colour", UnknownField),
            ("prompts[1].id", InvalidUuid),
            ("prompts[1].title", TooShort),
            ("prompts[1].body", InvalidType),
            ("prompts[1].priority", InvalidEnum),
            ("prompts[1].tags[1]", TooShort),
            ("prompts[2].id", DuplicateId),
        ]),
        ("yaml syntax", "prompts:\n  - id: [unclosed\n", vec![("", InvalidYaml)]),
        ("json syntax", "{\"prompts\": [,]}", vec![("", InvalidJson)]),
        ("json entry", r#"{"prompts": [{"id": "d4e5f6a7-b8c9-0123-4567-890abcdef123", "title": "t"}]}"#, vec![("prompts[0].body", Required)]),
    ];
    let mut failures = Vec::new();
    for (name, text, want) in &cases {
        let got = catalogue_issues(text);
        let want: Vec<(String, IssueCode)> = want.iter().map(|(p, c)| (p.to_string(), *c)).collect();
        if got != want {
            failures.push(format!("{name}:\n   want {want:?}\n   got  {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let e = Catalogue::parse("prompts:\n  - id: [unclosed\n", None).unwrap_err().to_string();
    assert!(e.contains("line 2"), "{e}");
    let e = Catalogue::parse(
        "prompts:\n  - id: d4e5f6a7-b8c9-0123-4567-890abcdef123\n    title: 2024\n    body: b\n",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("prompts[0].title: expected a string, got a number (put the value in quotes)"), "{e}");
}

#[test]
fn example_catalogue_covers_the_call_labels() {
    let c =
        Catalogue::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/prompts.yaml"))).unwrap();
    assert!(c.get(&"d4e5f6a7-b8c9-0123-4567-890abcdef123".parse().unwrap()).is_some());
    let labels = [
        "refund_request",
        "cancel_threat",
        "fraud",
        "address_change",
        "tech_issue",
        "upsell_opportunity",
        "supervisor_request",
        "hold_complaint",
    ];
    for label in labels {
        assert!(c.iter().any(|e| e.tags.iter().any(|t| t == label)), "no prompt tagged {label}");
    }
}

#[test]
fn catalogue_save_writes_canonical_yaml_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/prompts.yaml");
    let c = Catalogue::parse(CATALOGUE_YAML, None).unwrap();
    c.save(&path).unwrap();
    assert_eq!(Catalogue::load(&path).unwrap(), c);
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["prompts.yaml"], "no temporary file left behind");
    assert!(matches!(Catalogue::load(&dir.path().join("missing.yaml")), Err(CatalogueError::Read { .. })));
    std::fs::write(dir.path().join("bin.json"), b"\xff\xfe").unwrap();
    assert!(matches!(Catalogue::load(&dir.path().join("bin.json")), Err(CatalogueError::Invalid { .. })));
}

// ---- The schema agrees with validation -------------------------------------------------

#[test]
fn schema_carries_the_validation_bounds() {
    use limits::*;
    let s = json_schema();
    assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert_eq!(s["additionalProperties"], false);
    let d = &s["properties"]["displaySettings"]["properties"];
    assert_eq!(d["delayMs"]["minimum"], DELAY_MS_MIN);
    assert_eq!(d["delayMs"]["maximum"], DELAY_MS_MAX);
    assert_eq!(d["maxConcurrentPrompts"]["type"], "integer");
    assert_eq!(d["maxConcurrentPrompts"]["minimum"], 1);
    assert_eq!(d["maxConcurrentPrompts"]["maximum"], 3);
    assert_eq!(d["autoDismissMs"]["minimum"], 10000);
    assert_eq!(d["autoDismissMs"]["maximum"], 60000);
    let tc = &s["properties"]["triggerConditions"];
    assert_eq!(tc["maxItems"], 5);
    assert_eq!(tc["items"]["properties"]["threshold"]["minimum"], 0.0);
    assert_eq!(tc["items"]["properties"]["threshold"]["maximum"], 1.0);
    assert_eq!(tc["items"]["properties"]["type"]["enum"], json!(["keyword", "sentiment", "duration", "confidence"]));
    assert_eq!(s["properties"]["contextData"]["x-maxSerializedBytes"], 16384);
    assert_eq!(s["properties"]["contextData"]["x-maxDepth"], 8);
    assert_eq!(s["properties"]["queueTimeoutMs"]["maximum"], 600000);
    assert_eq!(s["properties"]["prompt"]["properties"]["title"]["maxLength"], 80);
    assert_eq!(s["properties"]["prompt"]["properties"]["body"]["maxLength"], 600);
    let required: Vec<&str> = s["required"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(required, ["conversationId", "promptId", "triggerConditions", "displaySettings"]);
    let props: Vec<&String> = s["properties"].as_object().unwrap().keys().collect();
    assert_eq!(props, validate::PAYLOAD_FIELDS);
}

/// A JSON Schema checker for the keywords our schema uses, except `pattern` and `format`
/// (no regex engine here) and the `x-` annotations. Enough to compare verdicts.
fn schema_accepts(schema: &Value, v: &Value) -> bool {
    let Some(s) = schema.as_object() else { return schema.as_bool().unwrap_or(true) };
    let num = |k: &str| s.get(k).and_then(Value::as_f64);
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "number" => v.is_number(),
            "integer" => v.as_f64().is_some_and(|x| x.fract() == 0.0),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        });
        if !ok {
            return false;
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return false;
        }
    }
    if let Some(c) = s.get("const") {
        if c != v {
            return false;
        }
    }
    if let Some(x) = v.as_f64() {
        if num("minimum").is_some_and(|m| x < m) || num("maximum").is_some_and(|m| x > m) {
            return false;
        }
    }
    if let Some(text) = v.as_str() {
        let n = text.chars().count() as f64;
        if num("minLength").is_some_and(|m| n < m) || num("maxLength").is_some_and(|m| n > m) {
            return false;
        }
    }
    if let Some(items) = v.as_array() {
        let n = items.len() as f64;
        if num("minItems").is_some_and(|m| n < m) || num("maxItems").is_some_and(|m| n > m) {
            return false;
        }
        if let Some(item_schema) = s.get("items") {
            if !items.iter().all(|i| schema_accepts(item_schema, i)) {
                return false;
            }
        }
    }
    if let Some(obj) = v.as_object() {
        if let Some(req) = s.get("required").and_then(Value::as_array) {
            if !req.iter().filter_map(Value::as_str).all(|k| obj.contains_key(k)) {
                return false;
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, child) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => {
                    if !schema_accepts(ps, child) {
                        return false;
                    }
                }
                None => {
                    if s.get("additionalProperties") == Some(&Value::Bool(false)) {
                        return false;
                    }
                }
            }
        }
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        if !all.iter().all(|sub| schema_accepts(sub, v)) {
            return false;
        }
    }
    if let Some(cond) = s.get("if") {
        let branch = if schema_accepts(cond, v) { s.get("then") } else { s.get("else") };
        if branch.is_some_and(|b| !schema_accepts(b, v)) {
            return false;
        }
    }
    if let Some(n) = s.get("not") {
        if schema_accepts(n, v) {
            return false;
        }
    }
    true
}

#[test]
fn schema_and_validation_agree_on_samples() {
    // Structural samples only: rules that need a regex or URL parser (UUIDs, URLs, blank
    // strings) and the contextData size/depth annotations are checked by the table above.
    let samples = vec![
        tutorial(),
        json!({}),
        json!([]),
        edited(&[set("triggerConditions", json!([]))]),
        edited(&[set("displaySettings.delayMs", json!(499))]),
        edited(&[set("displaySettings.delayMs", json!(5000.5))]),
        edited(&[set("displaySettings.maxConcurrentPrompts", json!(3))]),
        edited(&[set("displaySettings.maxConcurrentPrompts", json!(4))]),
        edited(&[set("displaySettings.maxConcurrentPrompts", json!(1.5))]),
        edited(&[set("displaySettings.maxConcurrentPrompts", json!(2.0))]),
        edited(&[set("displaySettings.autoDismissMs", json!(60001))]),
        edited(&[set("displaySettings.extra", json!(1))]),
        edited(&[del("displaySettings.delayMs")]),
        edited(&[set("triggerConditions.1.threshold", json!(1.01))]),
        edited(&[set("triggerConditions.1.threshold", json!(0))]),
        edited(&[set("triggerConditions.1.value", json!("angry"))]),
        edited(&[set("triggerConditions.0.value", json!(""))]),
        edited(&[set("triggerConditions.0.value", json!("x".repeat(100)))]),
        edited(&[set("triggerConditions.0.value", json!("x".repeat(101)))]),
        edited(&[set("triggerConditions.0.value", json!(5))]),
        edited(&[set("triggerConditions.0.type", json!("volume"))]),
        edited(&[set("triggerConditions.0", json!({"type": "duration", "value": 60}))]),
        edited(&[set("triggerConditions.0", json!({"type": "duration", "value": 60.5}))]),
        edited(&[set("triggerConditions.0", json!({"type": "duration", "value": 0}))]),
        edited(&[set("triggerConditions.0", json!({"type": "duration", "value": 60, "threshold": 0.2}))]),
        edited(&[set("triggerConditions.0", json!({"type": "duration", "value": "60"}))]),
        edited(&[set("triggerConditions.0", json!({"type": "confidence", "value": "transcript", "threshold": 0.8}))]),
        edited(&[set("triggerConditions.0", json!({"type": "confidence", "value": "transcript"}))]),
        edited(&[set("triggerConditions.0", json!({"type": "confidence", "value": "audio", "threshold": 0.8}))]),
        edited(&[set("triggerConditions.0", json!({"type": "keyword"}))]),
        edited(&[set("triggerConditions.0", json!({"type": "keyword", "value": "x", "weight": 1}))]),
        edited(&[set("triggerConditions", Value::Array(vec![json!({"type": "keyword", "value": "a"}); 6]))]),
        edited(&[set("triggerConditions", Value::Array(vec![json!({"type": "keyword", "value": "a"}); 5]))]),
        edited(&[set("contextData", json!([]))]),
        edited(&[set("prompt", json!({"title": "t", "body": "b", "priority": "high"}))]),
        edited(&[set("prompt", json!({"title": "t".repeat(81), "body": "b"}))]),
        edited(&[set("prompt", json!({"title": "t", "body": "b".repeat(601)}))]),
        edited(&[set("prompt", json!({"title": "t"}))]),
        edited(&[set("prompt", json!({"title": "t", "body": "b", "priority": "urgent"}))]),
        edited(&[set("onCapacity", json!("reject"))]),
        edited(&[set("onCapacity", json!("wait"))]),
        edited(&[set("queueTimeoutMs", json!(600000))]),
        edited(&[set("queueTimeoutMs", json!(600001))]),
        edited(&[set("queueTimeoutMs", json!("1s"))]),
        edited(&[set("unknown", json!(1))]),
    ];
    let schema = json_schema();
    for s in &samples {
        let by_validation = validate_value(s).is_ok();
        let by_schema = schema_accepts(&schema, s);
        assert_eq!(by_schema, by_validation, "schema says {by_schema}, validation says {by_validation} for {s}");
    }
}
