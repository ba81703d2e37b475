//! Genesys Agent Copilot's own suggestion figures (genesys-api.md §8), to show beside ours:
//! `nDistinctSuggestions` grouped by `engagementType`, `suggestionType` and `queueId`.
//!
//! Short ranges (up to [`CopilotOptions::sync_max_ms`]) use the synchronous aggregates
//! query. Longer ones use the async jobs API with daily granularity and cursor paging. The
//! client already retries a 429 (honouring `Retry-After`) and 5xx answers; what it cannot
//! survive is the process dying or a fault outlasting its retry budget. So after every page
//! the job id, the next cursor and the results so far are written to a small JSON state
//! file (atomically: a temporary file renamed over it). A rerun with the same query and
//! state file continues that job from that cursor instead of starting over; a state file
//! for another query, or a job that is gone, failed or expired, is discarded and a new job
//! is made. The file is removed when the last page is in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::AdoptionError;
use crate::genesys::{
    CopilotAggregateDataContainer, CopilotAggregationQuery, CopilotAsyncAggregationQuery, GenesysClient, GenesysError,
};

/// The metric counted: suggestions, each once per group.
pub const METRIC: &str = "nDistinctSuggestions";
/// The dimensions grouped by.
pub const GROUP_BY: [&str; 3] = ["engagementType", "suggestionType", "queueId"];
const STATE_VERSION: u32 = 1;

/// How to fetch.
#[derive(Debug, Clone)]
pub struct CopilotOptions {
    /// Longest interval (ms) answered by the synchronous query; longer ones use a job.
    pub sync_max_ms: i64,
    /// Data points per results page of a job.
    pub page_size: u32,
    pub poll: Duration,
    pub timeout: Duration,
    /// Where a job's progress is kept for a resumed run; `None` keeps nothing.
    pub state_file: Option<PathBuf>,
}

impl Default for CopilotOptions {
    fn default() -> CopilotOptions {
        CopilotOptions {
            sync_max_ms: 7 * 86_400_000,
            page_size: 100,
            poll: Duration::from_millis(500),
            timeout: Duration::from_secs(600),
            state_file: None,
        }
    }
}

/// What a long fetch is doing, for a progress bar.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    Query,
    JobCreated { job_id: String },
    JobResumed { job_id: String, pages: u32 },
    JobWaiting { job_id: String },
    Page { pages: u32, points: usize },
}

/// One (engagementType, suggestionType, queueId) group and its suggestions over the interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CopilotRow {
    pub engagement_type: String,
    pub suggestion_type: String,
    pub queue_id: String,
    pub suggestions: u64,
}

/// Copilot's figures over one interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CopilotSummary {
    /// The `start/end` interval asked for.
    pub interval: String,
    /// `query` (synchronous) or `job` (async).
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Result pages read (0 for the synchronous query).
    pub pages: u32,
    /// Continued a job from a saved cursor.
    pub resumed: bool,
    pub metric: String,
    pub total: u64,
    pub by_engagement_type: BTreeMap<String, u64>,
    pub by_suggestion_type: BTreeMap<String, u64>,
    pub by_queue: BTreeMap<String, u64>,
    /// Sorted by engagement type, suggestion type, queue.
    pub rows: Vec<CopilotRow>,
}

/// A job's progress as saved between pages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResumeState {
    version: u32,
    interval: String,
    page_size: u32,
    job_id: String,
    cursor: Option<String>,
    pages: u32,
    results: Vec<CopilotAggregateDataContainer>,
}

fn iso(ms: i64) -> Result<String, AdoptionError> {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .ok_or_else(|| AdoptionError::Invalid(format!("{ms} ms is not a representable time")))
}

/// The ISO-8601 `start/end` interval of `[from, to)` (epoch ms).
pub fn interval(from: i64, to: i64) -> Result<String, AdoptionError> {
    if to <= from {
        return Err(AdoptionError::Invalid("the Copilot interval must end after it starts".into()));
    }
    Ok(format!("{}/{}", iso(from)?, iso(to)?))
}

fn query(interval: &str, granularity: Option<&str>) -> CopilotAggregationQuery {
    CopilotAggregationQuery {
        interval: interval.to_string(),
        granularity: granularity.map(str::to_string),
        time_zone: Some("UTC".into()),
        group_by: GROUP_BY.iter().map(|s| s.to_string()).collect(),
        metrics: vec![METRIC.to_string()],
        ..CopilotAggregationQuery::default()
    }
}

