//! Every SQL statement the Postgres adapter sends. A name (from the configuration or read from
//! the catalog) reaches SQL only through [`quote_ident`]; every value is a bound parameter (or,
//! for `COPY`, which takes none, a transaction-local setting the query reads back).

use crate::model::hot::config::HotDatasetConfig;
use crate::model::hot::names::{quote_ident, QualifiedName};

/// The select list of an export and of a delete's `RETURNING`: the same expressions, so the
/// two send every value in the same binary form.
fn column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The row filter of a range over the given expressions for its bounds and chain.
fn range_filter_over(hot: &HotDatasetConfig, start: &str, end: &str, chain: &str) -> String {
    let range = quote_ident(&hot.range_column);
    let mut filter = format!("{range} >= {start} AND {range} < {end}");
    if hot.chain_id.is_some() {
        filter = format!("{} = {chain} AND {filter}", quote_ident(&hot.chain_column));
    }
    filter
}

/// The row filter of a range: `$1` and `$2` are its bounds, `$3` the chain when one is set.
pub fn range_filter(hot: &HotDatasetConfig) -> String {
    range_filter_over(hot, "$1::int8", "$2::int8", "$3::int8")
}

/// The first parameter after those of [`range_filter`].
fn next_param(hot: &HotDatasetConfig) -> usize {
    if hot.chain_id.is_some() {
        4
    } else {
        3
    }
}

/// COPY takes no parameters: the export binds the range into these transaction-local
/// settings first ([`EXPORT_SETTINGS`]), and its query reads them back.
const SETTING_START: &str = "compactor.range_start";
const SETTING_END: &str = "compactor.range_end";
const SETTING_CHAIN: &str = "compactor.chain_id";

/// Binds `$1`/`$2`/`$3` (start, end, chain as text) for [`export_copy`], for the transaction.
pub const EXPORT_SETTINGS: &str = "SELECT set_config('compactor.range_start', $1, true), \
     set_config('compactor.range_end', $2, true), set_config('compactor.chain_id', $3, true)";

/// The chain filter alone, `$1` being the chain.
fn chain_only_filter(hot: &HotDatasetConfig) -> String {
    match hot.chain_id {
        Some(_) => format!("WHERE {} = $1::int8", quote_ident(&hot.chain_column)),
        None => String::new(),
    }
}

/// The columns an export appends after the exported ones, to find a row again in its table:
/// the leaf table it lives in and its physical position. Neither is written to Parquet nor
/// part of a row's digest.
pub const ROW_LOCATOR_COLUMNS: usize = 2;

/// Every row of one range in binary COPY format, in range-column order, followed by its
/// [locator](ROW_LOCATOR_COLUMNS); the bounds are read from [`EXPORT_SETTINGS`].
pub fn export_copy(hot: &HotDatasetConfig, table: &QualifiedName, columns: &[String]) -> String {
    let setting = |name: &str| format!("current_setting('{name}')::int8");
    format!(
        "COPY (SELECT {}, tableoid::oid, ctid FROM {} WHERE {} ORDER BY {}) TO STDOUT (FORMAT binary)",
        column_list(columns),
        table.sql(),
        range_filter_over(
            hot,
            &setting(SETTING_START),
            &setting(SETTING_END),
            &setting(SETTING_CHAIN)
        ),
        quote_ident(&hot.range_column)
    )
}

/// The rows of one sub-range (parameters as [`range_filter`]); run in the delete's snapshot
/// before [`delete_range`], so the delete removes exactly that many rows.
pub fn count_range(hot: &HotDatasetConfig, table: &QualifiedName) -> String {
    format!(
        "SELECT count(*)::int8 FROM {} WHERE {}",
        table.sql(),
        range_filter(hot)
    )
}

/// Deletes the rows of one sub-range (parameters as [`range_filter`]) and returns each one's
/// exported columns, for the content check.
pub fn delete_range(hot: &HotDatasetConfig, table: &QualifiedName, columns: &[String]) -> String {
    format!(
        "DELETE FROM {} WHERE {} RETURNING {}",
        table.sql(),
        range_filter(hot),
        column_list(columns),
    )
}

