//! A real headless Chromium for the browser tests (and `benches/panel.rs`, which includes
//! this file): starts `chromedriver` on a free loopback port and connects a fantoccini
//! WebDriver client to a fresh Chromium profile.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`/usr/bin/chromium`,
//! `/usr/bin/chromedriver`; override with `CHROMIUM` and `CHROMEDRIVER`). Chromium runs with
//! no network beyond loopback: background networking, updates, sync and QUIC are off.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// The switches every Chromium here runs with (plus a fresh `--user-data-dir`).
pub const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--window-size=440,900",
];

fn tool(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(default))
}

/// A chromedriver process and one browser session on it. Dropping it ends both.
pub struct Browser {
    pub client: Client,
    driver: Child,
    port: u16,
    /// The WebDriver session, until `close` ended it.
    session: Option<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium. Panics with what to install when the
    /// tools are missing.
    pub async fn start() -> Browser {
        let chromium = tool("CHROMIUM", "/usr/bin/chromium");
        let driver_bin = tool("CHROMEDRIVER", "/usr/bin/chromedriver");
        assert!(
            chromium.exists() && driver_bin.exists(),
            "the browser tests need {} and {} (apt-get install chromium chromium-driver; or set CHROMIUM and CHROMEDRIVER)",
            chromium.display(),
            driver_bin.display()
        );
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
            l.local_addr().expect("its address").port()
        };
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{url}/status")).timeout(Duration::from_secs(1)).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < until, "chromedriver did not come up on {url}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().expect("a temporary profile directory");
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert("goog:chromeOptions".into(), json!({ "binary": chromium, "args": args }));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector).capabilities(caps).connect(&url).await.expect("a WebDriver session");
        let session = client.session_id().await.ok().flatten();
        Browser { client, driver, port, session, _profile: profile }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// Runs `script` (a function body; `return` a value) in the page.
    pub async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.expect("run script in the page")
    }

    /// Polls `script` until it returns something truthy; panics with `what` after `within`.
    pub async fn wait_for(&self, script: &str, within: Duration, what: &str) -> Value {
        let until = Instant::now() + within;
        loop {
            let v = self.client.execute(script, vec![]).await.unwrap_or(Value::Null);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            assert!(Instant::now() < until, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
            .click()
            .await
            .expect("click");
    }

    /// Ends the session (Chromium exits) and chromedriver.
    pub async fn close(mut self) {
        let client = self.client.clone();
        if client.close().await.is_ok() {
            self.session = None;
        }
        // Drop ends chromedriver.
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that panicked must not leave Chromium behind: killing chromedriver alone
        // would orphan it, so end the session first (a blocking DELETE, as Drop cannot
        // await), then chromedriver (only this child, by its own handle).
        if let Some(id) = self.session.take() {
            use std::io::{Read, Write};
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let req = format!(
                    "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    self.port
                );
                if s.write_all(req.as_bytes()).is_ok() {
                    let _ = s.read_to_end(&mut Vec::new());
                }
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
