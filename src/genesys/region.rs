//! Genesys Cloud regions and the hosts derived from them (API, login, streaming, apps).
//!
//! A region can be given three ways, all common in the wild: an SDK-style name
//! (`us-east-1`, `eu_west_1`, case-insensitive), a bare domain (`mypurecloud.ie`), or an
//! API base URL (`https://api.mypurecloud.ie`, or a local emulator `http://127.0.0.1:8089`).

use std::fmt;

use thiserror::Error;
use url::Url;

/// One row of the region table in genesys-api.md §1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// The dashed name used by `GENESYSCLOUD_REGION`, e.g. `us-east-1`.
    pub name: &'static str,
    /// The domain every host of the region hangs off, e.g. `mypurecloud.com`.
    pub domain: &'static str,
    /// A short human note (FedRAMP, sovereign cloud).
    pub note: &'static str,
}

/// Every region gc-assist knows, in the order of the Genesys SDK enum.
pub const REGIONS: &[Region] = &[
    Region { name: "us-east-1", domain: "mypurecloud.com", note: "" },
    Region { name: "eu-west-1", domain: "mypurecloud.ie", note: "" },
    Region { name: "ap-southeast-2", domain: "mypurecloud.com.au", note: "" },
    Region { name: "ap-northeast-1", domain: "mypurecloud.jp", note: "" },
    Region { name: "eu-central-1", domain: "mypurecloud.de", note: "" },
    Region { name: "us-west-2", domain: "usw2.pure.cloud", note: "" },
    Region { name: "ca-central-1", domain: "cac1.pure.cloud", note: "" },
    Region { name: "ap-northeast-2", domain: "apne2.pure.cloud", note: "" },
    Region { name: "eu-west-2", domain: "euw2.pure.cloud", note: "" },
    Region { name: "ap-south-1", domain: "aps1.pure.cloud", note: "" },
    Region { name: "us-east-2", domain: "use2.us-gov-pure.cloud", note: "FedRAMP" },
    Region { name: "sa-east-1", domain: "sae1.pure.cloud", note: "" },
    Region { name: "me-central-1", domain: "mec1.pure.cloud", note: "" },
    Region { name: "ap-northeast-3", domain: "apne3.pure.cloud", note: "" },
    Region { name: "eu-central-2", domain: "euc2.pure.cloud", note: "" },
    Region { name: "mx-central-1", domain: "mxc1.pure.cloud", note: "" },
    Region { name: "ap-southeast-1", domain: "apse1.pure.cloud", note: "" },
    Region { name: "eusc-de-east-1", domain: "edee1.eusc-pure.cloud", note: "EU sovereign cloud" },
];

/// Why a region string could not be understood.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RegionError {
    #[error("region is empty: set GENESYSCLOUD_REGION (e.g. us-east-1) or GENESYSCLOUD_API_REGION (e.g. https://api.mypurecloud.com)")]
    Empty,
    #[error("unknown region `{input}`: use a name such as us-east-1, a domain such as mypurecloud.ie, or an API base URL (run `gc-assist regions` for the list){hint}")]
    Unknown { input: String, hint: String },
    #[error("`{input}` is not a usable API base URL: {reason}")]
    BadUrl { input: String, reason: String },
}

/// The hosts one deployment is reached at. For a named region they follow the Genesys
/// pattern; for a custom base URL (the emulator, a gateway) every purpose shares it,
/// which is how the official SDKs' "gateway" configuration works too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hosts {
    /// `https://api.{domain}`: REST calls, `/api/v2/...`.
    pub api: Url,
    /// `https://login.{domain}`: `/oauth/token` and `/oauth/authorize`.
    pub login: Url,
    /// `wss://streaming.{domain}`: for display only; always use a channel's `connectUri`.
    pub streaming: Url,
    /// `https://apps.{domain}`: the Genesys Cloud web UI that hosts client apps.
    pub apps: Url,
    /// The region, when the input named or implied a known one.
    pub region: Option<Region>,
}

impl fmt::Display for Hosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "api={} login={} streaming={}",
            self.api.as_str().trim_end_matches('/'),
            self.login.as_str().trim_end_matches('/'),
            self.streaming.as_str().trim_end_matches('/')
        )
    }
}

/// Find a region by dashed or underscored name, case-insensitively.
pub fn by_name(name: &str) -> Option<Region> {
    let wanted = name.trim().to_ascii_lowercase().replace('_', "-");
    REGIONS.iter().copied().find(|r| r.name == wanted)
}

/// Find a region by its domain, case-insensitively.
pub fn by_domain(domain: &str) -> Option<Region> {
    let wanted = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    REGIONS.iter().copied().find(|r| r.domain == wanted)
}

/// Hosts of a known region.
pub fn hosts_for(region: Region) -> Hosts {
    let make = |scheme: &str, sub: &str| {
        Url::parse(&format!("{scheme}://{sub}.{}/", region.domain)).expect("static region table builds valid URLs")
    };
    Hosts {
        api: make("https", "api"),
        login: make("https", "login"),
        streaming: make("wss", "streaming"),
        apps: make("https", "apps"),
        region: Some(region),
    }
}