/// Deletes the rows of one sub-range found at the given locators (parameters as
/// [`range_filter`], then the tables' oids and the rows' ctids as text) and returns each
/// deleted row's exported columns.
pub fn delete_located_rows(
    hot: &HotDatasetConfig,
    table: &QualifiedName,
    columns: &[String],
) -> String {
    let first = next_param(hot);
    format!(
        "DELETE FROM {t} WHERE {filter} AND (tableoid, ctid) IN \
         (SELECT * FROM unnest(${first}::oid[], ${second}::text[]::tid[])) RETURNING {cols}",
        t = table.sql(),
        filter = range_filter(hot),
        second = first + 1,
        cols = column_list(columns),
    )
}

/// Every row of a detached partition, its exported columns (for the content check).
pub fn partition_rows(partition: &QualifiedName, columns: &[String]) -> String {
    format!(
        "SELECT {} FROM ONLY {}",
        column_list(columns),
        partition.sql()
    )
}

pub fn detach_partition(parent: &QualifiedName, partition: &QualifiedName) -> String {
    format!(
        "ALTER TABLE {} DETACH PARTITION {}",
        parent.sql(),
        partition.sql()
    )
}

pub fn drop_table(table: &QualifiedName) -> String {
    format!("DROP TABLE {}", table.sql())
}

/// Rows per grid range from `$2` (inclusive, a grid start) to `$3` (exclusive): `$1` is the
/// range size, `$4` the chain when one is set. Ranges without rows are absent.
pub fn range_counts_query(hot: &HotDatasetConfig, table: &QualifiedName) -> String {
    let column = quote_ident(&hot.range_column);
    let mut filter = format!("{column} >= $2::int8 AND {column} < $3::int8");
    if hot.chain_id.is_some() {
        filter = format!("{} = $4::int8 AND {filter}", quote_ident(&hot.chain_column));
    }
    format!(
        "SELECT $2::int8 + (({column}::int8 - $2::int8) / $1::int8) * $1::int8 AS range_start, \
         count(*)::int8 FROM {} WHERE {filter} GROUP BY 1 ORDER BY 1",
        table.sql()
    )
}

/// The starts of the grid ranges holding rows, one index lookup per range (a loose index
/// scan): `$1` range size, `$2` from (a grid start), `$3` to, `$4` the chain when one is set.
pub fn ranges_with_rows_query(hot: &HotDatasetConfig, table: &QualifiedName) -> String {
    let column = quote_ident(&hot.range_column);
    let chain = match hot.chain_id {
        Some(_) => format!("{} = $4::int8 AND ", quote_ident(&hot.chain_column)),
        None => String::new(),
    };
    let first_from = |from: &str| {
        format!(
            "(SELECT min({column})::int8 FROM {} WHERE {chain}{column} >= {from} AND {column} < $3::int8)",
            table.sql()
        )
    };
    // The CTE's column is always qualified: the table may have a column of the same name.
    let v = "compactor_found.compactor_v";
    format!(
        "WITH RECURSIVE compactor_found(compactor_v) AS (SELECT {} UNION ALL SELECT {} \
         FROM compactor_found WHERE {v} IS NOT NULL) \
         SELECT $2::int8 + (({v} - $2::int8) / $1::int8) * $1::int8 FROM compactor_found \
         WHERE {v} IS NOT NULL",
        first_from("$2::int8"),
        first_from(&format!(
            "$2::int8 + (({v} - $2::int8) / $1::int8 + 1) * $1::int8"
        )),
    )
}

