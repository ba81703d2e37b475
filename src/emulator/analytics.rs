//! Agent Copilot analytics (genesys-api.md §8): the aggregates query and its async jobs.
//!
//! The numbers are invented but plausible and fully deterministic: each (time bucket,
//! dimension values, metric) cell is drawn from a hash of those inputs, scaled by a
//! business-hours volume curve and by fixed shares per dimension value (e.g. 35 % of
//! suggestions are opened). The same query therefore always gives the same answer, and
//! the core ([`plan`], [`compute`]) is pure so it is table-tested without a server.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use chrono::{DateTime, Datelike, Months, SecondsFormat, Timelike, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::auth::stable_uuid;
use super::calls::Catalog;
use super::error::ApiError;
use super::gateway::JsonBody;
use super::state::iso;
use super::state::{lock, State};

/// Metrics of `AgentCopilotAggregationQuery`.
pub const METRICS: &[&str] = &[
    "nCannedResponseSuggestions",
    "nDistinctConversations",
    "nDistinctSuggestions",
    "nKnowledgeAnswerSuggestions",
    "nKnowledgeArticleSuggestions",
    "nKnowledgeSearchSuggestions",
    "nScriptSuggestions",
];

/// `groupBy` dimensions.
pub const DIMENSIONS: &[&str] = &[
    "agentAssistantId",
    "cannedResponseId",
    "cannedResponseLibraryId",
    "chunkCount",
    "conversationId",
    "engagementType",
    "externalContactId",
    "feedbackRating",
    "hasAnswerHighlight",
    "hasGeneratedAnswer",
    "knowledgeBaseDocumentId",
    "knowledgeBaseDocumentVersionId",
    "knowledgeSettingId",
    "mediaType",
    "messageId",
    "queueId",
    "scriptId",
    "scriptPageId",
    "searchId",
    "state",
    "suggestionId",
    "suggestionType",
    "triggerType",
    "userId",
    "utteranceId",
];

/// Granularities the emulator buckets by.
pub const GRANULARITIES: &[&str] = &["PT15M", "PT1H", "P1D", "P7D", "P1M"];

/// Longest interval a query may cover.
pub const MAX_INTERVAL_DAYS: i64 = 366;
/// Most dimension-value combinations one query may expand to.
pub const MAX_COMBINATIONS: usize = 20_000;
/// Default and largest page of an async job's results (data points per page).
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

