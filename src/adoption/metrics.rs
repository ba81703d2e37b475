//! The adoption figures as a pure fold over engagement events (CONTRACT.md §6): counts per
//! kind, rates, time-to-click order statistics and "dismissed within 2 s", in total, per
//! day (in a given UTC offset) and per prompt, rule, queue or agent.
//!
//! Conventions (documented in the report and the API):
//! - An event counts in the interval and the day of its own `at`: a prompt shown at 23:59
//!   and clicked at 00:01 adds a `shown` to one day and a `clicked` to the next.
//! - Rates divide by `shown` of the same bucket; with nothing shown a rate is `None` (null),
//!   never 0 or NaN.
//! - Time to click is `at - shown_at` of `clicked` events that carry `shown_at` (negative
//!   differences, from clock skew, are left out). Median and p90 use the nearest-rank method
//!   (`sorted[ceil(p * n) - 1]`), so both are observed values.
//! - "Dismissed within 2 s" counts `dismissed` events with `0 <= at - shown_at <= 2000`.
//! - Rule, queue and agent: each event counts under its own row's values; a missing or
//!   empty one groups under [`UNKNOWN`]. The service stamps the conversation's agent on
//!   every event once the agent is known (panel sign-in or an engagement from the panel), so
//!   events before that, typically a `shown` before the agent opened the panel, count under
//!   the unknown agent. The engagement rollup (`store::rollup`) keeps exactly these rules,
//!   which is what lets it answer without looking at other rows.
//!
//! The accumulator keeps click times as a histogram (ms → count), so partial results merge
//! exactly: the SQL path in `store::read` produces the same [`Acc`]s from GROUP BY rows.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, NaiveDate};
use serde::Serialize;

use super::AdoptionError;
use crate::store::{EngagementKind, EngagementRow};

/// The group key of rows without a queue, agent or rule.
pub const UNKNOWN: &str = "(none)";
/// "Dismissed to clear the screen": within this long of being shown.
pub const QUICK_DISMISS_MS: i64 = crate::store::rollup::QUICK_DISMISS_MS;
const DAY_MS: i64 = 86_400_000;

/// A dimension to group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Prompt,
    Rule,
    Queue,
    Agent,
    Day,
}

impl GroupBy {
    pub const ALL: [GroupBy; 5] = [GroupBy::Prompt, GroupBy::Rule, GroupBy::Queue, GroupBy::Agent, GroupBy::Day];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Prompt => "prompt",
            GroupBy::Rule => "rule",
            GroupBy::Queue => "queue",
            GroupBy::Agent => "agent",
            GroupBy::Day => "day",
        }
    }

    /// A comma-separated list such as `prompt,agent`; duplicates are dropped, order kept.
    pub fn parse_list(s: &str) -> Result<Vec<GroupBy>, AdoptionError> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let g = GroupBy::ALL.into_iter().find(|g| g.as_str().eq_ignore_ascii_case(part)).ok_or_else(|| {
                AdoptionError::Invalid(format!(
                    "cannot group by {part:?}: use one or more of prompt, rule, queue, agent, day (comma-separated)"
                ))
            })?;
            if !out.contains(&g) {
                out.push(g);
            }
        }
        Ok(out)
    }
}

/// What to compute: `from <= at < to` (epoch ms), days in `tz`, these groupings.
#[derive(Debug, Clone, PartialEq)]
pub struct AdoptionQuery {
    pub from: i64,
    pub to: i64,
    pub tz: FixedOffset,
    pub group_by: Vec<GroupBy>,
}

impl AdoptionQuery {
    /// Checks the interval: `0 <= from <= to` (times before 1970 are not supported).
    pub fn new(from: i64, to: i64, tz: FixedOffset, group_by: Vec<GroupBy>) -> Result<AdoptionQuery, AdoptionError> {
        if from < 0 || to < from {
            return Err(AdoptionError::Invalid(format!(
                "the interval must have 0 <= from <= to (epoch ms); got from {from}, to {to}"
            )));
        }
        Ok(AdoptionQuery { from, to, tz, group_by })
    }

    /// The day number (days since 1970-01-01 in `tz`) of an instant.
    pub fn day_of(&self, at: i64) -> i64 {
        (at + i64::from(self.tz.local_minus_utc()) * 1000).div_euclid(DAY_MS)
    }

    pub fn offset_ms(&self) -> i64 {
        i64::from(self.tz.local_minus_utc()) * 1000
    }
}