/// Whether an index leads with the range column, or with the chain then the range column:
/// `$1` the table's oid, `$2` the range column, `$3` the chain column (or NULL).
pub const RANGE_INDEX_QUERY: &str = "\
SELECT EXISTS (
  SELECT 1 FROM pg_index i
  JOIN pg_attribute r ON r.attrelid = i.indrelid AND r.attname = $2
  LEFT JOIN pg_attribute c ON c.attrelid = i.indrelid AND c.attname = $3
  WHERE i.indrelid = $1 AND i.indisvalid
    AND (i.indkey[0] = r.attnum OR (i.indkey[0] = c.attnum AND i.indkey[1] = r.attnum)))";

pub fn max_query(hot: &HotDatasetConfig, table: &QualifiedName) -> String {
    format!(
        "SELECT max({})::int8 FROM {} {}",
        quote_ident(&hot.range_column),
        table.sql(),
        chain_only_filter(hot)
    )
}

/// The configured tip query, its one column read as an integer (the query is the user's own
/// SQL, run read-only; `$1` is declared `int8`, so it compares with any integer column).
pub fn tip_query(query: &str) -> String {
    format!(
        "SELECT tip::int8 FROM ({}) AS configured_tip(tip)",
        query.trim().trim_end_matches(';')
    )
}

/// The transaction id of the current transaction (assigned by then: it has deleted rows),
/// recorded before COMMIT so that an interrupted attempt can ask whether it committed.
pub const CURRENT_XID: &str = "SELECT pg_current_xact_id()::text";

/// `committed`, `aborted`, `in progress`, or NULL when the server no longer knows.
pub const XID_STATUS: &str = "SELECT pg_xact_status($1::text::xid8)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_quote_names_and_bind_values() {
        let mut hot = HotDatasetConfig::new("blocks", "public.blocks");
        hot.range_column = "block\"number".into();
        let table = hot.table_name().unwrap();
        let columns = vec!["block\"number".to_string(), "hash".to_string()];
        assert_eq!(
            export_copy(&hot, &table, &columns),
            "COPY (SELECT \"block\"\"number\", \"hash\", tableoid::oid, ctid FROM \"public\".\"blocks\" \
             WHERE \"block\"\"number\" >= current_setting('compactor.range_start')::int8 AND \
             \"block\"\"number\" < current_setting('compactor.range_end')::int8 ORDER BY \
             \"block\"\"number\") TO STDOUT (FORMAT binary)"
        );
        assert!(EXPORT_SETTINGS.contains(SETTING_START) && EXPORT_SETTINGS.contains(SETTING_END));
        assert!(EXPORT_SETTINGS.contains(SETTING_CHAIN));
        hot.chain_id = Some(1);
        assert_eq!(
            delete_range(&hot, &table, &columns),
            "DELETE FROM \"public\".\"blocks\" WHERE \"chain_id\" = $3::int8 AND \
             \"block\"\"number\" >= $1::int8 AND \"block\"\"number\" < $2::int8 RETURNING \
             \"block\"\"number\", \"hash\""
        );
        assert!(count_range(&hot, &table)
            .starts_with("SELECT count(*)::int8 FROM \"public\".\"blocks\""));
        let located = delete_located_rows(&hot, &table, &columns);
        assert!(
            located.contains("unnest($4::oid[], $5::text[]::tid[])"),
            "{located}"
        );
        assert_eq!(
            max_query(&hot, &table),
            "SELECT max(\"block\"\"number\")::int8 FROM \"public\".\"blocks\" WHERE \"chain_id\" = $1::int8"
        );
        assert!(range_counts_query(&hot, &table).contains("\"chain_id\" = $4::int8"));
        hot.chain_id = None;
        assert!(delete_located_rows(&hot, &table, &columns).contains("unnest($3::oid[]"));
        assert_eq!(
            tip_query("select head from heads where chain = $1;"),
            "SELECT tip::int8 FROM (select head from heads where chain = $1) AS configured_tip(tip)"
        );
        let leaf = QualifiedName::parse("\"s\".\"p\"\"1\"").unwrap();
        assert_eq!(drop_table(&leaf), "DROP TABLE \"s\".\"p\"\"1\"");
    }
}