/// The request body (sync and async; `pageSize` is for jobs).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AggregationQuery {
    pub interval: String,
    pub granularity: Option<String>,
    pub time_zone: Option<String>,
    #[serde(default)]
    pub group_by: Vec<String>,
    pub filter: Option<Filter>,
    pub metrics: Vec<String>,
    /// Accepted and type-checked; no Agent Copilot dimension here is multivalued.
    #[allow(dead_code)]
    pub flatten_multivalued_dimensions: Option<bool>,
    pub views: Option<Vec<Value>>,
    pub alternate_time_dimension: Option<String>,
    pub query_type: Option<String>,
    pub sort_metric: Option<SortMetric>,
    pub limit: Option<u32>,
    pub page_size: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Filter {
    #[serde(rename = "type")]
    pub kind: String,
    pub clauses: Option<Vec<Clause>>,
    pub predicates: Option<Vec<Predicate>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Clause {
    #[serde(rename = "type")]
    pub kind: String,
    pub predicates: Vec<Predicate>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Predicate {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub dimension: Option<String>,
    pub operator: Option<String>,
    pub value: Option<String>,
    pub range: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SortMetric {
    pub name: String,
    pub function: Option<String>,
}

/// Bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Minutes(i64),
    Month,
    /// No granularity: one bucket for the whole interval.
    Whole,
}

#[derive(Debug, Clone, PartialEq)]
enum Pred {
    Matches(String, String),
    Exists(String),
    NotExists(String),
}

#[derive(Debug, Clone, PartialEq)]
struct FilterPlan {
    all: bool,
    predicates: Vec<Pred>,
    clauses: Vec<(bool, Vec<Pred>)>,
}

/// A validated query.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub granularity: Granularity,
    pub group_by: Vec<String>,
    pub metrics: Vec<String>,
    filter: Option<FilterPlan>,
    /// topN/bottomN: (metric, descending, limit).
    top: Option<(String, bool, usize)>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(400, "invalid.value", message)
}

fn parse_instant(s: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(s.trim()).map(|t| t.with_timezone(&Utc)).map_err(|e| {
        ApiError::new(
            400,
            "invalid.date",
            format!("`{s}` in interval is not an ISO-8601 date-time ({e}); use e.g. 2025-03-01T00:00:00.000Z"),
        )
    })
}

fn parse_pred(p: &Predicate, where_: &str) -> Result<Pred, ApiError> {
    match p.kind.as_deref() {
        None | Some("dimension") => {}
        Some(other) => {
            return Err(invalid(format!(
                "{where_}: predicate type `{other}` is not supported by the emulator; use `dimension` predicates"
            )))
        }
    }
    let Some(dim) = p.dimension.clone() else {
        return Err(ApiError::bad_request(format!("{where_}: a predicate needs a `dimension`")));
    };
    if dim == "knowledgeSettingId" || !DIMENSIONS.contains(&dim.as_str()) {
        return Err(invalid(format!("{where_}: `{dim}` is not a filter dimension of Agent Copilot aggregates")));
    }
    if p.range.is_some() {
        return Err(invalid(format!(
            "{where_}: `range` applies to metric predicates; dimension `{dim}` takes `value`"
        )));
    }
    match p.operator.as_deref().unwrap_or("matches") {
        "matches" => match &p.value {
            Some(v) => Ok(Pred::Matches(dim, v.clone())),
            None => Err(ApiError::bad_request(format!("{where_}: operator `matches` needs a `value`"))),
        },
        "exists" => Ok(Pred::Exists(dim)),
        "notExists" => Ok(Pred::NotExists(dim)),
        other => Err(invalid(format!("{where_}: operator `{other}` must be matches, exists or notExists"))),
    }
}

fn and_or(kind: &str, where_: &str) -> Result<bool, ApiError> {
    match kind {
        "and" => Ok(true),
        "or" => Ok(false),
        other => Err(invalid(format!("{where_}.type must be `and` or `or`, not `{other}`"))),
    }
}

/// Validate a query into a [`Plan`], with a 400 naming the first problem.
pub fn plan(q: &AggregationQuery) -> Result<Plan, ApiError> {
    let Some((a, b)) = q.interval.split_once('/') else {
        return Err(ApiError::new(
            400,
            "invalid.date",
            format!("interval `{}` must be `start/end` in ISO-8601", q.interval),
        ));
    };
    let (start, end) = (parse_instant(a)?, parse_instant(b)?);
    if start >= end {
        return Err(ApiError::new(400, "invalid.date", "interval start must be before its end"));
    }
    if end - start > chrono::Duration::days(MAX_INTERVAL_DAYS) {
        return Err(invalid(format!("interval is longer than {MAX_INTERVAL_DAYS} days; split the query")));
    }
    let granularity = match q.granularity.as_deref() {
        None => Granularity::Whole,
        Some("PT15M") => Granularity::Minutes(15),
        Some("PT1H") => Granularity::Minutes(60),
        Some("P1D") => Granularity::Minutes(24 * 60),
        Some("P7D") => Granularity::Minutes(7 * 24 * 60),
        Some("P1M") => Granularity::Month,
        Some(other) => {
            return Err(invalid(format!(
                "granularity `{other}` is not supported; use one of {}",
                GRANULARITIES.join(", ")
            )))
        }
    };
    if let Some(tz) = q.time_zone.as_deref() {
        if !matches!(tz, "UTC" | "Etc/UTC" | "GMT" | "Etc/GMT" | "Z") {
            return Err(invalid(format!(
                "timeZone `{tz}`: the emulator buckets in UTC only; omit timeZone or use UTC"
            )));
        }
    }
    if q.metrics.is_empty() {
        return Err(ApiError::bad_request(format!("metrics is required; use some of {}", METRICS.join(", "))));
    }
    for m in &q.metrics {
        if !METRICS.contains(&m.as_str()) {
            return Err(invalid(format!("`{m}` is not an Agent Copilot metric; use one of {}", METRICS.join(", "))));
        }
    }
    for d in &q.group_by {
        if !DIMENSIONS.contains(&d.as_str()) {
            return Err(invalid(format!("`{d}` is not a groupBy dimension of Agent Copilot aggregates")));
        }
    }
    let mut group_by: Vec<String> = Vec::new();
    for d in &q.group_by {
        if !group_by.contains(d) {
            group_by.push(d.clone());
        }
    }
    let filter = match &q.filter {
        None => None,
        Some(f) => {
            let all = and_or(&f.kind, "filter")?;
            let predicates = f
                .predicates
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, p)| parse_pred(p, &format!("filter.predicates[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            let mut clauses = Vec::new();
            for (i, c) in f.clauses.iter().flatten().enumerate() {
                let where_ = format!("filter.clauses[{i}]");
                let kind = and_or(&c.kind, &where_)?;
                if c.predicates.is_empty() {
                    return Err(ApiError::bad_request(format!("{where_}.predicates must not be empty")));
                }
                let preds = c
                    .predicates
                    .iter()
                    .enumerate()
                    .map(|(j, p)| parse_pred(p, &format!("{where_}.predicates[{j}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                clauses.push((kind, preds));
            }
            if predicates.is_empty() && clauses.is_empty() {
                return Err(ApiError::bad_request("filter needs `predicates` or `clauses`"));
            }
            Some(FilterPlan { all, predicates, clauses })
        }
    };
    if let Some(alt) = q.alternate_time_dimension.as_deref() {
        if alt != "eventTime" {
            return Err(invalid(format!("alternateTimeDimension must be `eventTime`, not `{alt}`")));
        }
    }
    let top = match q.query_type.as_deref() {
        None | Some("groupBy") => None,
        Some(kind @ ("topN" | "bottomN")) => {
            let Some(sort) = &q.sort_metric else {
                return Err(ApiError::bad_request(format!("queryType {kind} needs sortMetric")));
            };
            if !METRICS.contains(&sort.name.as_str()) {
                return Err(invalid(format!("sortMetric.name `{}` is not an Agent Copilot metric", sort.name)));
            }
            if let Some(f) = sort.function.as_deref() {
                if !matches!(f, "average" | "count" | "max" | "min" | "sum") {
                    return Err(invalid(format!("sortMetric.function `{f}` must be average, count, max, min or sum")));
                }
            }
            let limit = q.limit.unwrap_or(10);
            if limit == 0 {
                return Err(invalid("limit must be at least 1"));
            }
            Some((sort.name.clone(), kind == "topN", limit as usize))
        }
        Some(other) => return Err(invalid(format!("queryType must be groupBy, topN or bottomN, not `{other}`"))),
    };
    if let Some(views) = &q.views {
        for (i, v) in views.iter().enumerate() {
            let target = v.get("target").and_then(Value::as_str).unwrap_or_default();
            if !METRICS.contains(&target) {
                return Err(invalid(format!("views[{i}].target `{target}` is not an Agent Copilot metric")));
            }
        }
    }
    Ok(Plan { start, end, granularity, group_by, metrics: q.metrics.clone(), filter, top })
}

/// The time buckets of a plan.
pub fn buckets(p: &Plan) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut out = Vec::new();
    let mut t = p.start;
    while t < p.end {
        let next = match p.granularity {
            Granularity::Whole => p.end,
            Granularity::Minutes(m) => t + chrono::Duration::minutes(m),
            Granularity::Month => t.checked_add_months(Months::new(1)).unwrap_or(p.end),
        };
        let next = next.min(p.end);
        out.push((t, next));
        t = next;
    }
    out
}

/// The values a dimension takes and each value's share of the volume.
#[derive(Debug, Clone, Default)]
pub struct Universe {
    values: HashMap<String, Vec<(String, f64)>>,
}

impl Universe {
    /// Dimension values for an organization with these queues, agents and conversations.
    pub fn new(catalog: &Catalog, conversation_ids: &[String]) -> Universe {
        let fixed = |pairs: &[(&str, f64)]| pairs.iter().map(|(v, w)| (v.to_string(), *w)).collect::<Vec<_>>();
        let weighted = |ids: Vec<String>, dim: &str| {
            ids.into_iter()
                .map(|id| {
                    let w = 0.5 + unit(hash(&[dim, &id]));
                    (id, w)
                })
                .collect::<Vec<_>>()
        };
        let synthetic = |dim: &str, n: usize| (0..n).map(|i| stable_uuid(&format!("{dim}-{i}"))).collect::<Vec<_>>();
        let mut values = HashMap::new();
        for dim in DIMENSIONS {
            let list = match *dim {
                "queueId" => weighted(catalog.queues.iter().map(|q| q.id.clone()).collect(), dim),
                "userId" if !catalog.agents.is_empty() => {
                    weighted(catalog.agents.iter().map(|a| a.user_id.clone()).collect(), dim)
                }
                "conversationId" if !conversation_ids.is_empty() => {
                    weighted(conversation_ids.iter().take(200).cloned().collect(), dim)
                }
                "agentAssistantId" => vec![(catalog.assistant_id.clone(), 1.0)],
                "engagementType" => fixed(&[("Opened", 0.35), ("Copied", 0.25), ("Dismissed", 0.3), ("Feedback", 0.1)]),
                "state" => fixed(&[
                    ("Suggested", 0.35),
                    ("Accepted", 0.3),
                    ("Dismissed", 0.25),
                    ("Failed", 0.03),
                    ("Rated", 0.07),
                ]),
                "suggestionType" => fixed(&[
                    ("KnowledgeArticle", 0.4),
                    ("SuggestedKnowledgeAnswer", 0.2),
                    ("KnowledgeSearch", 0.15),
                    ("CannedResponse", 0.17),
                    ("Script", 0.08),
                ]),
                "triggerType" => fixed(&[
                    ("Intent", 0.55),
                    ("ConversationStart", 0.2),
                    ("Fallback", 0.15),
                    ("ConversationTransfer", 0.05),
                    ("ConversationEnd", 0.05),
                ]),
                "mediaType" => fixed(&[("voice", 0.8), ("message", 0.2)]),
                "feedbackRating" => fixed(&[("Positive", 0.72), ("Negative", 0.28)]),
                "hasAnswerHighlight" | "hasGeneratedAnswer" => fixed(&[("true", 0.4), ("false", 0.6)]),
                "chunkCount" => fixed(&[("1", 0.45), ("2", 0.3), ("3", 0.15), ("4", 0.1)]),
                _ => weighted(synthetic(dim, 4), dim),
            };
            let total: f64 = list.iter().map(|(_, w)| w).sum();
            let list = list.into_iter().map(|(v, w)| (v, if total > 0.0 { w / total } else { 0.0 })).collect();
            values.insert(dim.to_string(), list);
        }
        Universe { values }
    }

    fn of(&self, dim: &str) -> &[(String, f64)] {
        self.values.get(dim).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// FNV-1a over the parts (with separators), finished with splitmix64.
fn hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0x1f)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A hash as a number in [0, 1).
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Conversations with Copilot activity per hour at time `t` (UTC).
fn hourly_volume(t: DateTime<Utc>) -> f64 {
    let weekend = t.weekday().number_from_monday() >= 6;
    let h = t.hour();
    match (weekend, h) {
        (false, 8..=17) => 40.0,
        (false, 6..=7) | (false, 18..=20) => 12.0,
        (false, _) => 2.0,
        (true, 9..=16) => 10.0,
        (true, _) => 1.0,
    }
}

/// Expected conversations in [a, b): the hourly curve integrated hour by hour.
fn volume(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    let mut total = 0.0;
    let mut t = a;
    while t < b {
        let hour_start =
            t.with_minute(0).and_then(|x| x.with_second(0)).and_then(|x| x.with_nanosecond(0)).unwrap_or(t);
        let next = (hour_start + chrono::Duration::hours(1)).min(b);
        let frac = (next - t).num_milliseconds() as f64 / 3_600_000.0;
        total += hourly_volume(t) * frac;
        t = next;
    }
    total
}

/// Suggestions of each kind per conversation with Copilot activity.
const KIND_RATES: &[(&str, f64)] = &[
    ("nKnowledgeArticleSuggestions", 0.9),
    ("nKnowledgeAnswerSuggestions", 0.35),
    ("nKnowledgeSearchSuggestions", 0.25),
    ("nCannedResponseSuggestions", 0.5),
    ("nScriptSuggestions", 0.2),
];

/// A count with expectation ≈ `lambda`, drawn deterministically from `seed`.
fn draw(lambda: f64, seed: u64) -> u64 {
    let noise = 0.75 + 0.5 * unit(seed);
    let jitter = unit(seed.rotate_left(29) ^ 0x5851_f42d_4c95_7f2d);
    (lambda * noise + jitter).floor().max(0.0) as u64
}

/// One result container: the group (dimension → value) and its non-empty buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    pub group: BTreeMap<String, String>,
    /// (interval, [(metric, count)]) for buckets with at least one non-zero metric.
    pub data: Vec<(String, Vec<(String, u64)>)>,
}

fn eval(pred: &Pred, combo: &HashMap<&str, &str>) -> bool {
    match pred {
        Pred::Matches(d, v) => combo.get(d.as_str()).is_some_and(|x| x == v),
        Pred::Exists(d) => combo.contains_key(d.as_str()),
        Pred::NotExists(d) => !combo.contains_key(d.as_str()),
    }
}

fn passes(f: &FilterPlan, combo: &HashMap<&str, &str>) -> bool {
    let mut results = f.predicates.iter().map(|p| eval(p, combo)).collect::<Vec<_>>();
    for (all, preds) in &f.clauses {
        let r = if *all { preds.iter().all(|p| eval(p, combo)) } else { preds.iter().any(|p| eval(p, combo)) };
        results.push(r);
    }
    if f.all {
        results.iter().all(|r| *r)
    } else {
        results.iter().any(|r| *r)
    }
}

fn filter_dims(f: &FilterPlan) -> Vec<String> {
    let mut out = Vec::new();
    for p in f.predicates.iter().chain(f.clauses.iter().flat_map(|(_, ps)| ps.iter())) {
        let d = match p {
            Pred::Matches(d, _) | Pred::Exists(d) | Pred::NotExists(d) => d,
        };
        if !out.contains(d) {
            out.push(d.clone());
        }
    }
    out
}

/// Run a plan: deterministic containers, sorted by group, empty buckets and groups omitted.
pub fn compute(p: &Plan, u: &Universe) -> Result<Vec<Container>, ApiError> {
    // Every dimension the query mentions is expanded into its values.
    let mut dims: Vec<String> = p.group_by.clone();
    if let Some(f) = &p.filter {
        for d in filter_dims(f) {
            if !dims.contains(&d) {
                dims.push(d);
            }
        }
    }
    let mut total: usize = 1;
    for d in &dims {
        total = total.saturating_mul(u.of(d).len().max(1));
    }
    if total > MAX_COMBINATIONS {
        return Err(invalid(format!(
            "groupBy and filter dimensions expand to {total} combinations (limit {MAX_COMBINATIONS}); group by fewer dimensions or filter"
        )));
    }
    let buckets = buckets(p);
    let volumes: Vec<f64> = buckets.iter().map(|(a, b)| volume(*a, *b)).collect();
    let labels: Vec<String> = buckets
        .iter()
        .map(|(a, b)| {
            format!(
                "{}/{}",
                a.to_rfc3339_opts(SecondsFormat::Millis, true),
                b.to_rfc3339_opts(SecondsFormat::Millis, true)
            )
        })
        .collect();
    let starts: Vec<String> = buckets.iter().map(|(a, _)| a.timestamp().to_string()).collect();
    // group key → bucket → metric → count
    let mut acc: BTreeMap<Vec<String>, BTreeMap<usize, BTreeMap<&str, u64>>> = BTreeMap::new();
    let mut index = vec![0usize; dims.len()];
    for _ in 0..total {
        let mut combo: HashMap<&str, &str> = HashMap::new();
        let mut share = 1.0;
        let mut key_parts: Vec<&str> = Vec::new();
        for (i, d) in dims.iter().enumerate() {
            if let Some((v, s)) = u.of(d).get(index[i]) {
                combo.insert(d.as_str(), v.as_str());
                share *= s;
                key_parts.push(d);
                key_parts.push(v);
            }
        }
        // Advance the odometer for the next combination.
        for (i, d) in dims.iter().enumerate() {
            index[i] += 1;
            if index[i] < u.of(d).len() {
                break;
            }
            index[i] = 0;
        }
        if p.filter.as_ref().is_some_and(|f| !passes(f, &combo)) {
            continue;
        }
        let group: Vec<String> =
            p.group_by.iter().map(|d| combo.get(d.as_str()).copied().unwrap_or("").to_string()).collect();
        for (b, vol) in volumes.iter().enumerate() {
            let lambda = vol * share;
            let mut parts = key_parts.clone();
            parts.push(&starts[b]);
            let cell = hash(&parts);
            let conversations = draw(lambda, hash(&[&cell.to_string(), "nDistinctConversations"]));
            let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
            let mut distinct = 0;
            for (m, rate) in KIND_RATES {
                let n = draw(lambda * rate, hash(&[&cell.to_string(), m]));
                distinct += n;
                counts.insert(m, n);
            }
            counts.insert("nDistinctSuggestions", distinct);
            counts.insert("nDistinctConversations", conversations);
            let slot = acc.entry(group.clone()).or_default().entry(b).or_default();
            for m in &p.metrics {
                if let Some((name, n)) = counts.get_key_value(m.as_str()) {
                    *slot.entry(name).or_default() += n;
                }
            }
        }
    }
    let mut out = Vec::new();
    for (key, per_bucket) in acc {
        let mut data = Vec::new();
        for (b, counts) in per_bucket {
            let metrics: Vec<(String, u64)> = p
                .metrics
                .iter()
                .filter_map(|m| counts.get(m.as_str()).filter(|n| **n > 0).map(|n| (m.clone(), *n)))
                .collect();
            if !metrics.is_empty() {
                data.push((labels[b].clone(), metrics));
            }
        }
        if !data.is_empty() {
            let group = p.group_by.iter().cloned().zip(key).collect();
            out.push(Container { group, data });
        }
    }
    if let Some((metric, descending, limit)) = &p.top {
        let total_of = |c: &Container| -> u64 {
            c.data.iter().flat_map(|(_, ms)| ms.iter()).filter(|(m, _)| m == metric).map(|(_, n)| n).sum()
        };
        out.sort_by(|a, b| {
            let (x, y) = (total_of(a), total_of(b));
            if *descending {
                y.cmp(&x)
            } else {
                x.cmp(&y)
            }
        });
        out.truncate(*limit);
    }
    Ok(out)
}

fn data_json(interval: &str, metrics: &[(String, u64)]) -> Value {
    let metrics: Vec<Value> = metrics.iter().map(|(m, n)| json!({"metric": m, "stats": {"count": n}})).collect();
    json!({"interval": interval, "metrics": metrics})
}

fn container_json(group: &BTreeMap<String, String>, data: Vec<Value>) -> Value {
    let mut m = Map::new();
    if !group.is_empty() {
        m.insert("group".into(), json!(group));
    }
    m.insert("data".into(), Value::Array(data));
    Value::Object(m)
}

/// `AgentCopilotAggregateQueryResponse`.
pub fn response_json(containers: &[Container]) -> Value {
    let results: Vec<Value> = containers
        .iter()
        .map(|c| container_json(&c.group, c.data.iter().map(|(i, ms)| data_json(i, ms)).collect()))
        .collect();
    json!({"results": results})
}

fn universe(state: &State) -> Universe {
    let ids = lock(&state.conversations).ids();
    Universe::new(&state.catalog, &ids)
}

/// `POST /api/v2/analytics/agentcopilots/aggregates/query`.
pub async fn query(
    AxState(state): AxState<Arc<State>>,
    JsonBody(q): JsonBody<AggregationQuery>,
) -> Result<Json<Value>, ApiError> {
    let p = plan(&q)?;
    let containers = compute(&p, &universe(&state))?;
    Ok(Json(response_json(&containers)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobState {
    Queued,
    Fulfilled,
    Cancelled,
    Expired,
}

impl JobState {
    fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "QUEUED",
            JobState::Fulfilled => "FULFILLED",
            JobState::Cancelled => "CANCELLED",
            JobState::Expired => "EXPIRED",
        }
    }
}

/// How long a job stays queued, and how many status polls it takes at most.
const JOB_RUN_TIME: Duration = Duration::from_millis(200);
const JOB_POLLS: u32 = 2;
/// Jobs kept; the oldest are forgotten beyond this.
const MAX_JOBS: usize = 200;

#[derive(Debug)]
struct Job {
    submitted: DateTime<Utc>,
    created: Instant,
    completed: Option<DateTime<Utc>>,
    polls: u32,
    state: JobState,
    /// (group, one data point) in result order; pages cut this list.
    points: Vec<(BTreeMap<String, String>, Value)>,
    page_size: usize,
}

impl Job {
    fn expires(&self) -> DateTime<Utc> {
        self.submitted + chrono::Duration::days(1)
    }

    /// Move the job along: fulfilled after `JOB_RUN_TIME` or `JOB_POLLS` polls.
    fn advance(&mut self, poll: bool) {
        if poll {
            self.polls += 1;
        }
        if self.state == JobState::Queued && (self.created.elapsed() >= JOB_RUN_TIME || self.polls >= JOB_POLLS) {
            self.state = JobState::Fulfilled;
            self.completed = Some(Utc::now());
        }
        if matches!(self.state, JobState::Queued | JobState::Fulfilled) && Utc::now() >= self.expires() {
            self.state = JobState::Expired;
        }
    }
}

/// Every async job.
#[derive(Debug, Default)]
pub struct Jobs {
    by_id: HashMap<String, Job>,
}

/// `POST /api/v2/analytics/agentcopilots/aggregates/jobs` → 202 `{jobId}`.
pub async fn create_job(
    AxState(state): AxState<Arc<State>>,
    JsonBody(q): JsonBody<AggregationQuery>,
) -> Result<Response, ApiError> {
    let p = plan(&q)?;
    let page_size = match q.page_size {
        None => DEFAULT_PAGE_SIZE,
        Some(n) if n >= 1 && n as usize <= MAX_PAGE_SIZE => n as usize,
        Some(n) => return Err(invalid(format!("pageSize {n} must be between 1 and {MAX_PAGE_SIZE}"))),
    };
    let containers = compute(&p, &universe(&state))?;
    let points = containers
        .into_iter()
        .flat_map(|c| {
            let group = c.group;
            c.data.into_iter().map(move |(i, ms)| (group.clone(), data_json(&i, &ms)))
        })
        .collect();
    let id = uuid::Uuid::new_v4().to_string();
    let job = Job {
        submitted: Utc::now(),
        created: Instant::now(),
        completed: None,
        polls: 0,
        state: JobState::Queued,
        points,
        page_size,
    };
    {
        let mut jobs = lock(&state.jobs);
        if jobs.by_id.len() >= MAX_JOBS {
            if let Some(oldest) = jobs.by_id.iter().min_by_key(|(_, j)| j.created).map(|(k, _)| k.clone()) {
                jobs.by_id.remove(&oldest);
            }
        }
        jobs.by_id.insert(id.clone(), job);
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"jobId": id}))).into_response())
}

fn job_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Analytics job {id} was not found."))
}

