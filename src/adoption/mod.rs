//! Adoption analytics (CONTRACT.md §6): how agents take up our prompts, from the
//! stored engagement events, beside Genesys Agent Copilot's own suggestion figures.
//!
//! - [`metrics`]: the figures as a pure fold (the reference) and their accumulators.
//! - [`copilot`]: Agent Copilot aggregates, by the sync query or, for long ranges, an async
//!   job whose cursor paging resumes after a crash from a small JSON state file.
//! - [`report`]: the report as a table, JSON, CSV, and a self-contained HTML page with
//!   inline SVG charts (no script, no network).
//!
//! [`compute`], what the CLI and the API use, answers from the engagement rollup
//! (`store::rollup`: counts per 15-minute UTC bucket, kept by the writer with the events)
//! for the whole buckets inside the interval, and folds the raw events only for the partial
//! buckets at its two ends. Counts equal the reference fold exactly; median and p90 time to
//! click come from the rollup's log-scale histogram, within 3.2 % ([`CLICK_RELATIVE_ERROR`])
//! of the exact figure, and are exact when the interval holds no whole bucket.
//! [`compute_by_fold`] streams every row through the reference fold; [`compute_by_scan`]
//! is the earlier SQL GROUP BY scan over the raw events (a baseline). Tests hold all three
//! equal.
//!
//! Time zones are fixed UTC offsets (`Z`, `UTC`, `+02:00`, `-0530`): named IANA zones would
//! need a zone database dependency, and an offset states exactly where the day boundaries
//! fall. A report over a daylight-saving change uses one offset for the whole interval.

pub mod copilot;
pub mod metrics;
pub mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use thiserror::Error;

pub use metrics::{AdoptionQuery, Figures, GroupBy};
pub use report::AdoptionReport;

use crate::genesys::GenesysError;
use crate::store::rollup::{self, RollupCell, RollupDim, BUCKET_MS};
use crate::store::{AdoptionDimension, EngagementKind, Store, StoreError};

pub use crate::store::rollup::CLICK_RELATIVE_ERROR;
use metrics::{day_date, kind_index, Acc, Folded};

