//! The state port on Amazon DynamoDB.
//!
//! Table design (one item per partition; see docs/deploy.md):
//! - key: `dataset` (S, partition key) + `partition` (S, sort key);
//! - `record` (S): the [`PartitionRecord`] as JSON, changed only by the pure transitions of
//!   [`PartitionRecord`] under optimistic concurrency on `rev` (N), so the rules are exactly
//!   those of the embedded store;
//! - `c_<counter>` (N): the counters, changed with atomic `ADD` — S3 events update them without
//!   contending on `rev`; they override the counters inside `record`;
//! - `status_key` (S) = `<dataset>#<status>`: hash key of the global secondary index
//!   `by-status` (sort key `partition`), which the planner's sweeps and recovery query;
//! - sweep cursors are items with sort key `\u{1f}sweep-cursor` and a TTL attribute
//!   `expires_at` (epoch seconds), so an abandoned sweep position ages out.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;

use crate::error::{Error, Result};
use crate::model::state::{Counters, PartitionId, PartitionRecord, PartitionStatus};
use crate::ports::aws::ErrorInfo;
use crate::ports::state::StateStore;

pub const STATUS_INDEX: &str = "by-status";
const CURSOR_SORT_KEY: &str = "\u{1f}sweep-cursor";
/// A saved sweep position older than this is dropped by the table's TTL.
const CURSOR_TTL: Duration = Duration::from_secs(24 * 3600);
/// Optimistic-concurrency retries before giving up on a hot record.
const MAX_ATTEMPTS: u32 = 40;

#[derive(Clone, Debug)]
pub struct DynamoState {
    client: Client,
    table: String,
}

type Item = HashMap<String, AttributeValue>;

impl DynamoState {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// A store over `table` with a client from the environment.
    pub async fn from_env(table: impl Into<String>) -> Self {
        let config = crate::ports::aws::sdk_config().await;
        Self::new(Client::new(&config), table)
    }

