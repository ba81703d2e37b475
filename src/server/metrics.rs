//! `GET /metrics`: Prometheus text exposition, written by hand from the service's counters,
//! the store's outbox figures and the Genesys client's counters, behind an API key (any role;
//! give Prometheus a `metrics` key). The counters live in each `Service`, not in a
//! process-global recorder, because one process often runs several services (tests, the
//! demo's emulator beside the service) and their figures must not mix.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::auth::{authorize, Role};
use super::AppState;
use crate::injection::service::Histogram;
use crate::store::InjectionStatus;

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let (buckets, sum, count) = h.snapshot();
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (le, n) in buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}");
}

/// Renders every metric.
pub async fn render(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&st.inner.keys, &headers, Role::Metrics) {
        return e.into_response();
    }
    let svc = st.service();
    let mut out = String::new();
    let stats = svc.stats();
    let _ = writeln!(
        out,
        "# HELP gc_assist_injection_transitions_total Injection state changes committed, by new status.\n\
         # TYPE gc_assist_injection_transitions_total counter"
    );
    {
        let t = stats.transitions.lock().unwrap_or_else(|p| p.into_inner());
        for s in InjectionStatus::ALL {
            let n = t.get(s.as_str()).copied().unwrap_or(0);
            let _ = writeln!(out, "gc_assist_injection_transitions_total{{status=\"{s}\"}} {n}");
        }
    }
    {
        let _ = writeln!(
            out,
            "# HELP gc_assist_rule_decisions_total Live trigger rule decisions, by outcome (shadow = would have fired).
\
             # TYPE gc_assist_rule_decisions_total counter"
        );
        let t = stats.rule_decisions.lock().unwrap_or_else(|p| p.into_inner());
        for outcome in ["fired", "shadow", "suppressed_cooldown", "suppressed_cap", "expired"] {
            let n = t.get(outcome).copied().unwrap_or(0);
            let _ = writeln!(out, "gc_assist_rule_decisions_total{{outcome=\"{outcome}\"}} {n}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP gc_assist_live_conversations Conversations the live trigger runtime follows (agent connected, not ended).\n\
         # TYPE gc_assist_live_conversations gauge\ngc_assist_live_conversations {}",
        stats.live_conversations.load(std::sync::atomic::Ordering::Relaxed)
    );
    histogram(
        &mut out,
        "gc_assist_trigger_latency_seconds",
        "Live triggers: the triggering notification received to the fired prompt admitted.",
        &stats.trigger_latency,
    );
    let live = svc.live_counts();
    let _ = writeln!(out, "# HELP gc_assist_injections Live injections, by status.\n# TYPE gc_assist_injections gauge");
    for s in InjectionStatus::ALL.into_iter().filter(|s| s.is_live()) {
        let _ = writeln!(out, "gc_assist_injections{{status=\"{s}\"}} {}", live.get(&s).copied().unwrap_or(0));
    }
    histogram(
        &mut out,
        "gc_assist_admit_latency_seconds",
        "Request received to injection committed.",
        &stats.admit_latency,
    );
    histogram(
        &mut out,
        "gc_assist_delivery_latency_seconds",
        "How late a prompt was shown after its delayMs elapsed.",
        &stats.delivery_latency,
    );
    let _ = writeln!(
        out,
        "# HELP gc_assist_queue_depth Prompts waiting for a display slot.\n# TYPE gc_assist_queue_depth gauge\ngc_assist_queue_depth {}",
        svc.queue_depth()
    );
    let _ = writeln!(
        out,
        "# HELP gc_assist_store_writes_in_flight Store writes waiting for the database.\n# TYPE gc_assist_store_writes_in_flight gauge\ngc_assist_store_writes_in_flight {}",
        svc.writes_in_flight()
    );
    let _ = writeln!(
        out,
        "# HELP gc_assist_channel_failures_total Participant-data writes that failed after retries.\n# TYPE gc_assist_channel_failures_total counter\ngc_assist_channel_failures_total {}",
        stats.channel_failures.load(std::sync::atomic::Ordering::Relaxed)
    );
    if let Ok(o) = svc.store().outbox_stats(svc.now_ms()).await {
        let age = o.oldest_pending_age_ms.unwrap_or(0) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "# HELP gc_assist_outbox_pending Webhook messages waiting for delivery.\n# TYPE gc_assist_outbox_pending gauge\ngc_assist_outbox_pending {}\n\
             # HELP gc_assist_outbox_oldest_pending_age_seconds Age of the oldest pending webhook message.\n# TYPE gc_assist_outbox_oldest_pending_age_seconds gauge\ngc_assist_outbox_oldest_pending_age_seconds {age}\n\
             # HELP gc_assist_outbox_dead Dead-lettered webhook messages.\n# TYPE gc_assist_outbox_dead gauge\ngc_assist_outbox_dead {}",
            o.pending, o.dead
        );
    }
    if let Some(g) = svc.genesys() {
        let s = g.stats();
        let _ = writeln!(
            out,
            "# HELP gc_assist_genesys_429_total 429 answers from the Genesys API.\n# TYPE gc_assist_genesys_429_total counter\ngc_assist_genesys_429_total {}\n\
             # HELP gc_assist_genesys_token_refreshes_total OAuth tokens obtained.\n# TYPE gc_assist_genesys_token_refreshes_total counter\ngc_assist_genesys_token_refreshes_total {}\n\
             # HELP gc_assist_genesys_requests_total Genesys API attempts.\n# TYPE gc_assist_genesys_requests_total counter\ngc_assist_genesys_requests_total {}",
            s.responses_429, s.token_refreshes, s.requests
        );
    }
    let mut r = out.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    r
}