/// Why an adoption report could not be made.
#[derive(Debug, Error)]
pub enum AdoptionError {
    /// A bad interval, time zone, grouping or option: the message says what to fix.
    #[error("{0}")]
    Invalid(String),
    #[error("reading engagement events: {0}")]
    Store(#[from] StoreError),
    #[error("Agent Copilot analytics: {0}")]
    Genesys(#[from] GenesysError),
    /// The Copilot job's resume state file could not be read or written.
    #[error("the Copilot resume state {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `Z`, `UTC`, `+02:00`, `-05:30`, `+0200` → a fixed offset.
pub fn parse_tz(s: &str) -> Result<FixedOffset, AdoptionError> {
    let t = s.trim();
    let bad = || {
        AdoptionError::Invalid(format!(
            "time zone {s:?} is not a UTC offset: use Z, UTC or ±HH:MM such as +02:00 (named zones are not supported)"
        ))
    };
    if t.eq_ignore_ascii_case("z") || t.eq_ignore_ascii_case("utc") {
        return FixedOffset::east_opt(0).ok_or_else(bad);
    }
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'+') => (1, &t[1..]),
        Some(b'-') => (-1, &t[1..]),
        _ => return Err(bad()),
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if digits.len() != 4
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (rest.contains(':') && (rest.len() != 5 || rest.as_bytes()[2] != b':'))
    {
        return Err(bad());
    }
    let h: i32 = digits[..2].parse().map_err(|_| bad())?;
    let m: i32 = digits[2..].parse().map_err(|_| bad())?;
    if h > 14 || m > 59 {
        return Err(bad());
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60)).ok_or_else(bad)
}

/// An instant: RFC 3339 (`2026-03-01T08:00:00Z`), a local date-time without offset
/// (`2026-03-01T08:00`, read in `tz`), or a date (`2026-03-01`, midnight in `tz`). → epoch ms.
pub fn parse_instant(s: &str, tz: FixedOffset) -> Result<i64, AdoptionError> {
    let t = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d.timestamp_millis());
    }
    let local = NaiveDate::parse_from_str(t, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .or_else(|| NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S").ok())
        .or_else(|| NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M").ok());
    match local.and_then(|l| tz.from_local_datetime(&l).single()) {
        Some(d) => Ok(d.timestamp_millis()),
        None => Err(AdoptionError::Invalid(format!(
            "{s:?} is not a time: use a date (2026-03-01), a local time (2026-03-01T08:00) or RFC 3339 \
             (2026-03-01T08:00:00Z)"
        ))),
    }
}

/// Epoch ms → RFC 3339 in `tz`.
pub fn format_instant(ms: i64, tz: FixedOffset) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|d| d.with_timezone(&tz).to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

fn dimension(g: GroupBy) -> Option<AdoptionDimension> {
    match g {
        GroupBy::Prompt => Some(AdoptionDimension::Prompt),
        GroupBy::Rule => Some(AdoptionDimension::Rule),
        GroupBy::Queue => Some(AdoptionDimension::Queue),
        GroupBy::Agent => Some(AdoptionDimension::Agent),
        GroupBy::Day => None,
    }
}

/// Rebuilds an [`Acc`] contribution from one SQL cell (see `Store::adoption_cells`).
fn add_cell(acc: &mut Acc, kind: EngagementKind, detail: Option<i64>, count: u64) {
    acc.counts[kind_index(kind)] += count;
    match (kind, detail) {
        (EngagementKind::Clicked, Some(ms)) => *acc.click_ms.entry(ms).or_default() += count,
        (EngagementKind::Dismissed, Some(1)) => acc.quick_dismiss += count,
        (EngagementKind::Feedback, Some(r)) if r > 0 => acc.feedback_positive += count,
        (EngagementKind::Feedback, Some(r)) if r < 0 => acc.feedback_negative += count,
        _ => {}
    }
}

/// The accumulators from SQL: one GROUP BY scan per keyed dimension (totals and days come
/// with the first).
pub async fn fold_in_sql(store: &Store, q: &AdoptionQuery) -> Result<Folded, AdoptionError> {
    let mut out = Folded::default();
    let keyed: Vec<GroupBy> = q.group_by.iter().copied().filter(|g| dimension(*g).is_some()).collect();
    let mut scans: Vec<Option<GroupBy>> = keyed.iter().copied().map(Some).collect();
    if scans.is_empty() {
        scans.push(None);
    }
    for (i, g) in scans.iter().enumerate() {
        let cells =
            store.adoption_cells(q.from, q.to, q.offset_ms(), metrics::QUICK_DISMISS_MS, g.and_then(dimension)).await?;
        let mut groups: BTreeMap<String, Acc> = BTreeMap::new();
        for c in cells {
            if i == 0 {
                add_cell(&mut out.total, c.kind, c.detail, c.count);
                add_cell(out.daily.entry(c.day).or_default(), c.kind, c.detail, c.count);
            }
            if g.is_some() {
                let key = c.key.unwrap_or_else(|| metrics::UNKNOWN.to_string());
                add_cell(groups.entry(key).or_default(), c.kind, c.detail, c.count);
            }
        }
        if let Some(g) = g {
            out.groups.insert(*g, groups);
        }
    }
    if q.group_by.contains(&GroupBy::Day) {
        let days = out.daily.iter().map(|(d, a)| (day_date(*d).to_string(), a.clone())).collect();
        out.groups.insert(GroupBy::Day, days);
    }
    Ok(out)
}

/// The accumulators by streaming every row through the reference fold.
pub async fn fold_streamed(store: &Store, q: &AdoptionQuery) -> Result<Folded, AdoptionError> {
    let mut f = metrics::Fold::new(q.clone());
    store.engagement_events(q.from, q.to, |row| f.push(row)).await?;
    Ok(f.finish())
}

/// Adds one rollup row to an accumulator: its click-time slots count at their middle value.
fn add_rollup(acc: &mut Acc, c: &RollupCell) {
    for (a, b) in acc.counts.iter_mut().zip(c.counts.kinds) {
        *a += b;
    }
    acc.quick_dismiss += c.counts.quick_dismissed;
    acc.feedback_positive += c.counts.feedback_up;
    acc.feedback_negative += c.counts.feedback_down;
    for (slot, n) in &c.clicks {
        *acc.click_ms.entry(rollup::slot_value(*slot)).or_default() += n;
    }
}

fn rollup_dim(g: GroupBy) -> Option<RollupDim> {
    match g {
        GroupBy::Prompt => Some(RollupDim::Prompt),
        GroupBy::Rule => Some(RollupDim::Rule),
        GroupBy::Queue => Some(RollupDim::Queue),
        GroupBy::Agent => Some(RollupDim::Agent),
        GroupBy::Day => None,
    }
}

/// The accumulators from the rollup: whole 15-minute buckets inside `[from, to)` from
/// `engagement_rollup`, the partial buckets at the two ends (at most 2 × 15 min of events)
/// folded from the raw rows. An interval without a whole bucket is folded entirely (exact),
/// and so is any interval for an offset that is not a multiple of 15 minutes.
pub async fn fold_from_rollup(store: &Store, q: &AdoptionQuery) -> Result<Folded, AdoptionError> {
    let first = rollup::bucket_of(q.from + BUCKET_MS - 1);
    let last = rollup::bucket_of(q.to);
    // Offsets off the quarter hour (no zone in use has one) split buckets between days.
    if first >= last || q.offset_ms() % BUCKET_MS != 0 {
        return fold_streamed(store, q).await;
    }
    let mut f = metrics::Fold::new(q.clone());
    store.engagement_events(q.from, first, |row| f.push(row)).await?;
    store.engagement_events(last, q.to, |row| f.push(row)).await?;
    let mut out = f.finish();
    let by_day = q.group_by.contains(&GroupBy::Day);
    for (day, c) in store.rollup_by_day(first, last, q.offset_ms()).await? {
        add_rollup(&mut out.total, &c);
        add_rollup(out.daily.entry(day).or_default(), &c);
        if by_day {
            let days = out.groups.entry(GroupBy::Day).or_default();
            add_rollup(days.entry(day_date(day).to_string()).or_default(), &c);
        }
    }
    for g in q.group_by.iter().copied() {
        let Some(dim) = rollup_dim(g) else { continue };
        let cells = store.rollup_by_key(dim, first, last).await?;
        let groups = out.groups.entry(g).or_default();
        for c in &cells {
            let key = if c.key.is_empty() { metrics::UNKNOWN } else { c.key.as_str() };
            match groups.get_mut(key) {
                Some(acc) => add_rollup(acc, c),
                None => add_rollup(groups.entry(key.to_string()).or_default(), c),
            }
        }
    }
    Ok(out)
}

/// Most prompts given their titles in one report (each is one indexed lookup).
const MAX_TITLED_PROMPTS: usize = 200;

/// Puts the prompts' titles beside their ids.
async fn label_prompts(store: &Store, q: &AdoptionQuery, r: &mut AdoptionReport) -> Result<(), AdoptionError> {
    let Some(rows) = r.groups.get_mut(&GroupBy::Prompt) else { return Ok(()) };
    let ids: Vec<String> = rows.iter().take(MAX_TITLED_PROMPTS).map(|row| row.key.clone()).collect();
    let titles: BTreeMap<String, String> = store.prompt_titles(q.from, q.to, &ids).await?.into_iter().collect();
    for row in rows.iter_mut() {
        row.label = titles.get(&row.key).cloned();
    }
    Ok(())
}

/// The adoption report (our prompts only) from the engagement rollup (see the module docs
/// for its precision).
pub async fn compute(store: &Store, q: &AdoptionQuery) -> Result<AdoptionReport, AdoptionError> {
    let mut r = AdoptionReport::new(q, &fold_from_rollup(store, q).await?);
    label_prompts(store, q, &mut r).await?;
    Ok(r)
}

/// The same report from one SQL GROUP BY scan of the raw events per grouping (exact; the
/// baseline the rollup replaced, tens of seconds at 10 M events).
pub async fn compute_by_scan(store: &Store, q: &AdoptionQuery) -> Result<AdoptionReport, AdoptionError> {
    let mut r = AdoptionReport::new(q, &fold_in_sql(store, q).await?);
    label_prompts(store, q, &mut r).await?;
    Ok(r)
}

/// The same report through the reference fold (slower; for checks and benchmarks).
pub async fn compute_by_fold(store: &Store, q: &AdoptionQuery) -> Result<AdoptionReport, AdoptionError> {
    let mut r = AdoptionReport::new(q, &fold_streamed(store, q).await?);
    label_prompts(store, q, &mut r).await?;
    Ok(r)
}

/// The demo's closing lines: the adoption summary of the last day up to `now_ms` (epoch ms),
/// and the HTML report written to `html` (grouped by prompt and agent).
pub async fn demo_summary(store: &Store, html: &std::path::Path, now_ms: i64) -> Result<String, AdoptionError> {
    let tz = FixedOffset::east_opt(0).ok_or_else(|| AdoptionError::Invalid("UTC offset".into()))?;
    let q = AdoptionQuery::new((now_ms - 86_400_000).max(0), now_ms + 1, tz, vec![GroupBy::Prompt, GroupBy::Agent])?;
    let mut r = compute(store, &q).await?;
    r.title = "gc-assist demo: adoption".into();
    std::fs::write(html, report::html(&r)).map_err(|source| AdoptionError::Io { path: html.to_path_buf(), source })?;
    Ok(format!("{}\nHTML report: {}", report::summary_line(&r), html.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_zones() {
        let ok = [("Z", 0), ("utc", 0), ("+02:00", 7200), ("-05:30", -19800), ("+0100", 3600), ("+14:00", 50400)];
        for (s, secs) in ok {
            assert_eq!(parse_tz(s).unwrap().local_minus_utc(), secs, "{s}");
        }
        for s in ["", "Europe/Paris", "+2", "+02:0", "+15:00", "02:00", "+02:60", "+0200:"] {
            let e = parse_tz(s).unwrap_err().to_string();
            assert!(e.contains("±HH:MM"), "{s}: {e}");
        }
    }

    #[test]
    fn instants() {
        let utc = parse_tz("Z").unwrap();
        let plus2 = parse_tz("+02:00").unwrap();
        // 2026-03-01T00:00:00Z.
        let t = 1_772_323_200_000;
        assert_eq!(parse_instant("2026-03-01", utc).unwrap(), t);
        assert_eq!(parse_instant("2026-03-01", plus2).unwrap(), t - 7_200_000);
        assert_eq!(parse_instant("2026-03-01T02:00", plus2).unwrap(), t);
        assert_eq!(parse_instant("2026-03-01T01:00:00+01:00", utc).unwrap(), t);
        assert_eq!(format_instant(t, plus2), "2026-03-01T02:00:00.000+02:00");
        let e = parse_instant("yesterday", utc).unwrap_err().to_string();
        assert!(e.contains("RFC 3339"), "{e}");
    }
}