/// Sums `METRIC` per group over every data point (a group may span pages).
pub fn summarize(containers: &[CopilotAggregateDataContainer]) -> (u64, BTreeMap<(String, String, String), u64>) {
    let mut groups: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let mut total = 0;
    for c in containers {
        let dim = |d: &str| c.group.get(d).cloned().unwrap_or_else(|| super::metrics::UNKNOWN.to_string());
        let key = (dim(GROUP_BY[0]), dim(GROUP_BY[1]), dim(GROUP_BY[2]));
        for point in &c.data {
            for m in point.metrics.iter().filter(|m| m.metric == METRIC) {
                // `count` carries the n-metrics; a negative one would be a broken answer.
                let n = m.stats.count.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
                *groups.entry(key.clone()).or_default() += n;
                total += n;
            }
        }
    }
    (total, groups)
}

fn summary(
    interval: &str,
    source: &str,
    job_id: Option<String>,
    pages: u32,
    resumed: bool,
    containers: &[CopilotAggregateDataContainer],
) -> CopilotSummary {
    let (total, groups) = summarize(containers);
    let mut s = CopilotSummary {
        interval: interval.to_string(),
        source: source.to_string(),
        job_id,
        pages,
        resumed,
        metric: METRIC.to_string(),
        total,
        by_engagement_type: BTreeMap::new(),
        by_suggestion_type: BTreeMap::new(),
        by_queue: BTreeMap::new(),
        rows: Vec::new(),
    };
    for ((e, t, q), n) in groups {
        *s.by_engagement_type.entry(e.clone()).or_default() += n;
        *s.by_suggestion_type.entry(t.clone()).or_default() += n;
        *s.by_queue.entry(q.clone()).or_default() += n;
        s.rows.push(CopilotRow { engagement_type: e, suggestion_type: t, queue_id: q, suggestions: n });
    }
    s
}

fn state_err(path: &Path, message: impl Into<String>) -> AdoptionError {
    AdoptionError::State { path: path.to_path_buf(), message: message.into() }
}

/// The saved state, if there is one for this very query.
fn load_state(path: &Path, interval: &str, page_size: u32) -> Result<Option<ResumeState>, AdoptionError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(state_err(path, format!("cannot read it ({e})"))),
    };
    match serde_json::from_str::<ResumeState>(&text) {
        Ok(s) if s.version == STATE_VERSION && s.interval == interval && s.page_size == page_size => Ok(Some(s)),
        Ok(_) => {
            tracing::info!(path = %path.display(), "the Copilot resume state is for another query; starting a new job");
            Ok(None)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the Copilot resume state is unreadable; starting a new job");
            Ok(None)
        }
    }
}

