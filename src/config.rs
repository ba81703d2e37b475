//! Configuration: built-in defaults ← `gc-assist.toml` / `--config` ← environment,
//! validated once, with secrets that never print.
//!
//! The environment accepts both the Genesys tools' variables and the tutorial's, because
//! people arrive with one or the other already exported. Where both name the same
//! setting, the Genesys tools' variable wins (it is the more specific convention).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::genesys::region::{self, Hosts, RegionError};

/// The defaults layer, shipped inside the binary.
pub const DEFAULTS_TOML: &str = include_str!("../config.default.toml");

/// The file looked for in the working directory when no `--config` is given.
pub const DEFAULT_FILE: &str = "gc-assist.toml";

/// Prefix of the generic per-setting variables: `GC_ASSIST__SECTION__KEY`.
pub const ENV_PREFIX: &str = "GC_ASSIST__";

/// Well-known variables and the setting each one fills, in order of precedence (first wins).
pub const ENV_ALIASES: &[(&str, &str)] = &[
    ("GENESYSCLOUD_OAUTHCLIENT_ID", "genesys.client_id"),
    ("GC_CLIENT_ID", "genesys.client_id"),
    ("GENESYSCLOUD_OAUTHCLIENT_SECRET", "genesys.client_secret"),
    ("GC_CLIENT_SECRET", "genesys.client_secret"),
    ("GENESYSCLOUD_API_REGION", "genesys.region"),
    ("GENESYSCLOUD_REGION", "genesys.region"),
    ("GC_ENV_URL", "genesys.region"),
];

/// Why configuration could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration ({origin}): {message}")]
    Invalid { origin: String, message: String },
    #[error("invalid setting genesys.region: {0}")]
    Region(#[from] RegionError),
}

/// All settings. Sections mirror `config.default.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub genesys: GenesysConfig,
    pub catalogue: CatalogueConfig,
    pub inject: InjectConfig,
    pub emulator: EmulatorSettings,
    pub store: StoreConfig,
    pub server: ServerConfig,
    pub webhook: WebhookConfig,
    pub audit: AuditConfig,
    pub panel: PanelConfig,
    pub triggers: TriggersConfig,
}

/// The agent's prompt panel (the Interaction Widget page) and its sign-in.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PanelConfig {
    /// The Genesys OAuth client (Token Implicit Grant) the page signs agents in with; empty
    /// turns sign-in off (the page says so).
    pub oauth_client_id: String,
    /// Lifetime of a panel session; the page renews it before it ends.
    pub session_ttl_secs: u64,
    /// How long a validated (agent token, conversation) pair is trusted without asking
    /// Genesys again.
    pub validation_cache_secs: u64,
    /// Base URL of the login host the page sends agents to (`/oauth/authorize`); empty means
    /// the login host of `genesys.region`. `serve --emulator` points it at the emulator.
    pub login_base: String,
}

/// The live trigger runtime (`serve`): watched queues, rules file, recording, channels.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TriggersConfig {
    pub queues: Vec<String>,
    pub rules_file: PathBuf,
    pub rules_poll_ms: u64,
    pub record_dir: PathBuf,
    pub heartbeat_secs: u64,
    pub rotate_after_secs: u64,
    pub topics_per_channel: usize,
    pub max_channels: usize,
}

/// Where the service keeps its durable state.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub path: PathBuf,
}

/// `gc-assist serve`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub bind: String,
    pub max_body_bytes: usize,
    pub shed_queue_depth: usize,
    pub api_keys: Vec<ApiKeyConfig>,
    pub channels: Vec<String>,
}

/// One API key, stored hashed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub id: String,
    /// SHA-256 of the key, hex.
    pub sha256: String,
    /// `injector` or `admin`.
    pub role: String,
}

/// Webhooks to the knowledge system.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub endpoints: Vec<String>,
    #[serde(serialize_with = "redact")]
    pub secret: SecretString,
    pub attempt_timeout_ms: u64,
    pub schedule_secs: Vec<u64>,
    pub allow_private: Vec<String>,
}

/// The audit trail's key, anchor and retention.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    pub key_file: PathBuf,
    pub anchor_file: PathBuf,
    pub retention_days: u32,
}

/// How to reach and authenticate against Genesys Cloud.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GenesysConfig {
    pub region: String,
    pub client_id: String,
    #[serde(serialize_with = "redact")]
    pub client_secret: SecretString,
    pub requests_per_minute: u32,
    pub burst: u32,
    pub request_timeout_ms: u64,
    pub token_refresh_margin_secs: u64,
    pub retry: RetryConfig,
}

