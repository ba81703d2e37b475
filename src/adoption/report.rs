//! The adoption report and its renderings: a table for people, JSON and CSV for scripts,
//! and a self-contained HTML page whose charts are inline SVG drawn here (no script, no
//! external file, nothing fetched), so it opens from disk in a browser without a network.
//!
//! JSON shape (also the answer of `GET /v1/adoption`):
//! `{title, from, to, fromMs, toMs, timeZone, groupBy, totals: Figures,
//!   daily: [{key: "YYYY-MM-DD", ...Figures}], groups: {prompt|rule|queue|agent|day: [{key, ...Figures}]},
//!   copilot?: CopilotSummary}` with `Figures` as in [`super::metrics::Figures`]; groups are
//! sorted by `shown`, most first.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::FixedOffset;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::Serialize;

use super::copilot::CopilotSummary;
use super::format_instant;
use super::metrics::{day_date, AdoptionQuery, Figures, Folded, GroupBy};

/// One row of a grouping: its key and figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub key: String,
    /// What people call it: a prompt's title, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(flatten)]
    pub figures: Figures,
}

/// Everything a report shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdoptionReport {
    pub title: String,
    pub from: String,
    pub to: String,
    pub from_ms: i64,
    pub to_ms: i64,
    /// The UTC offset days are cut at, `+00:00` form.
    pub time_zone: String,
    pub group_by: Vec<GroupBy>,
    pub totals: Figures,
    pub daily: Vec<Row>,
    pub groups: BTreeMap<GroupBy, Vec<Row>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copilot: Option<CopilotSummary>,
}

fn tz_label(tz: FixedOffset) -> String {
    let s = tz.local_minus_utc();
    let sign = if s < 0 { '-' } else { '+' };
    let a = s.abs();
    format!("{sign}{:02}:{:02}", a / 3600, (a % 3600) / 60)
}

impl AdoptionReport {
    pub fn new(q: &AdoptionQuery, f: &Folded) -> AdoptionReport {
        let mut groups = BTreeMap::new();
        for (g, map) in &f.groups {
            let mut rows: Vec<Row> =
                map.iter().map(|(k, a)| Row { key: k.clone(), label: None, figures: a.figures() }).collect();
            if *g != GroupBy::Day {
                rows.sort_by(|a, b| b.figures.shown.cmp(&a.figures.shown).then_with(|| a.key.cmp(&b.key)));
            }
            groups.insert(*g, rows);
        }
        AdoptionReport {
            title: "gc-assist adoption".into(),
            from: format_instant(q.from, q.tz),
            to: format_instant(q.to, q.tz),
            from_ms: q.from,
            to_ms: q.to,
            time_zone: tz_label(q.tz),
            group_by: q.group_by.clone(),
            totals: f.total.figures(),
            daily: f
                .daily
                .iter()
                .map(|(d, a)| Row { key: day_date(*d).to_string(), label: None, figures: a.figures() })
                .collect(),
            groups,
            copilot: None,
        }
    }
}

/// Title and key on two lines, or the key alone.
fn name(r: &Row) -> String {
    match &r.label {
        Some(l) => format!("{l}\n{}", r.key),
        None => r.key.clone(),
    }
}

fn pct(r: Option<f64>) -> String {
    r.map(|v| format!("{:.1}%", v * 100.0)).unwrap_or_else(|| "-".into())
}

fn ms(v: Option<i64>) -> String {
    v.map(|m| format!("{:.1} s", m as f64 / 1000.0)).unwrap_or_else(|| "-".into())
}

/// One line: "shown 10, clicked 5 (adoption 50.0%), dismissed 3 (30.0%), …".
pub fn summary_line(r: &AdoptionReport) -> String {
    let t = &r.totals;
    format!(
        "Adoption {} → {}: shown {}, viewed {}, clicked {} (adoption {}), dismissed {} ({}, {} within 2 s), \
         expired {} (ignored {}), median time to click {}, p90 {}",
        r.from,
        r.to,
        t.shown,
        t.viewed,
        t.clicked,
        pct(t.adoption_rate),
        t.dismissed,
        pct(t.dismiss_rate),
        t.dismissed_within_2s,
        t.expired,
        pct(t.ignore_rate),
        ms(t.median_click_ms),
        ms(t.p90_click_ms),
    )
}