/// `GET .../jobs/{jobId}` → `AsyncQueryStatus`.
pub async fn job_status(AxState(state): AxState<Arc<State>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let mut jobs = lock(&state.jobs);
    let job = jobs.by_id.get_mut(&id).ok_or_else(|| job_not_found(&id))?;
    job.advance(true);
    let mut m = Map::new();
    m.insert("state".into(), json!(job.state.as_str()));
    m.insert("expirationDate".into(), json!(iso(job.expires())));
    m.insert("submissionDate".into(), json!(iso(job.submitted)));
    if let Some(done) = job.completed {
        m.insert("completionDate".into(), json!(iso(done)));
    }
    Ok(Json(Value::Object(m)))
}

/// `DELETE .../jobs/{jobId}`: cancel.
pub async fn cancel_job(AxState(state): AxState<Arc<State>>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let mut jobs = lock(&state.jobs);
    let job = jobs.by_id.get_mut(&id).ok_or_else(|| job_not_found(&id))?;
    job.state = JobState::Cancelled;
    job.points.clear();
    Ok(StatusCode::NO_CONTENT)
}

fn encode_cursor(job: &str, offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{job}:{offset}"))
}

fn decode_cursor(job: &str, cursor: &str) -> Option<usize> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor.trim()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (j, off) = text.rsplit_once(':')?;
    if j != job {
        return None;
    }
    off.parse().ok()
}