/// Retry budget for Genesys API calls (see `genesys::retry`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    pub max_attempts: u32,
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
    pub max_elapsed_ms: u64,
    pub max_retry_after_ms: u64,
    pub default_retry_after_ms: u64,
}

/// Where prompt content comes from when a payload has no inline prompt.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueConfig {
    pub path: PathBuf,
}

/// Participant-data delivery settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    pub attribute_prefix: String,
}

/// Settings of `gc-assist emulator`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmulatorSettings {
    pub bind: String,
    pub calls_dir: PathBuf,
    pub client_id: String,
    #[serde(serialize_with = "redact")]
    pub client_secret: SecretString,
    pub requests_per_minute: u32,
    pub token_ttl_secs: u64,
}

fn redact<S: serde::Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    if secret.expose_secret().is_empty() {
        s.serialize_str("")
    } else {
        s.serialize_str("[redacted]")
    }
}

/// Where a loaded configuration came from, for `config show` and error messages.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    /// The file layer, if one was read.
    pub file: Option<PathBuf>,
    /// Environment variables that changed a setting: (variable, setting). Names only.
    pub env: Vec<(String, String)>,
}

/// A validated configuration with its derived values.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub hosts: Hosts,
    pub provenance: Provenance,
}

impl Config {
    /// The built-in defaults alone.
    pub fn defaults() -> Config {
        let value: toml::Value = toml::from_str(DEFAULTS_TOML).expect("built-in defaults parse");
        value.try_into().expect("built-in defaults match Config")
    }

    /// Render as TOML with secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

/// Load configuration from the real process environment.
///
/// `explicit` is `--config`; without it `gc-assist.toml` in the working directory is
/// read when present.
pub fn load(explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    load_from(explicit, &env)
}

/// Load configuration with an explicit environment (tests pass their own).
pub fn load_from(explicit: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Loaded, ConfigError> {
    let mut tree: toml::Value = toml::from_str(DEFAULTS_TOML).expect("built-in defaults parse");
    let mut provenance = Provenance::default();

    let file = match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from(DEFAULT_FILE)).filter(|p| p.is_file()),
    };
    if let Some(path) = file {
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        let layer: toml::Value =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.clone(), message: e.to_string() })?;
        merge(&mut tree, layer);
        // Relative paths in a config file are relative to that file, as people expect.
        provenance.file = Some(path);
    }

    // Generic variables first, so the well-known names below win over them.
    for (name, raw) in env.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)) {
        let setting = name[ENV_PREFIX.len()..].to_ascii_lowercase().replace("__", ".");
        set_path(&mut tree, &setting, raw).map_err(|message| ConfigError::Invalid { origin: name.clone(), message })?;
        provenance.env.push((name.clone(), setting));
    }
    let mut filled: Vec<&str> = Vec::new();
    for (var, setting) in ENV_ALIASES {
        let Some(raw) = env.get(*var).filter(|v| !v.trim().is_empty()) else { continue };
        if filled.contains(setting) {
            continue;
        }
        filled.push(setting);
        set_string(&mut tree, setting, raw.trim());
        provenance.env.push((var.to_string(), setting.to_string()));
    }

    let origin = match &provenance.file {
        Some(p) => format!("defaults ← {} ← environment", p.display()),
        None => "defaults ← environment".to_string(),
    };
    let config: Config = tree
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Invalid { origin, message: e.message().to_string() })?;
    validate(&config)?;
    let hosts = region::resolve(&config.genesys.region)?;
    Ok(Loaded { config, hosts, provenance })
}