const HEADER: [&str; 11] = [
    "shown",
    "viewed",
    "clicked",
    "adoption",
    "dismissed",
    "dismiss",
    "≤2 s",
    "expired",
    "ignore",
    "median click",
    "p90 click",
];

fn cells(f: &Figures) -> Vec<String> {
    vec![
        f.shown.to_string(),
        f.viewed.to_string(),
        f.clicked.to_string(),
        pct(f.adoption_rate),
        f.dismissed.to_string(),
        pct(f.dismiss_rate),
        f.dismissed_within_2s.to_string(),
        f.expired.to_string(),
        pct(f.ignore_rate),
        ms(f.median_click_ms),
        ms(f.p90_click_ms),
    ]
}

/// Tables for a terminal: totals, each grouping, and Copilot's figures when present.
pub fn table(r: &AdoptionReport) -> String {
    let mut out = format!("{}: {} → {} (days at UTC{})\n", r.title, r.from, r.to, r.time_zone);
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(std::iter::once("").chain(HEADER));
    t.add_row(std::iter::once("total".to_string()).chain(cells(&r.totals)));
    let _ = writeln!(out, "{t}");
    for (g, rows) in &r.groups {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED).set_header(std::iter::once(g.as_str()).chain(HEADER));
        for row in rows {
            t.add_row(std::iter::once(name(row)).chain(cells(&row.figures)));
        }
        if rows.is_empty() {
            let _ = writeln!(out, "by {}: no engagement events in the interval", g.as_str());
        } else {
            let _ = writeln!(out, "by {}:\n{t}", g.as_str());
        }
    }
    if let Some(c) = &r.copilot {
        let _ = writeln!(out, "{}", copilot_table(c));
    }
    out
}

fn copilot_table(c: &CopilotSummary) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(["Copilot engagement", "suggestions", "share"]);
    for (k, n) in &c.by_engagement_type {
        let share = if c.total == 0 { None } else { Some(*n as f64 / c.total as f64) };
        t.add_row([k.clone(), n.to_string(), pct(share)]);
    }
    format!(
        "Genesys Agent Copilot ({} over {}, {}{}): {} suggestion engagements\n{t}",
        c.metric,
        c.interval,
        c.source,
        c.job_id.as_deref().map(|j| format!(" {j}, {} page(s)", c.pages)).unwrap_or_default(),
        c.total
    )
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

/// CSV, one header: `section,key,label,…figures…,copilotSuggestions`. Sections: `total`, `day`,
/// each grouping's name, and `copilot` (key `engagementType/suggestionType/queueId`, only
/// the last column filled). Empty cells are undefined figures (nothing shown).
pub fn csv(r: &AdoptionReport) -> String {
    let mut out = String::from(
        "section,key,label,shown,viewed,clicked,dismissed,expired,feedback,feedbackPositive,feedbackNegative,\
         adoptionRate,dismissRate,ignoreRate,medianClickMs,p90ClickMs,dismissedWithin2s,copilotSuggestions\n",
    );
    let mut line = |section: &str, key: &str, label: Option<&str>, f: &Figures| {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},",
            csv_field(section),
            csv_field(key),
            csv_field(label.unwrap_or("")),
            f.shown,
            f.viewed,
            f.clicked,
            f.dismissed,
            f.expired,
            f.feedback,
            f.feedback_positive,
            f.feedback_negative,
            opt(f.adoption_rate),
            opt(f.dismiss_rate),
            opt(f.ignore_rate),
            opt(f.median_click_ms),
            opt(f.p90_click_ms),
            f.dismissed_within_2s
        );
    };
    line("total", "", None, &r.totals);
    for row in &r.daily {
        line("day", &row.key, None, &row.figures);
    }
    for (g, rows) in &r.groups {
        if *g == GroupBy::Day {
            continue;
        }
        for row in rows {
            line(g.as_str(), &row.key, row.label.as_deref(), &row.figures);
        }
    }
    if let Some(c) = &r.copilot {
        for row in &c.rows {
            let key = format!("{}/{}/{}", row.engagement_type, row.suggestion_type, row.queue_id);
            let _ = writeln!(out, "copilot,{}{}{}", csv_field(&key), ",".repeat(16), row.suggestions);
        }
    }
    out
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