/// `GET .../jobs/{jobId}/results?cursor=&pageSize=`.
pub async fn job_results(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let mut jobs = lock(&state.jobs);
    let job = jobs.by_id.get_mut(&id).ok_or_else(|| job_not_found(&id))?;
    job.advance(false);
    if job.state != JobState::Fulfilled {
        return Err(ApiError::bad_request(format!(
            "Results are available once the job is FULFILLED; job {id} is {}.",
            job.state.as_str()
        )));
    }
    let page_size = match q.get("pageSize") {
        None => job.page_size,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            _ => return Err(invalid(format!("pageSize `{s}` must be a number between 1 and {MAX_PAGE_SIZE}"))),
        },
    };
    let offset = match q.get("cursor").filter(|c| !c.is_empty()) {
        None => 0,
        Some(c) => decode_cursor(&id, c).filter(|o| *o <= job.points.len()).ok_or_else(|| {
            ApiError::bad_request("The cursor is not valid for this job; use the cursor of the previous page.")
        })?,
    };
    let end = (offset + page_size).min(job.points.len());
    let mut results: Vec<Value> = Vec::new();
    let mut current: Option<(&BTreeMap<String, String>, Vec<Value>)> = None;
    for (group, point) in &job.points[offset..end] {
        match &mut current {
            Some((g, data)) if *g == group => data.push(point.clone()),
            _ => {
                if let Some((g, data)) = current.take() {
                    results.push(container_json(g, data));
                }
                current = Some((group, vec![point.clone()]));
            }
        }
    }
    if let Some((g, data)) = current {
        results.push(container_json(g, data));
    }
    let mut body = Map::new();
    body.insert("results".into(), Value::Array(results));
    if end < job.points.len() {
        body.insert("cursor".into(), json!(encode_cursor(&id, end)));
    }
    Ok(Json(Value::Object(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(v: Value) -> AggregationQuery {
        serde_json::from_value(v).expect("query parses")
    }

    fn run(v: Value) -> Result<Vec<Container>, ApiError> {
        let u = Universe::new(&Catalog::default(), &[]);
        compute(&plan(&q(v))?, &u)
    }

    #[test]
    fn validation_table() {
        let base = json!({"interval": "2025-03-01T00:00:00.000Z/2025-03-08T00:00:00.000Z", "metrics": ["nDistinctSuggestions"]});
        let cases: Vec<(&str, Value, Option<&str>)> = vec![
            ("ok", json!({}), None),
            ("bad metric", json!({"metrics": ["nBogus"]}), Some("invalid.value")),
            ("no metrics", json!({"metrics": []}), Some("bad.request")),
            ("bad dimension", json!({"groupBy": ["colour"]}), Some("invalid.value")),
            ("bad granularity", json!({"granularity": "PT7M"}), Some("invalid.value")),
            ("bad interval", json!({"interval": "2025-03-01"}), Some("invalid.date")),
            (
                "reversed interval",
                json!({"interval": "2025-03-08T00:00:00Z/2025-03-01T00:00:00Z"}),
                Some("invalid.date"),
            ),
            ("too long", json!({"interval": "2024-01-01T00:00:00Z/2025-03-01T00:00:00Z"}), Some("invalid.value")),
            ("tz", json!({"timeZone": "Europe/Paris"}), Some("invalid.value")),
            (
                "filter dim",
                json!({"filter": {"type": "and", "predicates": [{"dimension": "knowledgeSettingId", "value": "x"}]}}),
                Some("invalid.value"),
            ),
            (
                "filter type",
                json!({"filter": {"type": "xor", "predicates": [{"dimension": "queueId", "value": "x"}]}}),
                Some("invalid.value"),
            ),
            (
                "matches needs value",
                json!({"filter": {"type": "and", "predicates": [{"dimension": "queueId"}]}}),
                Some("bad.request"),
            ),
            ("topN needs sort", json!({"queryType": "topN"}), Some("bad.request")),
            ("each granularity", json!({"granularity": "P1M"}), None),
        ];
        for (name, patch, want) in cases {
            let mut body = base.clone();
            for (k, v) in patch.as_object().unwrap() {
                body[k] = v.clone();
            }
            let got = plan(&q(body)).err().map(|e| e.code);
            assert_eq!(got.as_deref(), want, "{name}");
        }
    }

    #[test]
    fn buckets_follow_the_granularity() {
        let mk = |g: Option<&str>, iv: &str| {
            let mut body = json!({"interval": iv, "metrics": ["nDistinctSuggestions"]});
            if let Some(g) = g {
                body["granularity"] = json!(g);
            }
            buckets(&plan(&q(body)).unwrap()).len()
        };
        let week = "2025-03-01T00:00:00.000Z/2025-03-08T00:00:00.000Z";
        assert_eq!(mk(None, week), 1);
        assert_eq!(mk(Some("P1D"), week), 7);
        assert_eq!(mk(Some("PT1H"), week), 168);
        assert_eq!(mk(Some("PT15M"), week), 672);
        assert_eq!(mk(Some("P7D"), week), 1);
        assert_eq!(mk(Some("P1M"), "2025-01-15T00:00:00Z/2025-04-01T00:00:00Z"), 3);
    }

    #[test]
    fn results_are_deterministic_and_shaped() {
        let body = json!({"interval": "2025-03-03T00:00:00.000Z/2025-03-05T00:00:00.000Z", "granularity": "P1D",
                          "groupBy": ["engagementType"], "metrics": ["nDistinctSuggestions", "nKnowledgeArticleSuggestions"]});
        let a = run(body.clone()).unwrap();
        let b = run(body).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 4, "one container per engagement type");
        for c in &a {
            assert_eq!(c.data.len(), 2);
            for (_, ms) in &c.data {
                let get = |m: &str| ms.iter().find(|(x, _)| x == m).map(|(_, n)| *n).unwrap_or(0);
                assert!(get("nDistinctSuggestions") >= get("nKnowledgeArticleSuggestions"));
            }
        }
        let json = response_json(&a);
        assert_eq!(json["results"][0]["data"][0]["interval"], "2025-03-03T00:00:00.000Z/2025-03-04T00:00:00.000Z");
        assert!(json["results"][0]["data"][0]["metrics"][0]["stats"]["count"].as_u64().unwrap() > 0);
    }

    #[test]
    fn weekdays_are_busier_than_weekends() {
        let day = |d: &str| {
            let iv = format!("{d}T00:00:00Z/{d}T23:59:59Z");
            let r = run(json!({"interval": iv, "metrics": ["nDistinctConversations"]})).unwrap();
            r.first().map(|c| c.data[0].1[0].1).unwrap_or(0)
        };
        assert!(day("2025-03-04") > 2 * day("2025-03-08"));
    }

    #[test]
    fn filters_and_empty_results() {
        let none =
            run(json!({"interval": "2025-03-03T00:00:00Z/2025-03-04T00:00:00Z", "metrics": ["nDistinctSuggestions"],
            "filter": {"type": "and", "predicates": [{"dimension": "queueId", "value": "no-such-queue"}]}}))
            .unwrap();
        assert!(none.is_empty());
        assert_eq!(response_json(&none), json!({"results": []}));
        let one = run(json!({"interval": "2025-03-03T00:00:00Z/2025-03-04T00:00:00Z", "metrics": ["nDistinctSuggestions"],
            "groupBy": ["mediaType"],
            "filter": {"type": "or", "clauses": [{"type": "and", "predicates": [{"dimension": "mediaType", "value": "voice"}]}]}}))
        .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].group.get("mediaType").map(String::as_str), Some("voice"));
    }

    #[test]
    fn top_n_limits_and_sorts() {
        let r =
            run(json!({"interval": "2025-03-03T00:00:00Z/2025-03-10T00:00:00Z", "metrics": ["nDistinctSuggestions"],
            "groupBy": ["state"], "queryType": "topN", "sortMetric": {"name": "nDistinctSuggestions"}, "limit": 2}))
            .unwrap();
        assert_eq!(r.len(), 2);
        let total = |c: &Container| c.data.iter().map(|(_, ms)| ms[0].1).sum::<u64>();
        let all =
            run(json!({"interval": "2025-03-03T00:00:00Z/2025-03-10T00:00:00Z", "metrics": ["nDistinctSuggestions"],
            "groupBy": ["state"]}))
            .unwrap();
        let best = all.iter().map(total).max().unwrap();
        assert_eq!(total(&r[0]), best);
        assert!(total(&r[0]) >= total(&r[1]));
    }

    #[test]
    fn cursors_round_trip() {
        let c = encode_cursor("job-1", 40);
        assert_eq!(decode_cursor("job-1", &c), Some(40));
        assert_eq!(decode_cursor("job-2", &c), None);
        assert_eq!(decode_cursor("job-1", "%%%"), None);
    }
}