fn validate(c: &Config) -> Result<(), ConfigError> {
    let bad = |message: &str| Err(ConfigError::Invalid { origin: "values".into(), message: message.into() });
    if c.genesys.requests_per_minute == 0 {
        return bad("genesys.requests_per_minute must be at least 1");
    }
    if c.genesys.burst == 0 {
        return bad("genesys.burst must be at least 1");
    }
    if c.genesys.retry.max_attempts == 0 {
        return bad("genesys.retry.max_attempts must be at least 1 (1 means no retries)");
    }
    if c.genesys.request_timeout_ms == 0 {
        return bad("genesys.request_timeout_ms must be above 0");
    }
    if c.server.max_body_bytes == 0 {
        return bad("server.max_body_bytes must be above 0");
    }
    if c.panel.session_ttl_secs < 60 {
        return bad("panel.session_ttl_secs must be at least 60 (the page renews a minute before the end)");
    }
    let login = c.panel.login_base.trim();
    if !(login.is_empty() || login.starts_with("https://") || login.starts_with("http://")) {
        return bad("panel.login_base must be an http(s) URL such as https://login.mypurecloud.ie, or empty");
    }
    for k in &c.server.api_keys {
        if k.sha256.len() != 64 || !k.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ConfigError::Invalid {
                origin: "values".into(),
                message: format!(
                    "server.api_keys `{}`: sha256 must be 64 hex characters (the SHA-256 of the key)",
                    k.id
                ),
            });
        }
        if !matches!(k.role.as_str(), "metrics" | "injector" | "admin") {
            return Err(ConfigError::Invalid {
                origin: "values".into(),
                message: format!(
                    "server.api_keys `{}`: role must be \"metrics\", \"injector\" or \"admin\", got {:?}",
                    k.id, k.role
                ),
            });
        }
    }
    for ch in &c.server.channels {
        if !matches!(ch.as_str(), "panel" | "participant-data") {
            return Err(ConfigError::Invalid {
                origin: "values".into(),
                message: format!("server.channels: unknown channel {ch:?}; use \"panel\" and/or \"participant-data\""),
            });
        }
    }
    if c.webhook.attempt_timeout_ms == 0 {
        return bad("webhook.attempt_timeout_ms must be above 0");
    }
    if c.audit.retention_days == 0 {
        return bad("audit.retention_days must be at least 1");
    }
    if c.emulator.requests_per_minute == 0 {
        return bad("emulator.requests_per_minute must be at least 1");
    }
    let t = &c.triggers;
    if t.heartbeat_secs == 0 || t.rotate_after_secs == 0 || t.rules_poll_ms == 0 {
        return bad("triggers.heartbeat_secs, triggers.rotate_after_secs and triggers.rules_poll_ms must be above 0");
    }
    if t.heartbeat_secs > 3600 {
        return bad("triggers.heartbeat_secs must be at most 3600 (Genesys sends a heartbeat about every 30 s)");
    }
    if t.rotate_after_secs >= 24 * 3600 {
        return bad("triggers.rotate_after_secs must be below 86400: Genesys channels expire after 24 hours");
    }
    if !(1..=1000).contains(&t.topics_per_channel) {
        return bad("triggers.topics_per_channel must be 1-1000 (the Genesys limit is 1000)");
    }
    if !(2..=20).contains(&t.max_channels) {
        return bad(
            "triggers.max_channels must be 2-20 (Genesys allows 20 per OAuth client; one is kept for rotation)",
        );
    }
    if let Some(q) =
        t.queues.iter().find(|q| q.is_empty() || !q.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-'))
    {
        return Err(ConfigError::Invalid {
            origin: "values".into(),
            message: format!("triggers.queues: {q:?} is not a queue id (letters, digits and dashes)"),
        });
    }
    Ok(())
}

/// Deep-merge `layer` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Value, layer: toml::Value) {
    match (base, layer) {
        (toml::Value::Table(b), toml::Value::Table(l)) => {
            for (k, v) in l {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, l) => *b = l,
    }
}

/// Set a dotted setting from an environment string, typed like the default it replaces.
fn set_path(tree: &mut toml::Value, dotted: &str, raw: &str) -> Result<(), String> {
    let existing = lookup(tree, dotted).ok_or_else(|| format!("no setting named `{dotted}`"))?;
    let value = match existing {
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.trim().parse().map_err(|_| format!("`{dotted}` takes a whole number, got `{raw}`"))?,
        ),
        toml::Value::Float(_) => {
            toml::Value::Float(raw.trim().parse().map_err(|_| format!("`{dotted}` takes a number, got `{raw}`"))?)
        }
        toml::Value::Boolean(_) => toml::Value::Boolean(
            raw.trim().parse().map_err(|_| format!("`{dotted}` takes true or false, got `{raw}`"))?,
        ),
        toml::Value::Array(_) => {
            toml::Value::Array(raw.split(',').map(|s| toml::Value::String(s.trim().to_string())).collect())
        }
        toml::Value::Table(_) => return Err(format!("`{dotted}` is a section, not a setting")),
        _ => toml::Value::String(raw.to_string()),
    };
    *lookup_mut(tree, dotted).expect("looked up above") = value;
    Ok(())
}

fn set_string(tree: &mut toml::Value, dotted: &str, raw: &str) {
    if let Some(slot) = lookup_mut(tree, dotted) {
        *slot = toml::Value::String(raw.to_string());
    }
}