const BLUE: &str = "#2f6fb0";
const GREY: &str = "#b8c2cc";
const ORANGE: &str = "#d9822b";

/// Columns over time: shown (grey) with clicked (blue) in front, and the adoption rate as a
/// line on a 0–100 % scale at the right.
fn daily_chart(rows: &[Row]) -> String {
    let (w, h, left, bottom, top) = (760.0, 260.0, 48.0, 40.0, 16.0);
    let n = rows.len().max(1) as f64;
    let plot_w = w - left - 48.0;
    let plot_h = h - bottom - top;
    let max = rows.iter().map(|r| r.figures.shown).max().unwrap_or(0).max(1) as f64;
    let slot = plot_w / n;
    let bar = (slot * 0.7).max(1.0);
    let mut s = format!(
        "<svg class=\"chart\" id=\"chart-daily\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {h}\" \
         width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"Adoption over time\"><title>Adoption over time</title>"
    );
    let _ = write!(
        s,
        "<line x1=\"{left}\" y1=\"{y}\" x2=\"{x2}\" y2=\"{y}\" stroke=\"#555\"/>",
        y = top + plot_h,
        x2 = left + plot_w
    );
    let _ = write!(s, "<text x=\"4\" y=\"{}\" font-size=\"11\">{}</text>", top + 10.0, max as u64);
    let _ = write!(s, "<text x=\"{}\" y=\"{}\" font-size=\"11\">100%</text>", left + plot_w + 6.0, top + 10.0);
    let mut points = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let x = left + slot * i as f64 + (slot - bar) / 2.0;
        let hs = r.figures.shown as f64 / max * plot_h;
        let hc = r.figures.clicked as f64 / max * plot_h;
        let _ = write!(
            s,
            "<rect class=\"bar shown\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{hs:.1}\" fill=\"{GREY}\">\
             <title>{} shown {}</title></rect>",
            top + plot_h - hs,
            esc(&r.key),
            r.figures.shown
        );
        let _ = write!(
            s,
            "<rect class=\"bar clicked\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{hc:.1}\" fill=\"{BLUE}\">\
             <title>{} clicked {}</title></rect>",
            top + plot_h - hc,
            esc(&r.key),
            r.figures.clicked
        );
        if let Some(rate) = r.figures.adoption_rate {
            points.push(format!("{:.1},{:.1}", x + bar / 2.0, top + plot_h - rate * plot_h));
        }
        // A date label needs about 70 px: label every step-th column so they never overlap.
        let step = (70.0 / slot).ceil().max(1.0) as usize;
        if i % step == 0 {
            let _ = write!(
                s,
                "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
                x + bar / 2.0,
                h - bottom + 14.0,
                esc(&r.key)
            );
        }
    }
    if !points.is_empty() {
        let _ = write!(
            s,
            "<polyline class=\"rate\" fill=\"none\" stroke=\"{ORANGE}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
    }
    if rows.is_empty() {
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" font-size=\"13\">no events in the interval</text>",
            left + 10.0,
            top + 40.0
        );
    }
    s.push_str("</svg>");
    s
}

/// Horizontal bars of adoption rate per key (at most `limit` rows, most shown first).
fn rate_bars(id: &str, title: &str, rows: &[Row], limit: usize) -> String {
    let rows = &rows[..rows.len().min(limit)];
    let (w, row_h, label_w) = (760.0, 22.0, 300.0);
    let h = 24.0 + row_h * rows.len().max(1) as f64;
    let plot_w = w - label_w - 120.0;
    let mut s = format!(
        "<svg class=\"chart\" id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" \
         height=\"{h}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>",
        t = esc(title)
    );
    for (i, r) in rows.iter().enumerate() {
        let y = 8.0 + row_h * i as f64;
        let rate = r.figures.adoption_rate.unwrap_or(0.0);
        let label: String = r.label.as_deref().unwrap_or(&r.key).chars().take(40).collect();
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>\
             <rect x=\"{label_w}\" y=\"{y:.1}\" width=\"{plot_w:.1}\" height=\"{:.1}\" fill=\"#eef1f4\"/>\
             <rect class=\"bar\" x=\"{label_w}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{BLUE}\">\
             <title>{}: adoption {} of {} shown</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{} · {} shown</text>",
            label_w - 6.0,
            y + 13.0,
            esc(&label),
            row_h - 6.0,
            rate * plot_w,
            row_h - 6.0,
            esc(&r.key),
            pct(r.figures.adoption_rate),
            r.figures.shown,
            label_w + plot_w + 6.0,
            y + 13.0,
            pct(r.figures.adoption_rate),
            r.figures.shown
        );
    }
    if rows.is_empty() {
        let _ = write!(s, "<text x=\"10\" y=\"22\" font-size=\"13\">no events in the interval</text>");
    }
    s.push_str("</svg>");
    s
}

