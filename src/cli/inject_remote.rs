//! `gc-assist inject --server URL`: send payloads through a running gc-assist service,
//! one file or a JSONL batch (progress bar, summary), instead of writing participant data
//! directly.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::stream::{self, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use url::Url;

use super::Outcome;

/// Attempts per payload when the service sheds load (429) or is briefly unreachable.
const ATTEMPTS: u32 = 4;
/// Longest `Retry-After` we are willing to sleep for inside a batch.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// One answer of the service.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub elapsed: Duration,
}

/// A small client of the injection API.
#[derive(Debug, Clone)]
pub struct Remote {
    http: reqwest::Client,
    endpoint: Url,
    api_key: Arc<str>,
}

impl Remote {
    pub fn new(server: &Url, api_key: &str) -> anyhow::Result<Remote> {
        if api_key.trim().is_empty() {
            anyhow::bail!("--server needs an API key: pass --api-key or set GC_ASSIST_API_KEY");
        }
        let endpoint = server.join("v1/prompt-injections").with_context(|| format!("bad --server URL {server}"))?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build()?;
        Ok(Remote { http, endpoint, api_key: Arc::from(api_key.trim()) })
    }

    /// POST one payload, retrying 429 (as `Retry-After` says) and connection failures; the
    /// idempotency key makes the retries safe.
    pub async fn post(&self, body: Vec<u8>, idempotency_key: &str) -> anyhow::Result<Answer> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self
                .http
                .post(self.endpoint.clone())
                .bearer_auth(&*self.api_key)
                .header("content-type", "application/json")
                .header("idempotency-key", idempotency_key)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status() == StatusCode::TOO_MANY_REQUESTS && attempt < ATTEMPTS => {
                    let wait = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs)
                        .unwrap_or(Duration::from_secs(1))
                        .min(MAX_RETRY_AFTER);
                    tokio::time::sleep(wait).await;
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let bytes = resp.bytes().await.unwrap_or_default();
                    let body = serde_json::from_slice(&bytes).unwrap_or_else(
                        |_| json!({"error": "unreadable_answer", "message": String::from_utf8_lossy(&bytes)}),
                    );
                    return Ok(Answer { status, body, elapsed: started.elapsed() });
                }
                Err(e) if (e.is_connect() || e.is_timeout()) && attempt < ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!("cannot reach the service at {}", self.endpoint)))
                }
            }
        }
    }
}

/// Idempotency key of a batch line: the same line at the same position of a rerun batch
/// maps to the same key, so rerunning a half-sent batch creates nothing twice.
pub fn line_key(line_no: usize, line: &[u8]) -> String {
    let digest = Sha256::digest(line);
    format!("batch-{line_no}-{}", hex::encode(&digest[..12]))
}

/// One payload file through the service; exit like the direct command.
pub async fn single(remote: &Remote, file_bytes: Vec<u8>, idempotency_key: Option<String>) -> anyhow::Result<Outcome> {
    let key = idempotency_key.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let answer = remote.post(file_bytes, &key).await?;
    println!("{}", serde_json::to_string_pretty(&answer.body)?);
    match answer.status {
        200..=299 => {
            eprintln!("✔ accepted ({}): status {}", answer.status, answer.body["status"].as_str().unwrap_or("?"));
            Ok(Outcome::Ok)
        }
        422 => {
            eprintln!("✘ the service found the payload invalid (422)");
            Ok(Outcome::CheckFailed)
        }
        s => anyhow::bail!(
            "the service answered {s}: {}",
            answer.body["message"].as_str().unwrap_or("no message; see the body above")
        ),
    }
}