    /// Creates the table with the documented design (on-demand billing). The SAM template does
    /// this on AWS; the CLI and tests use it against an empty account or a local endpoint.
    /// An existing table is left alone.
    pub async fn create_table(&self) -> Result<()> {
        let key = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
        };
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
        };
        let build = |r: std::result::Result<KeySchemaElement, _>| r.map_err(|e| self.err(e));
        let build_attr =
            |r: std::result::Result<AttributeDefinition, _>| r.map_err(|e| self.err(e));
        let index = GlobalSecondaryIndex::builder()
            .index_name(STATUS_INDEX)
            .key_schema(build(key("status_key", KeyType::Hash))?)
            .key_schema(build(key("partition", KeyType::Range))?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .build()
            .map_err(|e| self.err(e))?;
        let result = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(build(key("dataset", KeyType::Hash))?)
            .key_schema(build(key("partition", KeyType::Range))?)
            .attribute_definitions(build_attr(attr("dataset"))?)
            .attribute_definitions(build_attr(attr("partition"))?)
            .attribute_definitions(build_attr(attr("status_key"))?)
            .global_secondary_indexes(index)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if ErrorInfo::of(&e).is_code("ResourceInUseException") => Ok(()),
            Err(e) => Err(self.err(ErrorInfo::of(&e).message)),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::state(format!("dynamodb table {}", self.table), e)
    }

    fn key(dataset: &str, partition: &str) -> Item {
        HashMap::from([
            ("dataset".to_string(), s(dataset)),
            ("partition".to_string(), s(stored_partition(partition))),
        ])
    }

    async fn read(&self, id: &PartitionId) -> Result<Option<(PartitionRecord, Option<String>)>> {
        let response = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(&id.dataset, &id.partition)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.err(ErrorInfo::of(&e).message))?;
        response.item.map(|item| self.decode(id, &item)).transpose()
    }

    /// The record in `item` and its revision (`None` for an item only counters created).
    fn decode(&self, id: &PartitionId, item: &Item) -> Result<(PartitionRecord, Option<String>)> {
        let updated = number(item.get("updated_at")).unwrap_or_default() as i64;
        let mut record = match item.get("record").and_then(|v| v.as_s().ok()) {
            Some(json) => serde_json::from_str::<PartitionRecord>(json).map_err(|e| {
                self.err(format!(
                    "record of {id} is unreadable ({e}); delete the item to rebuild it from S3"
                ))
            })?,
            None => PartitionRecord::new(id.clone(), updated),
        };
        record.counters = counters_from(item);
        let rev = item.get("rev").and_then(|v| v.as_n().ok()).cloned();
        Ok((record, rev))
    }

    /// Reads the record, applies `f`, and writes it back only if nobody changed it meanwhile
    /// (retrying with jittered backoff otherwise). Counters changed by `f` are added atomically.
    async fn modify<T>(
        &self,
        id: &PartitionId,
        now_ms: i64,
        mut f: impl FnMut(&mut PartitionRecord) -> Result<T>,
    ) -> Result<T> {
        for attempt in 0..MAX_ATTEMPTS {
            let (mut record, rev) = match self.read(id).await? {
                Some(found) => found,
                None => (PartitionRecord::new(id.clone(), now_ms), None),
            };
            let before = record.clone();
            let out = f(&mut record)?;
            if record == before {
                return Ok(out);
            }
            let delta = counters_delta(&before.counters, &record.counters);
            let next_rev = rev
                .as_deref()
                .and_then(|r| r.parse::<u64>().ok())
                .unwrap_or(0)
                + 1;
            let mut json = record.clone();
            json.counters = Counters::default();
            let json = serde_json::to_string(&json).map_err(|e| self.err(e))?;
            let mut values = HashMap::from([
                (":record".to_string(), s(&json)),
                (":next".to_string(), n(next_rev)),
                (
                    ":sk".to_string(),
                    s(&status_key(&id.dataset, record.status)),
                ),
                (":now".to_string(), n(now_ms.max(0) as u64)),
            ]);
            let mut update =
                "SET #record = :record, #rev = :next, status_key = :sk, updated_at = :now"
                    .to_string();
            let adds = add_clause(&delta, &mut values);
            if !adds.is_empty() {
                update.push_str(" ADD ");
                update.push_str(&adds);
            }
            let condition = match &rev {
                Some(current) => {
                    values.insert(":rev".to_string(), AttributeValue::N(current.clone()));
                    "#rev = :rev"
                }
                None => "attribute_not_exists(#rev)",
            };
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(Self::key(&id.dataset, &id.partition)))
                .update_expression(update)
                .condition_expression(condition)
                .expression_attribute_names("#record", "record")
                .expression_attribute_names("#rev", "rev")
                .set_expression_attribute_values(Some(values))
                .send()
                .await;
            match result {
                Ok(_) => return Ok(out),
                Err(e) => {
                    let info = ErrorInfo::of(&e);
                    if !info.is_code("ConditionalCheckFailedException") {
                        return Err(self.err(format!("updating {id}: {}", info.message)));
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
        Err(self.err(format!(
            "record of {id} kept changing under {MAX_ATTEMPTS} attempts; retry later"
        )))
    }
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn number(v: Option<&AttributeValue>) -> Option<u64> {
    v.and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
}

/// DynamoDB refuses an empty key attribute: the one partition of a dataset without partition
/// levels (`""`) is stored as `"."`, which no partition path can be (the store refuses `.`
/// segments).
const FLAT_PARTITION: &str = ".";

fn stored_partition(partition: &str) -> &str {
    if partition.is_empty() {
        FLAT_PARTITION
    } else {
        partition
    }
}

fn read_partition(stored: &str) -> &str {
    if stored == FLAT_PARTITION {
        ""
    } else {
        stored
    }
}

fn status_key(dataset: &str, status: PartitionStatus) -> String {
    format!("{dataset}#{}", status.as_str())
}

/// The counters as `(field, value)` pairs, in declaration order; serde keeps the field list in
/// one place (the struct).
fn counter_fields(c: &Counters) -> Vec<(String, u64)> {
    match serde_json::to_value(c) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .map(|(k, v)| (k, v.as_u64().unwrap_or(0)))
            .collect(),
        _ => Vec::new(),
    }
}

fn counters_from(item: &Item) -> Counters {
    let fields: serde_json::Map<String, serde_json::Value> = counter_fields(&Counters::default())
        .into_iter()
        .map(|(name, _)| {
            let value = number(item.get(&format!("c_{name}"))).unwrap_or(0);
            (name, value.into())
        })
        .collect();
    serde_json::from_value(serde_json::Value::Object(fields)).unwrap_or_default()
}

fn counters_delta(before: &Counters, after: &Counters) -> Vec<(String, u64)> {
    counter_fields(after)
        .into_iter()
        .zip(counter_fields(before))
        .map(|((name, a), (_, b))| (name, a.saturating_sub(b)))
        .filter(|(_, d)| *d > 0)
        .collect()
}

/// `c_x :dx, c_y :dy` for an `ADD` clause, registering the values.
fn add_clause(delta: &[(String, u64)], values: &mut Item) -> String {
    delta
        .iter()
        .map(|(name, d)| {
            values.insert(format!(":d_{name}"), n(*d));
            format!("c_{name} :d_{name}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn backoff(attempt: u32) -> Duration {
    let base = 10u64 << attempt.min(6);
    let jitter =
        (crate::support::clock::now_ms().unsigned_abs() ^ (u64::from(attempt) * 7919)) % base;
    Duration::from_millis(base / 2 + jitter)
}

#[async_trait]
impl StateStore for DynamoState {
    fn describe(&self) -> String {
        format!("dynamodb table {}", self.table)
    }

    async fn update_record(
        &self,
        id: &PartitionId,
        now_ms: i64,
        change: &mut (dyn for<'r> FnMut(&'r mut PartitionRecord) -> Result<()> + Send),
    ) -> Result<()> {
        self.modify(id, now_ms, |record| change(record)).await
    }

    async fn get(&self, id: &PartitionId) -> Result<Option<PartitionRecord>> {
        Ok(self.read(id).await?.map(|(record, _)| record))
    }

    async fn add_counters(&self, id: &PartitionId, delta: &Counters, now_ms: i64) -> Result<()> {
        let delta: Vec<(String, u64)> = counter_fields(delta)
            .into_iter()
            .filter(|(_, d)| *d > 0)
            .collect();
        let mut values = HashMap::from([
            (":now".to_string(), n(now_ms.max(0) as u64)),
            (
                ":active".to_string(),
                s(&status_key(&id.dataset, PartitionStatus::Active)),
            ),
        ]);
        let mut update =
            "SET updated_at = :now, status_key = if_not_exists(status_key, :active)".to_string();
        let adds = add_clause(&delta, &mut values);
        if !adds.is_empty() {
            update.push_str(" ADD ");
            update.push_str(&adds);
        }
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(&id.dataset, &id.partition)))
            .update_expression(update)
            .set_expression_attribute_values(Some(values))
            .send()
            .await
            .map_err(|e| self.err(format!("counting {id}: {}", ErrorInfo::of(&e).message)))?;
        Ok(())
    }

    async fn list_by_status(
        &self,
        dataset: &str,
        status: PartitionStatus,
    ) -> Result<Vec<PartitionRecord>> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let response = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(STATUS_INDEX)
                .key_condition_expression("status_key = :sk")
                .expression_attribute_values(":sk", s(&status_key(dataset, status)))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| {
                    self.err(format!(
                        "querying {dataset} by status: {}",
                        ErrorInfo::of(&e).message
                    ))
                })?;
            for item in response.items() {
                let Some(partition) = item.get("partition").and_then(|v| v.as_s().ok()) else {
                    continue;
                };
                let id = PartitionId::new(dataset, read_partition(partition));
                out.push(self.decode(&id, item)?.0);
            }
            match response.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(out),
            }
        }
    }

    async fn sweep_cursor(&self, dataset: &str) -> Result<Option<String>> {
        let response = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(dataset, CURSOR_SORT_KEY)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.err(ErrorInfo::of(&e).message))?;
        let Some(item) = response.item else {
            return Ok(None);
        };
        // DynamoDB deletes expired items lazily; an expired cursor counts as gone.
        let expired = number(item.get("expires_at"))
            .is_some_and(|at| (at as i64) * 1000 < crate::support::clock::now_ms());
        Ok(item
            .get("cursor")
            .and_then(|v| v.as_s().ok())
            .filter(|_| !expired)
            .cloned())
    }

    async fn set_sweep_cursor(&self, dataset: &str, cursor: Option<&str>) -> Result<()> {
        let key = Self::key(dataset, CURSOR_SORT_KEY);
        let result = match cursor {
            Some(cursor) => {
                let expires =
                    (crate::support::clock::now_ms() / 1000).max(0) as u64 + CURSOR_TTL.as_secs();
                let mut item = key;
                item.insert("cursor".to_string(), s(cursor));
                item.insert("expires_at".to_string(), n(expires));
                self.client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| ErrorInfo::of(&e).message)
            }
            None => self
                .client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| ErrorInfo::of(&e).message),
        };
        result.map_err(|m| self.err(format!("saving the sweep position of {dataset}: {m}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_through_attributes() {
        let counters = Counters {
            files_seen: 3,
            rows_out: 7,
            corrupt_skipped: 1,
            ..Counters::default()
        };
        let mut item = Item::new();
        for (name, value) in counter_fields(&counters) {
            item.insert(format!("c_{name}"), n(value));
        }
        assert_eq!(counters_from(&item), counters);
    }

    #[test]
    fn delta_holds_only_changed_counters() {
        let before = Counters {
            files_seen: 3,
            ..Counters::default()
        };
        let after = Counters {
            files_seen: 5,
            compactions: 1,
            ..Counters::default()
        };
        let mut delta = counters_delta(&before, &after);
        delta.sort();
        assert_eq!(
            delta,
            vec![
                ("compactions".to_string(), 1),
                ("files_seen".to_string(), 2)
            ]
        );
    }
}