/// Day number → calendar date.
pub fn day_date(day: i64) -> NaiveDate {
    DateTime::from_timestamp(day.saturating_mul(86_400), 0).map(|t| t.date_naive()).unwrap_or_default()
}

/// Additive partial figures of one bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acc {
    /// Indexed like [`EngagementKind::ALL`].
    pub counts: [u64; 6],
    pub quick_dismiss: u64,
    pub feedback_positive: u64,
    pub feedback_negative: u64,
    /// Time to click (ms) → how many clicks took it.
    pub click_ms: BTreeMap<i64, u64>,
}

pub(crate) fn kind_index(k: EngagementKind) -> usize {
    match k {
        EngagementKind::Shown => 0,
        EngagementKind::Viewed => 1,
        EngagementKind::Clicked => 2,
        EngagementKind::Dismissed => 3,
        EngagementKind::Expired => 4,
        EngagementKind::Feedback => 5,
    }
}

impl Acc {
    /// Adds one event.
    pub fn add(&mut self, kind: EngagementKind, at: i64, shown_at: Option<i64>, rating: Option<i8>) {
        self.counts[kind_index(kind)] += 1;
        let since_shown = shown_at.map(|s| at - s).filter(|d| *d >= 0);
        match kind {
            EngagementKind::Clicked => {
                if let Some(d) = since_shown {
                    *self.click_ms.entry(d).or_default() += 1;
                }
            }
            EngagementKind::Dismissed if since_shown.is_some_and(|d| d <= QUICK_DISMISS_MS) => {
                self.quick_dismiss += 1;
            }
            EngagementKind::Feedback => match rating {
                Some(r) if r > 0 => self.feedback_positive += 1,
                Some(r) if r < 0 => self.feedback_negative += 1,
                _ => {}
            },
            _ => {}
        }
    }

    pub fn merge(&mut self, other: &Acc) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.quick_dismiss += other.quick_dismiss;
        self.feedback_positive += other.feedback_positive;
        self.feedback_negative += other.feedback_negative;
        for (ms, n) in &other.click_ms {
            *self.click_ms.entry(*ms).or_default() += n;
        }
    }

    fn count(&self, k: EngagementKind) -> u64 {
        self.counts[kind_index(k)]
    }

    /// Nearest-rank percentile of the click times (`p` in (0, 1]).
    fn percentile(&self, p: f64) -> Option<i64> {
        let n: u64 = self.click_ms.values().sum();
        if n == 0 {
            return None;
        }
        let rank = ((p * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (ms, c) in &self.click_ms {
            seen += c;
            if seen >= rank {
                return Some(*ms);
            }
        }
        self.click_ms.keys().next_back().copied()
    }

    /// The reported figures of this bucket.
    pub fn figures(&self) -> Figures {
        let shown = self.count(EngagementKind::Shown);
        let rate = |n: u64| if shown == 0 { None } else { Some(n as f64 / shown as f64) };
        let clicked = self.count(EngagementKind::Clicked);
        let dismissed = self.count(EngagementKind::Dismissed);
        let expired = self.count(EngagementKind::Expired);
        Figures {
            shown,
            viewed: self.count(EngagementKind::Viewed),
            clicked,
            dismissed,
            expired,
            feedback: self.count(EngagementKind::Feedback),
            feedback_positive: self.feedback_positive,
            feedback_negative: self.feedback_negative,
            adoption_rate: rate(clicked),
            dismiss_rate: rate(dismissed),
            ignore_rate: rate(expired),
            median_click_ms: self.percentile(0.5),
            p90_click_ms: self.percentile(0.9),
            dismissed_within_2s: self.quick_dismiss,
        }
    }
}

/// The figures of one bucket, as reported (JSON camelCase).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    pub shown: u64,
    pub viewed: u64,
    pub clicked: u64,
    pub dismissed: u64,
    pub expired: u64,
    pub feedback: u64,
    pub feedback_positive: u64,
    pub feedback_negative: u64,
    /// clicked ÷ shown.
    pub adoption_rate: Option<f64>,
    /// dismissed ÷ shown.
    pub dismiss_rate: Option<f64>,
    /// expired ÷ shown (left the screen untouched).
    pub ignore_rate: Option<f64>,
    pub median_click_ms: Option<i64>,
    pub p90_click_ms: Option<i64>,
    #[serde(rename = "dismissedWithin2s")]
    pub dismissed_within_2s: u64,
}