fn save_state(path: &Path, s: &ResumeState) -> Result<(), AdoptionError> {
    let body = serde_json::to_vec(s).map_err(|e| state_err(path, format!("cannot encode it ({e})")))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, body).map_err(|e| state_err(path, format!("cannot write {} ({e})", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| state_err(path, format!("cannot replace it ({e})")))
}

/// Copilot's figures over `[from, to)`: the query for short ranges, a resumable job for long ones.
pub async fn fetch(
    client: &GenesysClient,
    from: i64,
    to: i64,
    opts: &CopilotOptions,
    mut progress: impl FnMut(Progress),
) -> Result<CopilotSummary, AdoptionError> {
    let interval = interval(from, to)?;
    if to - from <= opts.sync_max_ms {
        progress(Progress::Query);
        let r = client.copilot_aggregates(&query(&interval, None)).await?;
        return Ok(summary(&interval, "query", None, 0, false, &r.results));
    }
    if opts.page_size == 0 {
        return Err(AdoptionError::Invalid("the Copilot page size must be at least 1".into()));
    }
    let saved = match &opts.state_file {
        Some(p) => load_state(p, &interval, opts.page_size)?,
        None => None,
    };
    // A saved job is continued only if Genesys still has it and it can still be fulfilled.
    let mut resumed = false;
    let mut state = None;
    if let Some(s) = saved {
        match client.copilot_job_status(&s.job_id).await {
            Ok(st) if !st.is_failed() => {
                resumed = true;
                progress(Progress::JobResumed { job_id: s.job_id.clone(), pages: s.pages });
                state = Some(s);
            }
            Ok(st) => {
                tracing::info!(job = %s.job_id, state = %st.state, "the saved Copilot job ended; starting a new one")
            }
            Err(e) if e.status() == Some(404) => {
                tracing::info!(job = %s.job_id, "the saved Copilot job is gone; starting a new one")
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut state = match state {
        Some(s) => s,
        None => {
            let q =
                CopilotAsyncAggregationQuery { query: query(&interval, Some("P1D")), page_size: Some(opts.page_size) };
            let job_id = client.copilot_job_create(&q).await?;
            progress(Progress::JobCreated { job_id: job_id.clone() });
            let s = ResumeState {
                version: STATE_VERSION,
                interval: interval.clone(),
                page_size: opts.page_size,
                job_id,
                cursor: None,
                pages: 0,
                results: Vec::new(),
            };
            if let Some(p) = &opts.state_file {
                save_state(p, &s)?;
            }
            s
        }
    };
    progress(Progress::JobWaiting { job_id: state.job_id.clone() });
    client.copilot_job_wait(&state.job_id, opts.poll, opts.timeout).await?;
    // Pages: the first without a cursor, then each returned cursor until a page has none.
    let done = state.pages > 0 && state.cursor.is_none();
    if !done {
        loop {
            let page = client.copilot_job_results(&state.job_id, state.cursor.as_deref()).await?;
            let next = page.cursor.filter(|c| !c.is_empty());
            if next.is_some() && next == state.cursor {
                return Err(GenesysError::Decode {
                    request: "GET /api/v2/analytics/agentcopilots/aggregates/jobs/{jobId}/results".into(),
                    status: 200,
                    message: "the results cursor did not advance".into(),
                    correlation_id: None,
                }
                .into());
            }
            state.results.extend(page.results);
            state.pages += 1;
            state.cursor = next;
            let points = state.results.iter().map(|c| c.data.len()).sum();
            progress(Progress::Page { pages: state.pages, points });
            if let Some(p) = &opts.state_file {
                save_state(p, &state)?;
            }
            if state.cursor.is_none() {
                break;
            }
        }
    }
    if let Some(p) = &opts.state_file {
        if let Err(e) = std::fs::remove_file(p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(state_err(p, format!("cannot remove it after the last page ({e})")));
            }
        }
    }
    Ok(summary(&interval, "job", Some(state.job_id), state.pages, resumed, &state.results))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genesys::models::{AggregateMetricData, StatisticalResponse, StatisticalSummary};

    fn container(e: &str, t: &str, q: &str, counts: &[i64]) -> CopilotAggregateDataContainer {
        CopilotAggregateDataContainer {
            group: [("engagementType", e), ("suggestionType", t), ("queueId", q)]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            data: counts
                .iter()
                .map(|n| StatisticalResponse {
                    interval: None,
                    metrics: vec![
                        AggregateMetricData {
                            metric: METRIC.into(),
                            qualifier: None,
                            stats: StatisticalSummary { count: Some(*n), ..Default::default() },
                        },
                        AggregateMetricData {
                            metric: "nScriptSuggestions".into(),
                            qualifier: None,
                            stats: StatisticalSummary { count: Some(1000), ..Default::default() },
                        },
                    ],
                    views: vec![],
                })
                .collect(),
        }
    }

    #[test]
    fn groups_split_across_pages_are_summed() {
        let cs = vec![
            container("Opened", "Script", "q1", &[3, 4]),
            container("Opened", "Script", "q1", &[5]),
            container("Dismissed", "CannedResponse", "q2", &[2, -7]),
        ];
        let s = summary("i", "job", Some("j".into()), 2, false, &cs);
        assert_eq!(s.total, 14);
        assert_eq!(s.by_engagement_type, BTreeMap::from([("Dismissed".into(), 2), ("Opened".into(), 12)]));
        assert_eq!(s.by_queue["q1"], 12);
        assert_eq!(s.rows.len(), 2);
        assert_eq!(
            s.rows[1],
            CopilotRow {
                engagement_type: "Opened".into(),
                suggestion_type: "Script".into(),
                queue_id: "q1".into(),
                suggestions: 12
            }
        );
    }

    #[test]
    fn intervals_and_state_files() {
        assert_eq!(interval(0, 86_400_000).unwrap(), "1970-01-01T00:00:00.000Z/1970-01-02T00:00:00.000Z");
        assert!(interval(5, 5).is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        assert_eq!(load_state(&p, "i", 10).unwrap(), None);
        let s = ResumeState {
            version: STATE_VERSION,
            interval: "i".into(),
            page_size: 10,
            job_id: "j".into(),
            cursor: Some("c".into()),
            pages: 3,
            results: vec![container("Opened", "Script", "q1", &[1])],
        };
        save_state(&p, &s).unwrap();
        assert_eq!(load_state(&p, "i", 10).unwrap(), Some(s));
        // Another query, or garbage, is not resumed.
        assert_eq!(load_state(&p, "other", 10).unwrap(), None);
        assert_eq!(load_state(&p, "i", 11).unwrap(), None);
        std::fs::write(&p, "{not json").unwrap();
        assert_eq!(load_state(&p, "i", 10).unwrap(), None);
    }
}
