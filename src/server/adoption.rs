//! Adoption over HTTP (admin keys only): `GET /v1/adoption` (JSON), `GET /v1/adoption/report`
//! (the HTML report body with its SVG charts) and `GET /adoption`, the dashboard page.
//!
//! Query parameters of both API routes: `from`, `to` (a date, a local time or RFC 3339;
//! default the 7 days up to now), `tz` (a UTC offset, default `Z`), `groupBy` (comma list of
//! prompt, rule, queue, agent, day; default `prompt`), `copilot=true` to add Agent Copilot's
//! figures when the service has Genesys. The JSON is [`crate::adoption::AdoptionReport`]
//! (its module documents the shape).
//!
//! The dashboard page itself holds no data and needs no key: it asks for an admin key,
//! keeps it in `sessionStorage` (gone when the tab closes, never in a URL or cookie), and
//! fetches the report body with `Authorization: Bearer`, so the charts are the very SVG the
//! CLI's `--html` report draws.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::{authorize, Role};
use super::error::ApiError;
use super::AppState;
use crate::adoption::copilot::{self, CopilotOptions};
use crate::adoption::{self, parse_instant, parse_tz, AdoptionError, AdoptionQuery, AdoptionReport, GroupBy};

impl From<AdoptionError> for ApiError {
    fn from(e: AdoptionError) -> ApiError {
        let message = e.to_string();
        match e {
            AdoptionError::Invalid(_) => ApiError::bad_request("invalid_query", message),
            AdoptionError::Genesys(_) => ApiError::new(StatusCode::BAD_GATEWAY, "genesys_failed", message),
            AdoptionError::Store(_) | AdoptionError::State { .. } | AdoptionError::Io { .. } => {
                tracing::error!(error = %message, "adoption report failed");
                ApiError {
                    retry_after_ms: Some(1000),
                    ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
                }
            }
        }
    }
}

async fn build(st: &AppState, headers: &HeaderMap, p: &HashMap<String, String>) -> Result<AdoptionReport, ApiError> {
    authorize(&st.inner.keys, headers, Role::Admin)?;
    let svc = st.service();
    let tz = parse_tz(p.get("tz").map(String::as_str).unwrap_or("Z"))?;
    let to = match p.get("to").filter(|s| !s.trim().is_empty()) {
        Some(s) => parse_instant(s, tz)?,
        None => svc.now_ms(),
    };
    let from = match p.get("from").filter(|s| !s.trim().is_empty()) {
        Some(s) => parse_instant(s, tz)?,
        None => to - 7 * 86_400_000,
    };
    let group_by = GroupBy::parse_list(p.get("groupBy").map(String::as_str).unwrap_or("prompt"))?;
    let q = AdoptionQuery::new(from, to, tz, group_by)?;
    let mut report = adoption::compute(svc.store(), &q).await?;
    if p.get("copilot").is_some_and(|v| v == "true") {
        let client = svc.genesys().ok_or_else(|| {
            ApiError::bad_request("invalid_query", "copilot=true needs Genesys configured for the service")
        })?;
        let opts = CopilotOptions { timeout: Duration::from_secs(60), ..CopilotOptions::default() };
        report.copilot = Some(copilot::fetch(client, q.from, q.to, &opts, |_| {}).await?);
    }
    Ok(report)
}

/// `GET /v1/adoption`: the report as JSON.
pub async fn report_json(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<HashMap<String, String>>,
) -> Response {
    match build(&st, &headers, &p).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

fn html_response(body: String) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `GET /v1/adoption/report`: the report body (charts and tables) as an HTML fragment.
pub async fn report_html(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<HashMap<String, String>>,
) -> Response {
    match build(&st, &headers, &p).await {
        Ok(r) => html_response(adoption::report::html_fragment(&r)),
        Err(e) => e.into_response(),
    }
}

/// `GET /adoption`: the dashboard page (no data in it; see the module docs).
pub async fn dashboard() -> Response {
    html_response(format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>gc-assist adoption</title>\
         <style>{}form{{margin-bottom:16px}}label{{margin-right:12px}}#status{{color:#a33}}</style></head><body>\
         {DASHBOARD_BODY}</body></html>",
        adoption::report::CSS
    ))
}

const DASHBOARD_BODY: &str = r#"<form id="f">
<label>Admin API key <input id="key" type="password" autocomplete="off" required></label>
<label>From <input id="from" placeholder="2026-03-01"></label>
<label>To <input id="to" placeholder="now"></label>
<label>UTC offset <input id="tz" value="Z" size="6"></label>
<label>Group by <input id="groupBy" value="prompt,agent"></label>
<button type="submit">Show</button> <button type="button" id="forget">Forget key</button>
</form>
<p id="status"></p>
<div id="report"></div>
<script>
(function () {
  var k = document.getElementById('key');
  k.value = sessionStorage.getItem('gcAssistAdminKey') || '';
  function load() {
    var key = k.value.trim();
    if (!key) { return; }
    sessionStorage.setItem('gcAssistAdminKey', key);
    var q = new URLSearchParams();
    ['from', 'to', 'tz', 'groupBy'].forEach(function (n) {
      var v = document.getElementById(n).value.trim();
      if (v) { q.set(n, v); }
    });
    var status = document.getElementById('status');
    status.textContent = 'loading…';
    fetch('/v1/adoption/report?' + q.toString(), { headers: { 'Authorization': 'Bearer ' + key } })
      .then(function (r) {
        return r.text().then(function (t) {
          if (!r.ok) {
            var m = t;
            try { m = JSON.parse(t).message; } catch (e) {}
            throw new Error(r.status + ': ' + m);
          }
          return t;
        });
      })
      .then(function (html) { document.getElementById('report').innerHTML = html; status.textContent = ''; })
      .catch(function (e) { status.textContent = String(e.message || e); });
  }
  document.getElementById('f').addEventListener('submit', function (ev) { ev.preventDefault(); load(); });
  document.getElementById('forget').addEventListener('click', function () {
    sessionStorage.removeItem('gcAssistAdminKey'); k.value = ''; document.getElementById('report').innerHTML = '';
  });
  if (k.value) { load(); }
})();
</script>"#;