/// The folded accumulators: total, per day, and per requested dimension (key → Acc).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Folded {
    pub total: Acc,
    /// Day number (see [`AdoptionQuery::day_of`]) → Acc.
    pub daily: BTreeMap<i64, Acc>,
    pub groups: BTreeMap<GroupBy, BTreeMap<String, Acc>>,
}

/// The reference fold: feed rows in any order with [`Fold::push`], then [`Fold::finish`].
#[derive(Debug)]
pub struct Fold {
    q: AdoptionQuery,
    out: Folded,
}

/// A group key from an optional id: missing or empty ids group under [`UNKNOWN`].
fn key_or_unknown(v: &Option<String>) -> String {
    v.as_deref().filter(|s| !s.is_empty()).unwrap_or(UNKNOWN).to_string()
}

impl Fold {
    pub fn new(q: AdoptionQuery) -> Fold {
        let mut out = Folded::default();
        for g in &q.group_by {
            out.groups.insert(*g, BTreeMap::new());
        }
        Fold { q, out }
    }

    /// Adds one event; events outside the interval are ignored.
    pub fn push(&mut self, row: EngagementRow) {
        if row.at < self.q.from || row.at >= self.q.to {
            return;
        }
        let (kind, at, shown_at, rating) = (row.kind, row.at, row.shown_at, row.rating);
        self.out.total.add(kind, at, shown_at, rating);
        self.out.daily.entry(self.q.day_of(at)).or_default().add(kind, at, shown_at, rating);
        for (g, map) in self.out.groups.iter_mut() {
            let key = match g {
                GroupBy::Prompt => row.prompt_id.hyphenated().to_string(),
                GroupBy::Rule => key_or_unknown(&row.rule_id),
                GroupBy::Queue => key_or_unknown(&row.queue_id),
                GroupBy::Agent => key_or_unknown(&row.agent_id),
                GroupBy::Day => day_date(self.q.day_of(at)).to_string(),
            };
            map.entry(key).or_default().add(kind, at, shown_at, rating);
        }
    }

    /// The accumulators.
    pub fn finish(self) -> Folded {
        self.out
    }
}

