//! Partition templates such as `dt={date}/hour={hour}`, `year={year}/month={month}/day={day}`,
//! `product={product}` or `chain={chain}/range={start}-{end}`: matching directory names during
//! discovery, and deciding whether a partition is cold enough to compact — from its time span
//! (templates with time fields), from how long it has been quiet, or, for ranges of an integer,
//! from the ranges after it (see [`ColdRule`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Months, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Time fields a template may use; any other `{name}` matches a free value (e.g. `{region}`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Field {
    /// `YYYY-MM-DD`
    Date,
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Named(String),
}

impl Field {
    fn parse(name: &str) -> Field {
        match name {
            "date" => Field::Date,
            "year" => Field::Year,
            "month" => Field::Month,
            "day" => Field::Day,
            "hour" => Field::Hour,
            "minute" => Field::Minute,
            other => Field::Named(other.to_string()),
        }
    }

    fn name(&self) -> &str {
        match self {
            Field::Date => "date",
            Field::Year => "year",
            Field::Month => "month",
            Field::Day => "day",
            Field::Hour => "hour",
            Field::Minute => "minute",
            Field::Named(n) => n,
        }
    }

    /// Fixed width of the value, for the time fields.
    fn width(&self) -> Option<usize> {
        match self {
            Field::Date => Some(10),
            Field::Year => Some(4),
            Field::Month | Field::Day | Field::Hour | Field::Minute => Some(2),
            Field::Named(_) => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(Field),
}

/// The time span one partition covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Minute,
    Hour,
    Day,
    Month,
    Year,
}

impl Granularity {
    fn end_of(self, start: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Granularity::Minute => start + Duration::minutes(1),
            Granularity::Hour => start + Duration::hours(1),
            Granularity::Day => start + Duration::days(1),
            Granularity::Month => start
                .checked_add_months(Months::new(1))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            Granularity::Year => start
                .checked_add_months(Months::new(12))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionTemplate {
    raw: String,
    segments: Vec<Vec<Part>>,
}

/// The values a partition path gave for each template field, and the time span it covers
/// (`None` for a template without time fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionValues {
    pub fields: BTreeMap<String, String>,
    pub span: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

impl PartitionValues {
    /// `[start, end)` of a range layout's `{start}` and `{end}` fields.
    pub fn integer_range(&self) -> Option<(i64, i64)> {
        let start = self.fields.get("start")?.parse().ok()?;
        let end = self.fields.get("end")?.parse().ok()?;
        Some((start, end))
    }

    /// The values of every field but `{start}` and `{end}`: the ranges of one family (one
    /// chain, say) are compared with each other.
    pub fn family(&self) -> Vec<(&str, &str)> {
        self.fields
            .iter()
            .filter(|(k, _)| *k != "start" && *k != "end")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

/// How a partition is found cold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColdRule {
    /// Its time span (coarsened to `granularity`) plus `grace` is over. Templates with time
    /// fields.
    Time,
    /// Its newest data file is older than `grace`. The default without time fields.
    Quiet,
    /// A range layout (`{start}-{end}` integer fields, end exclusive): a later range of the same
    /// family starts at least `range_finality` past its end, or its end is at or below
    /// `range_tip` (`end - 1 <= tip`).
    Range,
}

/// Whether a partition may be compacted now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Coldness {
    Cold,
    /// Still receiving data (or inside the grace period) until the given time.
    Hot {
        until: DateTime<Utc>,
    },
}

impl PartitionTemplate {
    pub fn parse(raw: &str) -> Result<Self> {
        let err = |reason: String| Error::Partition {
            key: String::new(),
            template: raw.to_string(),
            reason,
        };
        let trimmed = raw.trim_matches('/');
        let mut segments = Vec::new();
        if trimmed.is_empty() {
            // No directory levels: the dataset's prefix itself is its one partition ("").
            return Ok(Self {
                raw: raw.to_string(),
                segments,
            });
        }
        for segment in trimmed.split('/') {
            let mut parts = Vec::new();
            let mut rest = segment;
            while !rest.is_empty() {
                if let Some(open) = rest.strip_prefix('{') {
                    let close = open
                        .find('}')
                        .ok_or_else(|| err(format!("unclosed '{{' in segment {segment:?}")))?;
                    let name = &open[..close];
                    if name.is_empty()
                        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        return Err(err(format!(
                            "bad field name {name:?} in segment {segment:?}"
                        )));
                    }
                    let field = Field::parse(name);
                    if let (Some(Part::Field(prev)), None) = (parts.last(), field.width()) {
                        if prev.width().is_none() {
                            return Err(err(format!(
                                "fields {{{}}} and {{{name}}} are adjacent with no separator; their values could not be told apart",
                                prev.name()
                            )));
                        }
                    }
                    parts.push(Part::Field(field));
                    rest = &open[close + 1..];
                } else {
                    let end = rest.find('{').unwrap_or(rest.len());
                    let literal = &rest[..end];
                    if literal.contains('}') {
                        return Err(err(format!("stray '}}' in segment {segment:?}")));
                    }
                    parts.push(Part::Literal(literal.to_string()));
                    rest = &rest[end..];
                }
            }
            if segment.is_empty() {
                return Err(err("empty segment ('//')".into()));
            }
            segments.push(parts);
        }
        let template = Self {
            raw: raw.to_string(),
            segments,
        };
        template.check_time_fields().map_err(err)?;
        Ok(template)
    }

    fn fields(&self) -> impl Iterator<Item = &Field> {
        self.segments.iter().flatten().filter_map(|p| match p {
            Part::Field(f) => Some(f),
            Part::Literal(_) => None,
        })
    }

    fn has(&self, field: &Field) -> bool {
        self.fields().any(|f| f == field)
    }

    fn check_time_fields(&self) -> std::result::Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for f in self.fields() {
            if !seen.insert(f.name().to_string()) {
                return Err(format!("field {{{}}} appears twice", f.name()));
            }
        }
        let date = self.has(&Field::Date);
        let (year, month, day) = (
            self.has(&Field::Year),
            self.has(&Field::Month),
            self.has(&Field::Day),
        );
        if date && (year || month || day) {
            return Err("use either {date} or {year}/{month}/{day}, not both".into());
        }
        if !date && !year && (month || day || self.has(&Field::Hour) || self.has(&Field::Minute)) {
            return Err("{month}, {day}, {hour} and {minute} need {date} or {year}".into());
        }
        if !date && ((day && !month) || (month && !year)) {
            return Err("{day} needs {month}, and {month} needs {year}".into());
        }
        let has_day = date || day;
        if self.has(&Field::Hour) && !has_day {
            return Err("{hour} needs {date} or {day}".into());
        }
        if self.has(&Field::Minute) && !self.has(&Field::Hour) {
            return Err("{minute} needs {hour}".into());
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// True when partitions have a time span ({date} or {year} and finer).
    pub fn has_time(&self) -> bool {
        self.has(&Field::Date) || self.has(&Field::Year)
    }

    /// True for a range layout: integer `{start}` and `{end}` fields.
    pub fn has_range(&self) -> bool {
        self.has(&Field::Named("start".into())) && self.has(&Field::Named("end".into()))
    }

    /// The rule used when the configuration names none: time for a template with time fields,
    /// else a quiet period.
    pub fn default_cold_rule(&self) -> ColdRule {
        if self.has_time() {
            ColdRule::Time
        } else {
            ColdRule::Quiet
        }
    }

    /// Number of directory levels a partition path has.
    pub fn depth(&self) -> usize {
        self.segments.len()
    }

    /// The finest time unit the template resolves: the span of one partition.
    pub fn granularity(&self) -> Granularity {
        if self.has(&Field::Minute) {
            Granularity::Minute
        } else if self.has(&Field::Hour) {
            Granularity::Hour
        } else if self.has(&Field::Date) || self.has(&Field::Day) {
            Granularity::Day
        } else if self.has(&Field::Month) {
            Granularity::Month
        } else {
            Granularity::Year
        }
    }

    /// Matches one directory name against the template segment at `level`, returning the field
    /// values on success.
    pub fn match_segment(&self, level: usize, name: &str) -> Option<Vec<(String, String)>> {
        let parts = self.segments.get(level)?;
        let mut values = Vec::new();
        let mut rest = name;
        for (i, part) in parts.iter().enumerate() {
            match part {
                Part::Literal(lit) => rest = rest.strip_prefix(lit.as_str())?,
                Part::Field(field) => {
                    let len = match field.width() {
                        Some(w) => w,
                        None => match parts.get(i + 1) {
                            Some(Part::Literal(next)) => rest.find(next.as_str())?,
                            _ => rest.len(),
                        },
                    };
                    if len == 0 || len > rest.len() || !rest.is_char_boundary(len) {
                        return None;
                    }
                    let value = &rest[..len];
                    if !valid_value(field, value) {
                        return None;
                    }
                    values.push((field.name().to_string(), value.to_string()));
                    rest = &rest[len..];
                }
            }
        }
        rest.is_empty().then_some(values)
    }

    /// Writes the partition path for `fields` (the named ones), the time span starting at
    /// `start` and the range `range` (`{start}`, `{end}`); `None` when a field has no value.
    pub fn render(
        &self,
        fields: &BTreeMap<String, String>,
        start: Option<DateTime<Utc>>,
        range: Option<(i64, i64)>,
    ) -> Option<String> {
        let mut levels = Vec::with_capacity(self.segments.len());
        for parts in &self.segments {
            let mut name = String::new();
            for part in parts {
                match part {
                    Part::Literal(lit) => name.push_str(lit),
                    Part::Field(field) => {
                        let value = match (field, start) {
                            (Field::Date, Some(t)) => t.format("%Y-%m-%d").to_string(),
                            (Field::Year, Some(t)) => t.format("%Y").to_string(),
                            (Field::Month, Some(t)) => t.format("%m").to_string(),
                            (Field::Day, Some(t)) => t.format("%d").to_string(),
                            (Field::Hour, Some(t)) => t.format("%H").to_string(),
                            (Field::Minute, Some(t)) => t.format("%M").to_string(),
                            (Field::Named(n), _) if n == "start" && range.is_some() => {
                                range?.0.to_string()
                            }
                            (Field::Named(n), _) if n == "end" && range.is_some() => {
                                range?.1.to_string()
                            }
                            (Field::Named(n), _) => fields.get(n)?.clone(),
                            _ => return None,
                        };
                        name.push_str(&value);
                    }
                }
            }
            levels.push(name);
        }
        Some(levels.join("/"))
    }

    /// Each field's name, with the name of its `key=` directory level (`("date", Some("dt"))`
    /// for `dt={date}`).
    pub fn field_names(&self) -> Vec<(String, Option<String>)> {
        let mut names = Vec::new();
        for parts in &self.segments {
            for (i, part) in parts.iter().enumerate() {
                if let Part::Field(field) = part {
                    let key = level_key(parts, i);
                    names.push((field.name().to_string(), key.map(str::to_string)));
                }
            }
        }
        names
    }

    /// The partition path of one row: each field's value is `value(field, key)`, `key` being
    /// the name of a `key=` directory level (`dt` for `dt={date}`); a time field's number is
    /// zero-padded to its width (`7` for `{hour}` is `07`). `None` when a field has no value.
    /// The path is not checked: parse it with [`PartitionTemplate::parse_partition`].
    pub fn render_with(
        &self,
        value: impl Fn(&str, Option<&str>) -> Option<String>,
    ) -> Option<String> {
        let mut levels = Vec::with_capacity(self.segments.len());
        for parts in &self.segments {
            let mut name = String::new();
            for (i, part) in parts.iter().enumerate() {
                match part {
                    Part::Literal(lit) => name.push_str(lit),
                    Part::Field(field) => {
                        let mut v = value(field.name(), level_key(parts, i))?;
                        if let Some(width) = field.width() {
                            if v.len() < width && v.bytes().all(|b| b.is_ascii_digit()) {
                                v = format!("{v:0>width$}");
                            }
                        }
                        name.push_str(&v);
                    }
                }
            }
            levels.push(name);
        }
        Some(levels.join("/"))
    }

    /// Parses a whole partition path (relative to the dataset prefix, `/`-separated).
    pub fn parse_partition(&self, path: &str) -> Result<PartitionValues> {
        let err = |reason: &str| Error::Partition {
            key: path.to_string(),
            template: self.raw.clone(),
            reason: reason.to_string(),
        };
        let trimmed = path.trim_matches('/');
        let names: Vec<&str> = if trimmed.is_empty() {
            Vec::new()
        } else {
            trimmed.split('/').collect()
        };
        if names.len() != self.depth() {
            return Err(err(&format!(
                "expected {} directory levels, found {}",
                self.depth(),
                names.len()
            )));
        }
        let mut fields = BTreeMap::new();
        for (level, name) in names.iter().enumerate() {
            let values = self
                .match_segment(level, name)
                .ok_or_else(|| err(&format!("level {level} ({name:?}) does not match")))?;
            fields.extend(values);
        }
        if !self.has_time() {
            return Ok(PartitionValues { fields, span: None });
        }
        let num = |k: &str, default: u32| -> u32 {
            fields
                .get(k)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let date = match fields.get("date") {
            Some(d) => NaiveDate::parse_from_str(d, "%Y-%m-%d").ok(),
            None => NaiveDate::from_ymd_opt(num("year", 0) as i32, num("month", 1), num("day", 1)),
        }
        .ok_or_else(|| err("the date fields do not form a valid date"))?;
        let naive = date
            .and_hms_opt(num("hour", 0), num("minute", 0), 0)
            .ok_or_else(|| err("the hour or minute is out of range"))?;
        let start = Utc.from_utc_datetime(&naive);
        Ok(PartitionValues {
            span: Some((start, self.granularity().end_of(start))),
            fields,
        })
    }
}

/// The `key` of a `key={field}` directory level, for its field at `parts[i]`.
fn level_key(parts: &[Part], i: usize) -> Option<&str> {
    match (i, parts.first()) {
        (1, Some(Part::Literal(lit))) => lit.strip_suffix('='),
        _ => None,
    }
}

fn valid_value(field: &Field, value: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let in_range = |lo: u32, hi: u32| value.parse::<u32>().is_ok_and(|n| (lo..=hi).contains(&n));
    match field {
        Field::Date => NaiveDate::parse_from_str(value, "%Y-%m-%d").is_ok(),
        Field::Year => digits(value),
        Field::Month => digits(value) && in_range(1, 12),
        Field::Day => digits(value) && in_range(1, 31),
        Field::Hour => digits(value) && in_range(0, 23),
        Field::Minute => digits(value) && in_range(0, 59),
        Field::Named(_) => !value.starts_with('_') && !value.starts_with('.'),
    }
}

/// A partition is cold once its whole span, coarsened to `granularity`, plus `grace` has passed.
/// The current span is therefore never cold, whatever the grace. A partition without a time
/// span is never cold by time.
pub fn coldness(
    values: &PartitionValues,
    granularity: Granularity,
    grace: std::time::Duration,
    now: DateTime<Utc>,
) -> Coldness {
    match values.span {
        Some((start, end)) => cold_after(coarsen_end(start, end, granularity), grace, now),
        None => Coldness::Hot {
            until: DateTime::<Utc>::MAX_UTC,
        },
    }
}

/// Cold once `grace` has passed since `quiet_since` (the newest data file's time).
pub fn quiet_coldness(
    quiet_since: DateTime<Utc>,
    grace: std::time::Duration,
    now: DateTime<Utc>,
) -> Coldness {
    cold_after(quiet_since, grace, now)
}

/// Cold when a later range of the same family starts at least `finality` past this one's end
/// (`later_start`: the largest start seen), or when `tip` is given and the range ends at or
/// below it. `Hot` has no time then: the range turns cold when the data moves on.
pub fn range_coldness(
    range: (i64, i64),
    later_start: Option<i64>,
    finality: u64,
    tip: Option<i64>,
) -> Coldness {
    let (_, end) = range;
    let by_later = later_start.is_some_and(|s| s >= end.saturating_add(finality as i64));
    let by_tip = tip.is_some_and(|t| end.saturating_sub(1) <= t);
    if by_later || by_tip {
        Coldness::Cold
    } else {
        Coldness::Hot {
            until: DateTime::<Utc>::MAX_UTC,
        }
    }
}

fn cold_after(from: DateTime<Utc>, grace: std::time::Duration, now: DateTime<Utc>) -> Coldness {
    let grace = Duration::from_std(grace).unwrap_or(Duration::MAX);
    let until = from
        .checked_add_signed(grace)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    if now >= until {
        Coldness::Cold
    } else {
        Coldness::Hot { until }
    }
}

/// The end of the `granularity` span containing the partition (e.g. the end of its day when
/// hourly partitions should only be compacted once the whole day is over).
fn coarsen_end(s: DateTime<Utc>, end: DateTime<Utc>, granularity: Granularity) -> DateTime<Utc> {
    use chrono::{Datelike, Timelike};
    let start = match granularity {
        Granularity::Minute => s.with_second(0),
        Granularity::Hour => s.with_minute(0),
        Granularity::Day => s.with_hour(0).and_then(|t| t.with_minute(0)),
        Granularity::Month => s
            .with_day(1)
            .and_then(|t| t.with_hour(0))
            .and_then(|t| t.with_minute(0)),
        Granularity::Year => s
            .with_month(1)
            .and_then(|t| t.with_day(1))
            .and_then(|t| t.with_hour(0))
            .and_then(|t| t.with_minute(0)),
    }
    .unwrap_or(s);
    granularity.end_of(start).max(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn parses_and_matches_hourly_template() {
        let tpl = PartitionTemplate::parse("dt={date}/hour={hour}").unwrap();
        assert_eq!(tpl.depth(), 2);
        assert_eq!(tpl.granularity(), Granularity::Hour);
        assert_eq!(
            tpl.match_segment(0, "dt=2024-03-01"),
            Some(vec![("date".into(), "2024-03-01".into())])
        );
        assert_eq!(tpl.match_segment(0, "dt=2024-13-01"), None);
        assert_eq!(tpl.match_segment(1, "hour=24"), None);
        assert_eq!(tpl.match_segment(1, "hour=7"), None);
        assert_eq!(tpl.match_segment(0, "_staging"), None);
        let v = tpl.parse_partition("dt=2024-03-01/hour=05").unwrap();
        assert_eq!(
            v.span,
            Some((t("2024-03-01T05:00:00Z"), t("2024-03-01T06:00:00Z")))
        );
    }

    #[test]
    fn rows_render_their_partition_by_key_or_field() {
        let tpl = PartitionTemplate::parse("dt={date}/hour={hour}/{region}").unwrap();
        let row = |field: &str, key: Option<&str>| match (field, key) {
            (_, Some("dt")) => Some("2024-03-01".to_string()),
            ("hour", _) => Some("7".to_string()),
            ("region", None) => Some("eu".to_string()),
            _ => None,
        };
        assert_eq!(
            tpl.render_with(row).as_deref(),
            Some("dt=2024-03-01/hour=07/eu")
        );
        assert!(tpl.parse_partition("dt=2024-03-01/hour=07/eu").is_ok());
        assert_eq!(tpl.render_with(|_, _| None), None);
        assert_eq!(
            tpl.field_names(),
            vec![
                ("date".to_string(), Some("dt".to_string())),
                ("hour".to_string(), Some("hour".to_string())),
                ("region".to_string(), None)
            ]
        );
    }

    #[test]
    fn named_fields_and_ymd() {
        let tpl = PartitionTemplate::parse("region={region}/{year}/{month}/{day}").unwrap();
        assert_eq!(tpl.granularity(), Granularity::Day);
        let v = tpl.parse_partition("region=eu-west/2024/02/29").unwrap();
        assert_eq!(v.fields["region"], "eu-west");
        assert_eq!(v.span.unwrap().1, t("2024-03-01T00:00:00Z"));
        assert!(tpl.parse_partition("region=eu/2023/02/29").is_err());
        assert!(tpl.parse_partition("region=eu/2024/02").is_err());
    }

    #[test]
    fn layouts_without_time_fields_are_accepted() {
        let products = PartitionTemplate::parse("product={product}").unwrap();
        assert!(!products.has_time());
        assert_eq!(products.default_cold_rule(), ColdRule::Quiet);
        let v = products.parse_partition("product=ES").unwrap();
        assert_eq!((v.fields["product"].as_str(), v.span), ("ES", None));

        let ranges = PartitionTemplate::parse("chain={chain}/range={start}-{end}").unwrap();
        assert!(ranges.has_range() && !ranges.has_time());
        let v = ranges.parse_partition("chain=1/range=100-200").unwrap();
        assert_eq!(v.integer_range(), Some((100, 200)));
        assert_eq!(v.family(), vec![("chain", "1")]);
        assert_eq!(
            PartitionTemplate::parse("dt={date}")
                .unwrap()
                .default_cold_rule(),
            ColdRule::Time
        );
    }

    #[test]
    fn an_empty_template_makes_the_prefix_one_partition() {
        let flat = PartitionTemplate::parse("").unwrap();
        assert_eq!(flat.depth(), 0);
        assert_eq!(flat.default_cold_rule(), ColdRule::Quiet);
        assert_eq!(flat.parse_partition("").unwrap().span, None);
        assert!(flat.parse_partition("x=1").is_err());
    }

    #[test]
    fn quiet_and_range_rules() {
        let grace = std::time::Duration::from_secs(600);
        let newest = t("2024-03-01T05:00:00Z");
        assert_eq!(
            quiet_coldness(newest, grace, t("2024-03-01T05:09:59Z")),
            Coldness::Hot {
                until: t("2024-03-01T05:10:00Z")
            }
        );
        assert_eq!(
            quiet_coldness(newest, grace, t("2024-03-01T05:10:00Z")),
            Coldness::Cold
        );
        // No later range yet: hot whatever the time.
        assert!(matches!(
            range_coldness((100, 200), Some(100), 0, None),
            Coldness::Hot { .. }
        ));
        assert_eq!(
            range_coldness((100, 200), Some(200), 0, None),
            Coldness::Cold
        );
        // A finality of 50 needs a range starting at 250 or later.
        assert!(matches!(
            range_coldness((100, 200), Some(200), 50, None),
            Coldness::Hot { .. }
        ));
        assert_eq!(
            range_coldness((100, 200), Some(300), 50, None),
            Coldness::Cold
        );
        // A tip at or past the last value makes it cold on its own.
        assert_eq!(
            range_coldness((100, 200), None, 0, Some(199)),
            Coldness::Cold
        );
        assert!(matches!(
            range_coldness((100, 200), None, 0, Some(198)),
            Coldness::Hot { .. }
        ));
    }

    #[test]
    fn bad_templates_are_explained() {
        for bad in [
            "dt={date",
            "region={region}/h={hour}",
            "{a}{b}/{date}",
            "dt={date}/{year}",
            "h={hour}/{year}",
            "{date}/{date}",
        ] {
            assert!(
                PartitionTemplate::parse(bad).is_err(),
                "{bad:?} should fail"
            );
        }
    }

    #[test]
    fn current_hour_is_never_cold_and_grace_is_honoured() {
        let tpl = PartitionTemplate::parse("dt={date}/hour={hour}").unwrap();
        let v = tpl.parse_partition("dt=2024-03-01/hour=05").unwrap();
        let zero = std::time::Duration::ZERO;
        let grace = std::time::Duration::from_secs(600);
        assert!(matches!(
            coldness(&v, Granularity::Hour, zero, t("2024-03-01T05:59:59Z")),
            Coldness::Hot { .. }
        ));
        assert_eq!(
            coldness(&v, Granularity::Hour, zero, t("2024-03-01T06:00:00Z")),
            Coldness::Cold
        );
        assert_eq!(
            coldness(&v, Granularity::Hour, grace, t("2024-03-01T06:05:00Z")),
            Coldness::Hot {
                until: t("2024-03-01T06:10:00Z")
            }
        );
        // Coarser granularity: hourly partitions wait for the whole day.
        assert_eq!(
            coldness(&v, Granularity::Day, zero, t("2024-03-01T23:00:00Z")),
            Coldness::Hot {
                until: t("2024-03-02T00:00:00Z")
            }
        );
    }
}
