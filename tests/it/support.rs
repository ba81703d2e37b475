//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Path of the built `gc-assist` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gc-assist"))
}

/// Run the binary with arguments and extra environment, from the crate root, with no
/// Genesys variables inherited from the developer's shell.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    for var in [
        "GENESYSCLOUD_OAUTHCLIENT_ID",
        "GENESYSCLOUD_OAUTHCLIENT_SECRET",
        "GENESYSCLOUD_REGION",
        "GENESYSCLOUD_API_REGION",
        "GC_CLIENT_ID",
        "GC_CLIENT_SECRET",
        "GC_ENV_URL",
        "GC_ASSIST_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run gc-assist")
}

/// Recorded calls to test with: the shared set beside the project (../shared/data/calls,
/// 40 calls) when it is there, else the project's own examples/calls (the same format),
/// so a clone anywhere can run the tests. Expectations come from the folder's calls.json.
pub fn shared_calls() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/data/calls");
    if shared.join("calls.json").is_file() {
        shared
    } else {
        root.join("examples/calls")
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The next SSE frame that is not a keep-alive: (event, id, data); None after `within`.
pub async fn next_event(
    resp: &mut reqwest::Response,
    buf: &mut String,
    within: Duration,
) -> Option<(String, u64, Value)> {
    let until = Instant::now() + within;
    loop {
        if let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let (mut ev, mut id, mut data) = (String::new(), 0, String::new());
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    ev = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().unwrap_or(0);
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if ev.is_empty() {
                continue; // keep-alive comment
            }
            return Some((ev, id, serde_json::from_str(&data).unwrap_or(Value::Null)));
        }
        let left = until.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, resp.chunk()).await {
            Ok(Ok(Some(c))) => buf.push_str(&String::from_utf8_lossy(&c)),
            _ => return None,
        }
    }
}
