//! Integration tests: the command line as a user meets it (help, config, regions, exit codes).

use crate::support;

#[test]
fn every_command_has_help() {
    for cmd in [
        vec!["--help"],
        vec!["config", "show", "--help"],
        vec!["regions", "--help"],
        vec!["validate", "--help"],
        vec!["schema", "--help"],
        vec!["prompts", "import", "--help"],
        vec!["prompts", "list", "--help"],
        vec!["emulator", "--help"],
        vec!["inject", "--help"],
        vec!["demo", "--help"],
    ] {
        let out = support::run(&cmd, &[]);
        assert_eq!(out.status.code(), Some(0), "{cmd:?}");
        assert!(support::stdout(&out).contains("Usage:"), "{cmd:?}");
    }
    let out = support::run(&["no-such-command"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn config_show_layers_env_and_redacts_secrets() {
    let out = support::run(
        &["config", "show"],
        &[
            ("GC_CLIENT_ID", "tutorial-client"),
            ("GENESYSCLOUD_OAUTHCLIENT_SECRET", "super-secret-value"),
            ("GENESYSCLOUD_REGION", "eu_west_1"),
        ],
    );
    let text = support::stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
    assert!(text.contains("client_id = \"tutorial-client\""), "{text}");
    assert!(text.contains("client_secret = \"[redacted]\""), "{text}");
    assert!(!text.contains("super-secret-value"));
    assert!(text.contains("https://api.mypurecloud.ie"), "{text}");
    assert!(text.contains("env GC_CLIENT_ID → genesys.client_id"), "{text}");

    let out = support::run(&["config", "show"], &[("GENESYSCLOUD_REGION", "mars-north-1")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(support::stderr(&out).contains("unknown region"));

    let out = support::run(&["config", "show", "--config", "no/such.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(support::stderr(&out).contains("cannot read config file"));

    let out = support::run(&["config", "show", "--defaults"], &[]);
    assert!(support::stdout(&out).contains("requests_per_minute = 300"));
}

#[test]
fn regions_list_and_resolve() {
    let out = support::run(&["regions", "--json"], &[]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(18));
    let out = support::run(&["regions", "mypurecloud.jp"], &[]);
    let text = support::stdout(&out);
    assert!(text.contains("ap-northeast-1") && text.contains("https://login.mypurecloud.jp"), "{text}");
    let out = support::run(&["regions", "us-est-1"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(support::stderr(&out).contains("did you mean `us-east-1`"));
}
