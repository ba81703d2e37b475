//! `gc-assist emulator`: run the local Genesys Cloud emulator until Ctrl-C or SIGTERM,
//! after printing how to point gc-assist (or an official SDK) at it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use secrecy::ExposeSecret;

use super::Outcome;
use crate::emulator::{self, CallSource, EmulatorConfig};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on [default: emulator.bind from the config, 127.0.0.1:8089].
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,
    /// Folder of recorded calls (calls.json + JSONL files) [default: emulator.calls_dir;
    /// empty means the example calls built into gc-assist].
    #[arg(long, value_name = "DIR")]
    pub calls: Option<PathBuf>,
    /// Requests a minute each token may make before getting 429 [default: emulator.requests_per_minute].
    #[arg(long, value_name = "N")]
    pub rpm: Option<u32>,
    /// Replay the loaded calls over the notification websockets at this speed (1 = real
    /// time, 20 = twenty times faster, `max` = as fast as possible). Without it nothing is
    /// replayed until POST /__emulator/replay.
    #[arg(long, value_name = "N")]
    pub speed: Option<String>,
    /// With --speed: replay again and again (fresh conversation ids each round).
    #[arg(long = "loop", requires = "speed")]
    pub looped: bool,
}

pub async fn run(args: Args, ctx: &super::Ctx) -> anyhow::Result<Outcome> {
    let loaded = ctx.load_config()?;
    let settings = &loaded.config.emulator;
    let bind = args.bind.unwrap_or_else(|| settings.bind.clone());
    let calls_dir = args.calls.unwrap_or_else(|| settings.calls_dir.clone());
    let rpm = args.rpm.unwrap_or(settings.requests_per_minute);
    if rpm == 0 {
        anyhow::bail!("--rpm must be at least 1");
    }
    let speed = match args.speed.as_deref() {
        Some(text) => Some(emulator::Speed::parse(text).map_err(|e| anyhow::anyhow!("--speed: {e}"))?),
        None => None,
    };
    let calls = if calls_dir.as_os_str().is_empty() { CallSource::Embedded } else { CallSource::Dir(calls_dir) };
    let cfg = EmulatorConfig {
        client_id: settings.client_id.clone(),
        client_secret: settings.client_secret.expose_secret().to_string(),
        requests_per_minute: rpm,
        token_ttl: Duration::from_secs(settings.token_ttl_secs),
        calls,
        ..EmulatorConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .with_context(|| format!("cannot listen on {bind}: pick a free address with --bind (e.g. 127.0.0.1:0)"))?;
    let emu = emulator::spawn_on(cfg, listener).await.context("cannot start the emulator")?;
    let addr = emu.addr();
    if !addr.ip().is_loopback() {
        eprintln!(
            "warning: listening on {addr}, reachable from other machines; the /__emulator admin endpoints still answer loopback clients only"
        );
    }
    let base = base_url(addr);
    println!("Genesys Cloud emulator listening on {base}");
    println!("  API and login base URL: {base}");
    println!("  OAuth client id:        {}", emu.client_id());
    println!("  OAuth client secret:    {}", emu.client_secret());
    println!("  rate limit:             {rpm} requests a minute per token");
    let calls = emu.calls();
    if calls.is_empty() {
        println!("No recorded conversations loaded; create one with POST {base}/__emulator/conversations");
    } else {
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED).set_header([
            "conversation",
            "scenario",
            "queue",
            "agent",
            "agent participant",
        ]);
        for c in &calls {
            table.add_row([
                c.conversation_id.as_str(),
                c.scenario.as_str(),
                c.queue_name.as_str(),
                c.agent_name.as_str(),
                c.agent_participant_id.as_str(),
            ]);
        }
        println!("{} conversations loaded:\n{table}", calls.len());
    }
    println!("Point gc-assist at it:");
    println!(
        "  export GENESYSCLOUD_API_REGION={base} GENESYSCLOUD_OAUTHCLIENT_ID={} GENESYSCLOUD_OAUTHCLIENT_SECRET={}",
        emu.client_id(),
        emu.client_secret()
    );
    println!("Admin (loopback only): {base}/__emulator/{{conversations,agent-tokens,faults,stats,calls,replay}}");
    if let Some(speed) = speed {
        let spec = emulator::ReplaySpec { speed, looped: args.looped, ..Default::default() };
        let started = emu.replay(spec).context("cannot start the replay")?;
        println!(
            "Replaying {} calls at {} over the notification websockets{}.",
            started.conversation_ids.len(),
            match speed {
                emulator::Speed::Max => "full speed".to_string(),
                emulator::Speed::Times(x) => format!("{x}x real time"),
            },
            if args.looped { ", looping" } else { "" }
        );
    }
    println!("Press Ctrl-C to stop.");
    super::shutdown_signal().await;
    eprintln!("stopping the emulator");
    emu.shutdown().await;
    Ok(Outcome::Ok)
}

/// The URL to print: an unspecified bind address is reached through loopback.
fn base_url(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", addr.port())
    } else {
        format!("http://{addr}")
    }
}