/// Ours beside Copilot's: shares of engagement outcomes as two stacked bars.
fn side_by_side_chart(r: &AdoptionReport, c: &CopilotSummary) -> String {
    let t = &r.totals;
    let ours: Vec<(String, u64)> = vec![
        ("clicked".into(), t.clicked),
        ("dismissed".into(), t.dismissed),
        ("expired".into(), t.expired),
        ("no outcome".into(), t.shown.saturating_sub(t.clicked + t.dismissed + t.expired)),
    ];
    let theirs: Vec<(String, u64)> = c.by_engagement_type.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let palette = [BLUE, ORANGE, GREY, "#6a9f58", "#8e6bb0", "#c4525e"];
    let (w, h) = (760.0, 120.0);
    let mut s = format!(
        "<svg class=\"chart\" id=\"chart-copilot\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {h}\" \
         width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"Our prompts beside Copilot suggestions\">\
         <title>Our prompts beside Copilot suggestions</title>"
    );
    for (row, (label, parts)) in [("our prompts", &ours), ("Copilot", &theirs)].iter().enumerate() {
        let y = 10.0 + row as f64 * 50.0;
        let total: u64 = parts.iter().map(|(_, n)| n).sum();
        let _ = write!(s, "<text x=\"110\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"end\">{label}</text>", y + 18.0);
        let mut x = 120.0;
        for (i, (k, n)) in parts.iter().enumerate() {
            if total == 0 || *n == 0 {
                continue;
            }
            let width = *n as f64 / total as f64 * 620.0;
            let _ = write!(
                s,
                "<rect class=\"bar\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"28\" fill=\"{}\">\
                 <title>{}: {} ({})</title></rect>",
                palette[i % palette.len()],
                esc(k),
                n,
                pct(Some(*n as f64 / total as f64))
            );
            let text = format!("{k} {}", pct(Some(*n as f64 / total as f64)));
            if width > text.chars().count() as f64 * 6.5 + 8.0 {
                let _ = write!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#fff\">{}</text>",
                    x + 4.0,
                    y + 18.0,
                    esc(&text)
                );
            }
            x += width;
        }
    }
    s.push_str("</svg>");
    s
}

