//! CloudWatch Embedded Metric Format: one JSON line on stdout per invocation, which Lambda's
//! log pipeline turns into metrics in the `ParquetCompactor` namespace (dimension `Function`).

use serde_json::{json, Map, Value};

pub const NAMESPACE: &str = "ParquetCompactor";

#[derive(Debug)]
pub struct Metrics {
    function: String,
    values: Vec<(&'static str, &'static str, f64)>,
}

impl Metrics {
    pub fn new(function: impl Into<String>) -> Self {
        Self {
            function: function.into(),
            values: Vec::new(),
        }
    }

    pub fn count(&mut self, name: &'static str, value: u64) -> &mut Self {
        self.add(name, "Count", value as f64)
    }

    pub fn bytes(&mut self, name: &'static str, value: u64) -> &mut Self {
        self.add(name, "Bytes", value as f64)
    }

    pub fn millis(&mut self, name: &'static str, value: u128) -> &mut Self {
        self.add(name, "Milliseconds", value as f64)
    }

    fn add(&mut self, name: &'static str, unit: &'static str, value: f64) -> &mut Self {
        match self.values.iter_mut().find(|(n, _, _)| *n == name) {
            Some(existing) => existing.2 += value,
            None => self.values.push((name, unit, value)),
        }
        self
    }

    /// The EMF document.
    pub fn document(&self, timestamp_ms: i64) -> Value {
        emf(("Function", &self.function), &self.values, timestamp_ms)
    }

    /// Prints the document as one line on stdout, where Lambda picks EMF up.
    pub fn emit(&self) {
        if !self.values.is_empty() {
            println!("{}", self.document(crate::support::clock::now_ms()));
        }
    }
}

/// One EMF document: `values` (name, unit, value) under one dimension.
fn emf(
    (dimension, value): (&str, &str),
    values: &[(&'static str, &'static str, f64)],
    timestamp_ms: i64,
) -> Value {
    let mut root = Map::new();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [[dimension]],
                "Metrics": values.iter()
                    .map(|(name, unit, _)| json!({"Name": name, "Unit": unit}))
                    .collect::<Vec<_>>(),
            }],
        }),
    );
    root.insert(dimension.into(), json!(value));
    for (name, _, v) in values {
        root.insert((*name).into(), json!(v));
    }
    Value::Object(root)
}

/// The health figures of each dataset as EMF documents (dimension `Dataset`): small files,
/// fragmented row groups, corrupt and quarantined files, gaps, late files, Postgres backlog rows.
pub fn health_documents(
    report: &crate::model::report::LakeReport,
    timestamp_ms: i64,
) -> Vec<Value> {
    report
        .datasets
        .iter()
        .map(|ds| {
            let t = &ds.totals;
            let figures: Vec<(&'static str, &'static str, f64)> = [
                ("SmallFiles", t.small_files),
                ("FragmentedRowGroups", t.fragmented_row_groups),
                ("CorruptFiles", t.corrupt_files + t.quarantined_files),
                ("Gaps", t.gaps),
                ("LateFiles", t.late_files),
                ("BacklogRows", t.backlog_rows),
                ("PartitionsBad", t.bad),
            ]
            .into_iter()
            .map(|(name, value)| (name, "Count", value as f64))
            .collect();
            emf(("Dataset", &ds.dataset), &figures, timestamp_ms)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_declares_every_metric_it_carries() {
        let mut m = Metrics::new("merger");
        m.count("FilesCompacted", 3)
            .count("FilesCompacted", 2)
            .bytes("BytesIn", 10);
        let doc = m.document(1);
        assert_eq!(doc["FilesCompacted"], json!(5.0));
        assert_eq!(doc["Function"], json!("merger"));
        let declared = &doc["_aws"]["CloudWatchMetrics"][0]["Metrics"];
        assert_eq!(declared.as_array().unwrap().len(), 2);
        assert_eq!(declared[1], json!({"Name": "BytesIn", "Unit": "Bytes"}));
    }
}
