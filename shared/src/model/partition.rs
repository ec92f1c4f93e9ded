//! Partition templates such as `dt={date}/hour={hour}` or `year={year}/month={month}/day={day}`:
//! matching directory names during discovery, and deciding from the partition's time whether it
//! is cold enough to compact.

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

/// The values a partition path gave for each template field, and the time span it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionValues {
    pub fields: BTreeMap<String, String>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
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
        if trimmed.is_empty() {
            return Err(err("the template is empty".into()));
        }
        let mut segments = Vec::new();
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
        if !date && !year {
            return Err(
                "the template has no time field; add {date} or {year} (with {month}, {day}, {hour} as needed) so that cold partitions can be told from hot ones".into(),
            );
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

    /// Parses a whole partition path (relative to the dataset prefix, `/`-separated).
    pub fn parse_partition(&self, path: &str) -> Result<PartitionValues> {
        let err = |reason: &str| Error::Partition {
            key: path.to_string(),
            template: self.raw.clone(),
            reason: reason.to_string(),
        };
        let names: Vec<&str> = path.trim_matches('/').split('/').collect();
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
            end: self.granularity().end_of(start),
            fields,
            start,
        })
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
/// The current span is therefore never cold, whatever the grace.
pub fn coldness(
    values: &PartitionValues,
    granularity: Granularity,
    grace: std::time::Duration,
    now: DateTime<Utc>,
) -> Coldness {
    let end = coarsen_end(values, granularity);
    let grace = Duration::from_std(grace).unwrap_or(Duration::MAX);
    let until = end
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
fn coarsen_end(values: &PartitionValues, granularity: Granularity) -> DateTime<Utc> {
    use chrono::{Datelike, Timelike};
    let s = values.start;
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
    granularity.end_of(start).max(values.end)
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
        assert_eq!(v.start, t("2024-03-01T05:00:00Z"));
        assert_eq!(v.end, t("2024-03-01T06:00:00Z"));
    }

    #[test]
    fn named_fields_and_ymd() {
        let tpl = PartitionTemplate::parse("region={region}/{year}/{month}/{day}").unwrap();
        assert_eq!(tpl.granularity(), Granularity::Day);
        let v = tpl.parse_partition("region=eu-west/2024/02/29").unwrap();
        assert_eq!(v.fields["region"], "eu-west");
        assert_eq!(v.end, t("2024-03-01T00:00:00Z"));
        assert!(tpl.parse_partition("region=eu/2023/02/29").is_err());
        assert!(tpl.parse_partition("region=eu/2024/02").is_err());
    }

    #[test]
    fn bad_templates_are_explained() {
        for bad in [
            "",
            "dt={date",
            "region={region}",
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