fn lookup<'a>(tree: &'a toml::Value, dotted: &str) -> Option<&'a toml::Value> {
    dotted.split('.').try_fold(tree, |node, key| node.get(key))
}

fn lookup_mut<'a>(tree: &'a mut toml::Value, dotted: &str) -> Option<&'a mut toml::Value> {
    dotted.split('.').try_fold(tree, |node, key| node.get_mut(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_load_and_resolve() {
        let l = load_from(Some(Path::new("config.default.toml")), &env(&[])).unwrap();
        assert_eq!(l.config.genesys.requests_per_minute, 300);
        assert_eq!(l.hosts.api.as_str(), "https://api.mypurecloud.com/");
    }

    #[test]
    fn genesys_variables_win_over_tutorial_ones() {
        let l = load_from(
            Some(Path::new("config.default.toml")),
            &env(&[
                ("GC_CLIENT_ID", "tutorial-id"),
                ("GENESYSCLOUD_OAUTHCLIENT_ID", "genesys-id"),
                ("GC_CLIENT_SECRET", "s3cret"),
                ("GC_ENV_URL", "https://api.mypurecloud.ie"),
            ]),
        )
        .unwrap();
        assert_eq!(l.config.genesys.client_id, "genesys-id");
        assert_eq!(l.config.genesys.client_secret.expose_secret(), "s3cret");
        assert_eq!(l.hosts.login.as_str(), "https://login.mypurecloud.ie/");
        let shown = l.config.to_redacted_toml();
        assert!(!shown.contains("s3cret") && shown.contains("[redacted]"), "{shown}");
        assert!(!format!("{:?}", l.config).contains("s3cret"));
    }

    #[test]
    fn api_region_url_beats_region_name() {
        let l = load_from(
            Some(Path::new("config.default.toml")),
            &env(&[("GENESYSCLOUD_REGION", "eu-west-1"), ("GENESYSCLOUD_API_REGION", "https://api.mypurecloud.de")]),
        )
        .unwrap();
        assert_eq!(l.hosts.api.as_str(), "https://api.mypurecloud.de/");
    }

    #[test]
    fn generic_variables_are_typed() {
        let l = load_from(
            Some(Path::new("config.default.toml")),
            &env(&[("GC_ASSIST__GENESYS__REQUESTS_PER_MINUTE", "600")]),
        )
        .unwrap();
        assert_eq!(l.config.genesys.requests_per_minute, 600);
        let e = load_from(None, &env(&[("GC_ASSIST__GENESYS__REQUESTS_PER_MINUTE", "lots")])).unwrap_err();
        assert!(e.to_string().contains("whole number"), "{e}");
        let e = load_from(None, &env(&[("GC_ASSIST__GENESYS__NOPE", "1")])).unwrap_err();
        assert!(e.to_string().contains("no setting named `genesys.nope`"), "{e}");
    }

    #[test]
    fn service_sections_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        let key = "a".repeat(64);
        std::fs::write(&p, format!("[[server.api_keys]]\nid = \"ks\"\nsha256 = \"{key}\"\nrole = \"injector\"\n"))
            .unwrap();
        let l = load_from(Some(&p), &env(&[("GC_ASSIST__WEBHOOK__SECRET", "whsec_abc")])).unwrap();
        assert_eq!(l.config.server.api_keys[0].id, "ks");
        assert!(!l.config.to_redacted_toml().contains("whsec_abc"));
        std::fs::write(&p, "[[server.api_keys]]\nid = \"ks\"\nsha256 = \"nothex\"\nrole = \"injector\"\n").unwrap();
        assert!(load_from(Some(&p), &env(&[])).unwrap_err().to_string().contains("64 hex"));
        std::fs::write(&p, "[server]\nchannels = [\"carrier-pigeon\"]\n").unwrap();
        assert!(load_from(Some(&p), &env(&[])).unwrap_err().to_string().contains("unknown channel"));
    }

    #[test]
    fn file_layer_rejects_unknown_keys_and_bad_regions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[genesys]\nregoin = \"x\"\n").unwrap();
        let e = load_from(Some(&p), &env(&[])).unwrap_err().to_string();
        assert!(e.contains("regoin"), "{e}");
        std::fs::write(&p, "[genesys]\nregion = \"mars-1\"\n").unwrap();
        let e = load_from(Some(&p), &env(&[])).unwrap_err().to_string();
        assert!(e.contains("unknown region"), "{e}");
        std::fs::write(&p, "not = [toml").unwrap();
        assert!(matches!(load_from(Some(&p), &env(&[])), Err(ConfigError::Parse { .. })));
    }
}
