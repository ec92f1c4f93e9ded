//! The lake health report as one self-contained HTML page: no script, no network, no font
//! files. Per dataset a heat map of its partitions (one cell each, coloured by health, its
//! figures in the cell's title, days as rows for time layouts), the totals, the worst
//! partitions with their reasons, and a hot dataset's Postgres backlog.

use std::fmt::Write;

use chrono::{TimeZone, Utc};

use crate::model::report::{DatasetHealth, Health, LakeReport, PartitionHealth, Totals};
use crate::support::units::human_bytes;

/// Rows of the worst-partitions table per dataset.
const WORST_ROWS: usize = 50;

const STYLE: &str = "
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#1b1f24}
h1{font-size:22px}h2{font-size:18px;margin-top:32px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}
.map{display:flex;flex-direction:column;gap:2px;margin:8px 0}
.row{display:flex;gap:2px;align-items:center;flex-wrap:wrap}
.label{width:96px;font-size:11px;color:#57606a}
.cell{display:inline-block;width:14px;height:14px;border-radius:2px}
.good{background:#2da44e}.warn{background:#d4a72c}.bad{background:#cf222e}
.gap{background:#fff;border:1px dashed #8c959f;box-sizing:border-box}
.legend span{margin-right:12px;font-size:12px}
.num{text-align:right}
";

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn time(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

/// The figures of a partition, for its cell's title.
fn cell_title(p: &PartitionHealth) -> String {
    format!(
        "{} — {}: {}; {} file(s), {}, {} row(s), {} small, {} fragmented row group(s), {} late",
        p.partition,
        p.health.as_str(),
        p.reasons.join("; "),
        p.files,
        human_bytes(p.bytes),
        p.rows,
        p.small_files,
        p.fragmented_row_groups,
        p.late_files
    )
}

fn cell(p: &PartitionHealth) -> String {
    format!(
        "<span class=\"cell {}\" data-partition=\"{}\" title=\"{}\"></span>",
        p.health.as_str(),
        escape(&p.partition),
        escape(&cell_title(p))
    )
}

fn heat_map(out: &mut String, ds: &DatasetHealth) {
    let mut cells: Vec<&PartitionHealth> = ds.partitions.iter().collect();
    cells.sort_by(|a, b| {
        a.start_ms
            .cmp(&b.start_ms)
            .then_with(|| a.partition.cmp(&b.partition))
    });
    out.push_str("<div class=\"map\">");
    let mut current: Option<String> = None;
    for p in cells {
        // Time layouts: one row per day.
        let day = p.start_ms.map(|ms| time(ms)[..10].to_string());
        if current.is_none() || (day.is_some() && day != current) {
            if current.is_some() {
                out.push_str("</div>");
            }
            let label = day.clone().unwrap_or_else(|| "partitions".into());
            let _ = write!(
                out,
                "<div class=\"row\"><span class=\"label\">{}</span>",
                escape(&label)
            );
            current = Some(day.unwrap_or_default());
        }
        out.push_str(&cell(p));
    }
    if current.is_some() {
        out.push_str("</div>");
    }
    out.push_str("</div>");
}

fn totals_table(out: &mut String, t: &Totals) {
    let rows = [
        ("partitions", t.partitions.to_string()),
        (
            "good / warn / bad",
            format!("{} / {} / {}", t.good, t.warn, t.bad),
        ),
        ("gaps", t.gaps.to_string()),
        ("files", t.files.to_string()),
        ("bytes", human_bytes(t.bytes)),
        ("rows", t.rows.to_string()),
        ("small files", t.small_files.to_string()),
        ("fragmented row groups", t.fragmented_row_groups.to_string()),
        ("corrupt files", t.corrupt_files.to_string()),
        ("quarantined files", t.quarantined_files.to_string()),
        ("late files", t.late_files.to_string()),
        ("schema variants", t.schema_variants.to_string()),
        ("Postgres backlog rows", t.backlog_rows.to_string()),
    ];
    out.push_str("<table class=\"totals\">");
    for (name, value) in rows {
        let _ = write!(
            out,
            "<tr><th>{name}</th><td class=\"num\">{}</td></tr>",
            escape(&value)
        );
    }
    out.push_str("</table>");
}

fn worst_table(out: &mut String, ds: &DatasetHealth) {
    let worst: Vec<&PartitionHealth> = ds
        .partitions
        .iter()
        .filter(|p| p.health != Health::Good)
        .take(WORST_ROWS)
        .collect();
    if worst.is_empty() {
        out.push_str("<p>Every partition is compacted and nothing is waiting.</p>");
        return;
    }
    out.push_str(
        "<table class=\"worst\"><tr><th>health</th><th>partition</th><th>files</th><th>small</th>\
         <th>fragmented row groups</th><th>late</th><th>why</th></tr>",
    );
    for p in worst {
        let mut why = p.reasons.join("; ");
        for note in p.corrupt.iter().chain(&p.quarantined) {
            let _ = write!(why, "; {}: {}", note.key, note.reason);
        }
        for v in &p.schema_variants {
            let _ = write!(why, "; {}: {} ({})", v.column, v.detail, v.files.join(", "));
        }
        let _ = write!(
            out,
            "<tr><td><span class=\"cell {}\"></span> {}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            p.health.as_str(),
            p.health.as_str(),
            escape(&p.partition),
            p.files,
            p.small_files,
            p.fragmented_row_groups,
            p.late_files,
            escape(&why)
        );
    }
    out.push_str("</table>");
}

fn hot_table(out: &mut String, ds: &DatasetHealth) {
    let Some(hot) = &ds.hot else { return };
    let _ = write!(
        out,
        "<p>Tip {}, final through {}: {} final range(s), {} exported, {} moved, {} flagged; \
         <b>{} row(s)</b> past finality still in Postgres.</p>",
        hot.tip.map_or("-".into(), |t| t.to_string()),
        hot.final_through.map_or("-".into(), |t| t.to_string()),
        hot.ranges_final,
        hot.ranges_exported,
        hot.ranges_moved,
        hot.ranges_flagged,
        hot.backlog_rows
    );
    if hot.backlog.is_empty() {
        return;
    }
    out.push_str("<table class=\"backlog\"><tr><th>range</th><th>rows in Postgres</th><th>cold copy</th></tr>");
    for r in &hot.backlog {
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            escape(&r.range),
            r.rows,
            escape(&r.cold)
        );
    }
    out.push_str("</table>");
}

/// The page.
pub fn html(report: &LakeReport) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Lake health {}</title><style>{STYLE}</style></head><body>\
         <h1>Lake health</h1><p>Generated {}{}.</p>\
         <p class=\"legend\"><span><span class=\"cell good\"></span> good</span>\
         <span><span class=\"cell warn\"></span> work waiting</span>\
         <span><span class=\"cell bad\"></span> needs a person</span>\
         <span><span class=\"cell gap\"></span> no files (gap)</span></p>",
        escape(&time(report.generated_at_ms)),
        escape(&time(report.generated_at_ms)),
        report
            .since_ms
            .map(|s| format!(", partitions since {}", escape(&time(s))))
            .unwrap_or_default()
    );
    totals_table(&mut out, &report.totals);
    for ds in &report.datasets {
        let _ = write!(
            out,
            "<h2 id=\"{0}\">{0} ({1})</h2>",
            escape(&ds.dataset),
            escape(&ds.kind)
        );
        if ds.kind == "hot" {
            hot_table(&mut out, ds);
            continue;
        }
        heat_map(&mut out, ds);
        totals_table(&mut out, &ds.totals);
        worst_table(&mut out, ds);
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_and_every_partition_has_one_cell() {
        let mut report = LakeReport::default();
        let partitions = vec![
            PartitionHealth {
                partition: "dt=<script>".into(),
                health: Health::Bad,
                files: 1,
                ..Default::default()
            },
            PartitionHealth {
                partition: "dt=b".into(),
                start_ms: Some(0),
                ..Default::default()
            },
        ];
        report.datasets.push(DatasetHealth {
            dataset: "ev\"".into(),
            kind: "files".into(),
            partitions,
            ..Default::default()
        });
        let page = html(&report);
        assert!(!page.contains("<script>"), "{page}");
        assert_eq!(page.matches("data-partition=").count(), 2);
        assert!(page.contains("dt=&lt;script&gt;"));
    }
}