/// Folds an iterator of rows (the reference path).
pub fn fold(q: &AdoptionQuery, rows: impl IntoIterator<Item = EngagementRow>) -> Folded {
    let mut f = Fold::new(q.clone());
    for r in rows {
        f.push(r);
    }
    f.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    const H: i64 = 3_600_000;
    /// 2026-03-02T00:00:00Z.
    const T0: i64 = 1_772_409_600_000;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn row(inj: u128, prompt: u128, kind: EngagementKind, at: i64, shown_at: Option<i64>) -> EngagementRow {
        EngagementRow {
            injection_id: id(inj),
            conversation_id: id(1000 + inj),
            prompt_id: id(prompt),
            rule_id: None,
            queue_id: Some("q1".into()),
            agent_id: Some("a1".into()),
            kind,
            at,
            shown_at,
            rating: None,
        }
    }

    fn utc() -> FixedOffset {
        FixedOffset::east_opt(0).unwrap()
    }

    fn q(group_by: Vec<GroupBy>) -> AdoptionQuery {
        AdoptionQuery::new(T0, T0 + 48 * H, utc(), group_by).unwrap()
    }

    use EngagementKind::*;

    /// Ten prompts shown; hand-computed figures.
    fn fixed_set() -> Vec<EngagementRow> {
        let mut rows = Vec::new();
        let s = T0 + H;
        for i in 0..10u128 {
            rows.push(row(i, if i < 6 { 1 } else { 2 }, Shown, s + i as i64, Some(s + i as i64)));
        }
        // Clicks after 1000, 3000, 2000, 5000 ms (prompt 1) and 4000 ms (prompt 2).
        for (i, d) in [(0u128, 1000), (1, 3000), (2, 2000), (3, 5000), (6, 4000)] {
            rows.push(row(i, if i < 6 { 1 } else { 2 }, Clicked, s + i as i64 + d, Some(s + i as i64)));
        }
        // Dismissed after 500 ms, 2000 ms (both quick) and 2001 ms (not).
        for (i, d) in [(4u128, 500), (7, 2000), (8, 2001)] {
            rows.push(row(i, if i < 6 { 1 } else { 2 }, Dismissed, s + i as i64 + d, Some(s + i as i64)));
        }
        rows.push(row(5, 1, Expired, s + 30_000, Some(s + 5)));
        rows.push(row(9, 2, Expired, s + 30_000, Some(s + 9)));
        for i in 0..4u128 {
            rows.push(row(i, 1, Viewed, s + 1000, Some(s)));
        }
        let mut up = row(0, 1, Feedback, s + 9000, Some(s));
        up.rating = Some(1);
        let mut down = row(1, 1, Feedback, s + 9000, Some(s));
        down.rating = Some(-1);
        rows.push(up);
        rows.push(down);
        rows
    }

    #[test]
    fn hand_computed_totals() {
        let f = fold(&q(vec![GroupBy::Prompt]), fixed_set()).total.figures();
        assert_eq!((f.shown, f.viewed, f.clicked, f.dismissed, f.expired, f.feedback), (10, 4, 5, 3, 2, 2));
        assert_eq!((f.feedback_positive, f.feedback_negative), (1, 1));
        assert_eq!(f.adoption_rate, Some(0.5));
        assert_eq!(f.dismiss_rate, Some(0.3));
        assert_eq!(f.ignore_rate, Some(0.2));
        // Clicks sorted: 1000 2000 3000 4000 5000 → median rank 3, p90 rank ceil(4.5) = 5.
        assert_eq!(f.median_click_ms, Some(3000));
        assert_eq!(f.p90_click_ms, Some(5000));
        assert_eq!(f.dismissed_within_2s, 2);
    }

    #[test]
    fn per_prompt_figures() {
        let out = fold(&q(vec![GroupBy::Prompt]), fixed_set());
        let g = &out.groups[&GroupBy::Prompt];
        let p1 = g[&id(1).to_string()].figures();
        let p2 = g[&id(2).to_string()].figures();
        assert_eq!((p1.shown, p1.clicked, p1.dismissed, p1.expired), (6, 4, 1, 1));
        // Prompt 1 clicks 1000 2000 3000 5000: median rank 2 → 2000; p90 rank ceil(3.6) = 4 → 5000.
        assert_eq!((p1.median_click_ms, p1.p90_click_ms), (Some(2000), Some(5000)));
        assert_eq!((p2.shown, p2.clicked, p2.dismissed, p2.expired), (4, 1, 2, 1));
        assert_eq!(p2.adoption_rate, Some(0.25));
        assert_eq!((p2.median_click_ms, p2.p90_click_ms, p2.dismissed_within_2s), (Some(4000), Some(4000), 1));
    }

    #[test]
    fn empty_interval_has_no_rates() {
        let out = fold(&q(vec![GroupBy::Agent]), Vec::new());
        let f = out.total.figures();
        assert_eq!(f.shown, 0);
        assert_eq!((f.adoption_rate, f.dismiss_rate, f.ignore_rate), (None, None, None));
        assert_eq!((f.median_click_ms, f.p90_click_ms), (None, None));
        assert!(out.daily.is_empty());
        assert!(out.groups[&GroupBy::Agent].is_empty());
        // Rows outside the interval do not count: [from, to).
        let q = AdoptionQuery::new(T0, T0 + H, utc(), vec![]).unwrap();
        let out = fold(&q, vec![row(1, 1, Shown, T0 + H, None), row(2, 1, Shown, T0 - 1, None)]);
        assert_eq!(out.total.figures().shown, 0);
        let out = fold(&q, vec![row(1, 1, Shown, T0, None), row(2, 1, Shown, T0 + H - 1, None)]);
        assert_eq!(out.total.figures().shown, 2);
    }

    #[test]
    fn day_boundaries_follow_the_offset() {
        // 23:30 UTC on 2 March and 00:30 UTC on 3 March.
        let rows = vec![row(1, 1, Shown, T0 + 23 * H + H / 2, None), row(2, 1, Shown, T0 + 24 * H + H / 2, None)];
        let table: [(&str, [(&str, u64); 2]); 3] = [
            ("+00:00", [("2026-03-02", 1), ("2026-03-03", 1)]),
            // +02:00: 01:30 and 02:30 on 3 March.
            ("+02:00", [("2026-03-03", 2), ("", 0)]),
            // −05:00: 18:30 and 19:30 on 2 March.
            ("-05:00", [("2026-03-02", 2), ("", 0)]),
        ];
        for (tz, want) in table {
            let tz = super::super::parse_tz(tz).unwrap();
            let q = AdoptionQuery::new(T0, T0 + 48 * H, tz, vec![GroupBy::Day]).unwrap();
            let out = fold(&q, rows.clone());
            let days = &out.groups[&GroupBy::Day];
            let want: Vec<(String, u64)> =
                want.iter().filter(|(d, _)| !d.is_empty()).map(|(d, n)| (d.to_string(), *n)).collect();
            let got: Vec<(String, u64)> = days.iter().map(|(d, a)| (d.clone(), a.figures().shown)).collect();
            assert_eq!(got, want, "{tz}");
            let daily: Vec<String> = out.daily.keys().map(|d| day_date(*d).to_string()).collect();
            assert_eq!(daily, want.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(), "{tz}");
        }
    }

    #[test]
    fn each_event_counts_under_its_own_agent_and_queue() {
        let s = T0 + H;
        // Shown before the agent was known; viewed and clicked after.
        let mut shown = row(1, 1, Shown, s, Some(s));
        shown.agent_id = None;
        shown.queue_id = None;
        let mut viewed = row(1, 1, Viewed, s + 1000, Some(s));
        viewed.agent_id = Some("agent-7".into());
        let mut clicked = row(1, 1, Clicked, s + 2000, Some(s));
        clicked.agent_id = Some("agent-7".into());
        clicked.queue_id = Some("queue-3".into());
        // An empty id is no id.
        let mut orphan = row(2, 1, Shown, s, Some(s));
        orphan.agent_id = Some(String::new());
        orphan.queue_id = Some(String::new());
        let out = fold(&q(vec![GroupBy::Agent, GroupBy::Queue]), vec![shown, viewed, clicked, orphan]);
        let agents: Vec<(String, u64, u64, u64)> = out.groups[&GroupBy::Agent]
            .iter()
            .map(|(k, a)| (k.clone(), a.figures().shown, a.figures().viewed, a.figures().clicked))
            .collect();
        assert_eq!(agents, vec![(UNKNOWN.into(), 2, 0, 0), ("agent-7".into(), 0, 1, 1)]);
        let queues: Vec<(String, u64)> =
            out.groups[&GroupBy::Queue].iter().map(|(k, a)| (k.clone(), a.figures().shown)).collect();
        assert_eq!(queues, vec![(UNKNOWN.into(), 2), ("q1".into(), 0), ("queue-3".into(), 0)]);
        assert_eq!(out.total.figures().shown, 2);
    }

    #[test]
    fn rules_and_odd_inputs() {
        let s = T0 + H;
        let mut a = row(1, 1, Shown, s, Some(s));
        a.rule_id = Some("refund".into());
        let b = row(2, 1, Shown, s, Some(s));
        // A click before its show (clock skew) counts as a click but has no time to click.
        let c = row(1, 1, Clicked, s - 10, Some(s));
        // A click without shown_at counts too.
        let d = row(2, 1, Clicked, s + 10, None);
        let mut e = row(2, 1, Feedback, s + 10, None);
        e.rating = None;
        let out = fold(&q(vec![GroupBy::Rule]), vec![a, b, c, d, e]);
        let f = out.total.figures();
        assert_eq!((f.clicked, f.median_click_ms, f.feedback, f.feedback_positive), (2, None, 1, 0));
        let rules: Vec<&String> = out.groups[&GroupBy::Rule].keys().collect();
        assert_eq!(rules, vec![UNKNOWN, "refund"]);
    }

    #[test]
    fn merging_is_the_same_as_folding_together() {
        let rows = fixed_set();
        let (a, b) = rows.split_at(7);
        let qq = q(vec![]);
        let mut left = fold(&qq, a.to_vec()).total;
        left.merge(&fold(&qq, b.to_vec()).total);
        assert_eq!(left, fold(&qq, rows).total);
    }

    #[test]
    fn group_by_lists() {
        assert_eq!(GroupBy::parse_list("prompt, Agent,prompt").unwrap(), vec![GroupBy::Prompt, GroupBy::Agent]);
        assert_eq!(GroupBy::parse_list("").unwrap(), vec![]);
        let e = GroupBy::parse_list("prompt,team").unwrap_err().to_string();
        assert!(e.contains("\"team\"") && e.contains("prompt, rule, queue, agent, day"), "{e}");
        assert!(AdoptionQuery::new(5, 4, utc(), vec![]).is_err());
        assert!(AdoptionQuery::new(-1, 4, utc(), vec![]).is_err());
    }
}