fn figures_table(first: &str, rows: &[Row]) -> String {
    let mut s = format!("<table><thead><tr><th>{}</th>", esc(first));
    for h in HEADER {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr></thead><tbody>");
    for r in rows {
        match &r.label {
            Some(l) => {
                let _ = write!(s, "<tr><td>{}<br><small>{}</small></td>", esc(l), esc(&r.key));
            }
            None => {
                let _ = write!(s, "<tr><td>{}</td>", esc(&r.key));
            }
        }
        for c in cells(&r.figures) {
            let _ = write!(s, "<td>{}</td>", esc(&c));
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

/// The report body (charts and tables) without `<html>`: the dashboard inserts this.
pub fn html_fragment(r: &AdoptionReport) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<section class=\"adoption\"><h1>{}</h1><p class=\"interval\">{} → {} (days cut at UTC{})</p><p class=\"summary\">{}</p>",
        esc(&r.title),
        esc(&r.from),
        esc(&r.to),
        esc(&r.time_zone),
        esc(&summary_line(r))
    );
    let _ = write!(
        s,
        "<h2>Adoption over time</h2><p class=\"legend\">grey: shown · blue: clicked · orange line: adoption rate (right scale 0–100 %)</p>{}",
        daily_chart(&r.daily)
    );
    for (g, title) in [(GroupBy::Prompt, "Adoption per prompt"), (GroupBy::Agent, "Adoption per agent")] {
        if let Some(rows) = r.groups.get(&g) {
            let _ = write!(s, "<h2>{title}</h2>{}", rate_bars(&format!("chart-{}", g.as_str()), title, rows, 25));
        }
    }
    if let Some(c) = &r.copilot {
        let _ = write!(
            s,
            "<h2>Our prompts beside Genesys Agent Copilot</h2><p>Copilot: {} suggestion engagements ({} over {}). \
             Ours: {} shown, {} clicked.</p>{}",
            c.total,
            esc(&c.metric),
            esc(&c.interval),
            r.totals.shown,
            r.totals.clicked,
            side_by_side_chart(r, c)
        );
        s.push_str("<table><thead><tr><th>Copilot engagement</th><th>suggestions</th></tr></thead><tbody>");
        for (k, n) in &c.by_engagement_type {
            let _ = write!(s, "<tr><td>{}</td><td>{n}</td></tr>", esc(k));
        }
        s.push_str("</tbody></table>");
    }
    s.push_str("<h2>Totals and days</h2>");
    let total = [Row { key: "total".into(), label: None, figures: r.totals.clone() }];
    s.push_str(&figures_table("", &total));
    s.push_str(&figures_table("day", &r.daily));
    for (g, rows) in &r.groups {
        if *g != GroupBy::Day {
            let _ = write!(s, "<h2>By {}</h2>{}", g.as_str(), figures_table(g.as_str(), rows));
        }
    }
    s.push_str("</section>");
    s
}

/// Shared styling of the report and the dashboard.
pub const CSS: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#222}\
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccd;padding:3px 8px;font-size:13px;text-align:right}\
td:first-child,th:first-child{text-align:left}svg.chart{display:block;margin:8px 0 16px;max-width:100%;height:auto}\
.summary{font-weight:600}.legend{color:#555;font-size:12px}";

/// A complete page: no script, no external resource.
pub fn html(r: &AdoptionReport) -> String {
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{CSS}</style></head>\
         <body>{}</body></html>\n",
        esc(&r.title),
        html_fragment(r)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adoption::metrics::{fold, AdoptionQuery};
    use crate::store::{EngagementKind, EngagementRow};
    use uuid::Uuid;

    fn report() -> AdoptionReport {
        let tz = FixedOffset::east_opt(0).unwrap();
        let t0 = 1_772_409_600_000;
        let q = AdoptionQuery::new(t0, t0 + 86_400_000, tz, vec![GroupBy::Prompt, GroupBy::Agent]).unwrap();
        let mk = |kind, at, agent: &str| EngagementRow {
            injection_id: Uuid::from_u128(1),
            conversation_id: Uuid::from_u128(2),
            prompt_id: Uuid::from_u128(3),
            rule_id: None,
            queue_id: None,
            agent_id: Some(agent.into()),
            kind,
            at,
            shown_at: Some(t0 + 10),
            rating: None,
        };
        let rows = vec![mk(EngagementKind::Shown, t0 + 10, "a<b>"), mk(EngagementKind::Clicked, t0 + 1510, "a<b>")];
        AdoptionReport::new(&q, &fold(&q, rows))
    }

    #[test]
    fn csv_has_a_line_per_bucket() {
        let c = csv(&report());
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(lines.len(), 1 + 1 + 1 + 1 + 1, "{c}");
        assert!(lines[1].starts_with("total,,,1,0,1,0,0,0,0,0,1,0,0,1500,1500,0,"), "{c}");
        assert!(lines.iter().all(|l| l.split(',').count() == 18), "{c}");
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
    }

    #[test]
    fn html_is_self_contained_and_escaped() {
        let h = html(&report());
        assert!(
            h.contains("id=\"chart-daily\"") && h.contains("id=\"chart-prompt\"") && h.contains("id=\"chart-agent\"")
        );
        assert!(h.contains("a&lt;b&gt;") && !h.contains("a<b>"));
        for banned in ["<script", "http://", "https://", "src=", "@import"] {
            let without_ns = h.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
            assert!(!without_ns.contains(banned), "{banned}");
        }
        let t = table(&report());
        assert!(t.contains("100.0%") && t.contains("1.5 s"), "{t}");
    }
}