/// Resolve a region name, domain or API base URL to its hosts.
pub fn resolve(input: &str) -> Result<Hosts, RegionError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(RegionError::Empty);
    }
    if s.contains("://") {
        return resolve_url(s);
    }
    if let Some(r) = by_name(s) {
        return Ok(hosts_for(r));
    }
    // A domain, possibly with a purpose prefix (`api.mypurecloud.ie`, `apps.…`).
    let lower = s.to_ascii_lowercase();
    let bare = ["api.", "login.", "apps.", "streaming."].iter().find_map(|p| lower.strip_prefix(p)).unwrap_or(&lower);
    if let Some(r) = by_domain(bare) {
        return Ok(hosts_for(r));
    }
    Err(RegionError::Unknown { input: s.to_string(), hint: suggestion(s) })
}

fn resolve_url(s: &str) -> Result<Hosts, RegionError> {
    let bad = |reason: &str| RegionError::BadUrl { input: s.to_string(), reason: reason.to_string() };
    let url = Url::parse(s).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    let host = url.host_str().ok_or_else(|| bad("it has no host"))?.to_ascii_lowercase();
    // A known Genesys host gets the canonical hosts of its region.
    for prefix in ["api.", "login.", "apps.", "streaming."] {
        if let Some(domain) = host.strip_prefix(prefix) {
            if let Some(r) = by_domain(domain) {
                return Ok(hosts_for(r));
            }
        }
    }
    // A custom base (emulator, gateway, proxy): keep scheme, host, port and any path
    // prefix; derive login the way the Go SDK does (`//api.` → `//login.`).
    let mut base = url.clone();
    if !base.path().ends_with('/') {
        let p = format!("{}/", base.path());
        base.set_path(&p);
    }
    base.set_query(None);
    base.set_fragment(None);
    let swap = |to: &str| -> Url {
        if let Some(rest) = host.strip_prefix("api.") {
            let mut u = base.clone();
            let new_host = format!("{to}.{rest}");
            if u.set_host(Some(&new_host)).is_ok() {
                return u;
            }
        }
        base.clone()
    };
    let mut streaming = swap("streaming");
    let ws_scheme = if streaming.scheme() == "https" { "wss" } else { "ws" };
    // Url refuses some scheme changes between special schemes; rebuild from text instead.
    let rest = &streaming.as_str()[streaming.scheme().len()..];
    streaming = Url::parse(&format!("{ws_scheme}{rest}")).map_err(|e| bad(&e.to_string()))?;
    Ok(Hosts { api: base.clone(), login: swap("login"), streaming, apps: swap("apps"), region: None })
}

fn suggestion(input: &str) -> String {
    let wanted = input.to_ascii_lowercase().replace('_', "-");
    let best = REGIONS
        .iter()
        .flat_map(|r| [r.name, r.domain])
        .map(|c| (strsim::levenshtein(&wanted, c), c))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, c)) if d <= 3 => format!("; did you mean `{c}`?"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_every_form() {
        let cases: &[(&str, &str, &str)] = &[
            ("us-east-1", "https://api.mypurecloud.com/", "https://login.mypurecloud.com/"),
            ("EU_WEST_1", "https://api.mypurecloud.ie/", "https://login.mypurecloud.ie/"),
            ("me_central_1", "https://api.mec1.pure.cloud/", "https://login.mec1.pure.cloud/"),
            ("mypurecloud.de", "https://api.mypurecloud.de/", "https://login.mypurecloud.de/"),
            ("api.usw2.pure.cloud", "https://api.usw2.pure.cloud/", "https://login.usw2.pure.cloud/"),
            ("https://api.mypurecloud.com.au", "https://api.mypurecloud.com.au/", "https://login.mypurecloud.com.au/"),
            ("https://apps.mypurecloud.jp/directory", "https://api.mypurecloud.jp/", "https://login.mypurecloud.jp/"),
            ("http://127.0.0.1:8089", "http://127.0.0.1:8089/", "http://127.0.0.1:8089/"),
            (
                "https://api.example.test/prefix",
                "https://api.example.test/prefix/",
                "https://login.example.test/prefix/",
            ),
        ];
        for (input, api, login) in cases {
            let h = resolve(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(h.api.as_str(), *api, "{input}");
            assert_eq!(h.login.as_str(), *login, "{input}");
        }
    }

    #[test]
    fn streaming_follows_scheme() {
        assert_eq!(resolve("eu-west-2").unwrap().streaming.as_str(), "wss://streaming.euw2.pure.cloud/");
        assert_eq!(resolve("http://127.0.0.1:9").unwrap().streaming.as_str(), "ws://127.0.0.1:9/");
    }

    #[test]
    fn every_region_round_trips() {
        assert_eq!(REGIONS.len(), 18);
        for r in REGIONS {
            assert_eq!(resolve(r.name).unwrap().region, Some(*r));
            assert_eq!(resolve(r.domain).unwrap().region, Some(*r));
        }
    }

    #[test]
    fn errors_are_helpful() {
        assert_eq!(resolve("  "), Err(RegionError::Empty));
        let e = resolve("us-east-11").unwrap_err().to_string();
        assert!(e.contains("did you mean `us-east-1`"), "{e}");
        assert!(matches!(resolve("ftp://x"), Err(RegionError::BadUrl { .. })));
    }
}