/// Summary of a batch.
#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchSummary {
    pub lines: usize,
    pub accepted: usize,
    /// Accepted, by the status the service gave (scheduled, queued, armed).
    pub by_status: std::collections::BTreeMap<String, usize>,
    /// Refused, by HTTP status.
    pub refused: std::collections::BTreeMap<u16, usize>,
    /// Lines that never got an answer (connection failures).
    pub unsent: usize,
    pub elapsed_ms: u64,
    pub per_second: f64,
    pub client_latency_ms: Percentiles,
    pub server_latency_ms: Percentiles,
    /// The first few failures, with line numbers and messages.
    pub failures: Vec<Value>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(mut xs: Vec<f64>) -> Percentiles {
        if xs.is_empty() {
            return Percentiles::default();
        }
        xs.sort_by(f64::total_cmp);
        let at = |q: f64| xs[((xs.len() - 1) as f64 * q).round() as usize];
        Percentiles { p50: at(0.5), p99: at(0.99), max: xs[xs.len() - 1] }
    }
}

/// Send every line of a JSONL file with bounded concurrency.
pub async fn batch(
    remote: &Remote,
    path: &Path,
    text: &[u8],
    concurrency: usize,
    json_out: bool,
) -> anyhow::Result<Outcome> {
    let lines: Vec<(usize, Vec<u8>)> = text
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l).to_vec()))
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    if lines.is_empty() {
        anyhow::bail!("{} has no payload lines (expected JSONL: one JSON payload per line)", path.display());
    }
    let bar = ProgressBar::new(lines.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} injections  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let results: Vec<(usize, anyhow::Result<Answer>)> = stream::iter(lines)
        .map(|(no, line)| {
            let remote = remote.clone();
            let bar = bar.clone();
            async move {
                let key = line_key(no, &line);
                let r = remote.post(line, &key).await;
                bar.inc(1);
                (no, r)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    bar.finish_and_clear();

    let mut s = BatchSummary { lines: results.len(), ..BatchSummary::default() };
    let mut client = Vec::new();
    let mut server = Vec::new();
    for (no, r) in results {
        match r {
            Ok(a) if (200..300).contains(&a.status) => {
                s.accepted += 1;
                *s.by_status.entry(a.body["status"].as_str().unwrap_or("?").to_string()).or_default() += 1;
                client.push(a.elapsed.as_secs_f64() * 1000.0);
                if let Some(ms) = a.body["latencyMs"].as_f64() {
                    server.push(ms);
                }
            }
            Ok(a) => {
                *s.refused.entry(a.status).or_default() += 1;
                client.push(a.elapsed.as_secs_f64() * 1000.0);
                if s.failures.len() < 20 {
                    s.failures.push(
                        json!({"line": no, "status": a.status, "error": a.body["error"], "message": a.body["message"]}),
                    );
                }
            }
            Err(e) => {
                s.unsent += 1;
                if s.failures.len() < 20 {
                    s.failures.push(json!({"line": no, "error": "unsent", "message": format!("{e:#}")}));
                }
            }
        }
    }
    let elapsed = started.elapsed();
    s.elapsed_ms = elapsed.as_millis() as u64;
    s.per_second = s.lines as f64 / elapsed.as_secs_f64().max(1e-9);
    s.client_latency_ms = Percentiles::of(client);
    s.server_latency_ms = Percentiles::of(server);

    if json_out {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "{} lines: {} accepted {:?}, {} refused {:?}, {} unsent; {:.0}/s; client latency p50 {:.1} ms p99 {:.1} ms",
            s.lines,
            s.accepted,
            s.by_status,
            s.refused.values().sum::<usize>(),
            s.refused,
            s.unsent,
            s.per_second,
            s.client_latency_ms.p50,
            s.client_latency_ms.p99
        );
        for f in &s.failures {
            println!("  line {}: {} {}", f["line"], f["status"], f["message"].as_str().unwrap_or(""));
        }
    }
    Ok(if s.accepted == s.lines { Outcome::Ok } else { Outcome::CheckFailed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_keys_are_stable_and_distinct() {
        assert_eq!(line_key(3, b"{}"), line_key(3, b"{}"));
        assert_ne!(line_key(3, b"{}"), line_key(4, b"{}"));
        assert_ne!(line_key(3, b"{}"), line_key(3, b"{ }"));
    }

    #[test]
    fn percentiles() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p99, p.max), (51.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(vec![]).max, 0.0);
    }
}
