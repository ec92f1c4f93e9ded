//! The SQL the Postgres adapter sends. Identifiers come from the configuration: each is checked
//! against a strict pattern and always double-quoted; every value is a bound parameter.

use super::HotDatasetConfig;

/// Postgres truncates identifiers longer than this; refusing them avoids silent aliasing.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// Accepts plain SQL identifiers: a letter or `_`, then letters, digits, `_` or `$`.
pub fn validate_identifier(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        || name.len() > MAX_IDENTIFIER_BYTES
    {
        return Err(format!(
            "{name:?} is not a plain SQL identifier (a letter or _, then letters, digits, _ or $; \
             at most {MAX_IDENTIFIER_BYTES} bytes)"
        ));
    }
    Ok(())
}

/// A validated identifier, double-quoted (case is kept as written).
pub fn quote(name: &str) -> String {
    format!("\"{name}\"")
}

/// `table` or `schema.table`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QualifiedName {
    pub schema: Option<String>,
    pub table: String,
}

impl QualifiedName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let parts: Vec<&str> = raw.split('.').collect();
        let (schema, table) = match parts.as_slice() {
            [table] => (None, *table),
            [schema, table] => (Some(*schema), *table),
            _ => return Err(format!("{raw:?} must be \"table\" or \"schema.table\"")),
        };
        if let Some(schema) = schema {
            validate_identifier(schema)?;
        }
        validate_identifier(table)?;
        Ok(Self {
            schema: schema.map(str::to_string),
            table: table.to_string(),
        })
    }

    /// The name as SQL: `"schema"."table"` or `"table"`.
    pub fn sql(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", quote(schema), quote(&self.table)),
            None => quote(&self.table),
        }
    }
}

/// The row filter of a range over the given expressions for its bounds and chain.
fn range_filter_over(hot: &HotDatasetConfig, start: &str, end: &str, chain: &str) -> String {
    let range = quote(&hot.range_column);
    let mut filter = format!("{range} >= {start} AND {range} < {end}");
    if hot.chain_id.is_some() {
        filter = format!("{} = {chain} AND {filter}", quote(&hot.chain_column));
    }
    filter
}

/// The row filter of a range: `$1` and `$2` are its bounds, `$3` the chain when one is set.
pub fn range_filter(hot: &HotDatasetConfig) -> String {
    range_filter_over(hot, "$1::int8", "$2::int8", "$3::int8")
}

/// COPY takes no parameters: the export binds the range into these transaction-local
/// settings first ([`EXPORT_SETTINGS`]), and its query reads them back.
const SETTING_START: &str = "compactor.range_start";
const SETTING_END: &str = "compactor.range_end";
const SETTING_CHAIN: &str = "compactor.chain_id";

/// Binds `$1`/`$2`/`$3` (start, end, chain as text) for [`export_copy`], for the transaction.
pub const EXPORT_SETTINGS: &str = "SELECT set_config('compactor.range_start', $1, true), \
     set_config('compactor.range_end', $2, true), set_config('compactor.chain_id', $3, true)";

/// The chain filter alone (for the tip and the first value), `$1` being the chain.
fn chain_only_filter(hot: &HotDatasetConfig) -> String {
    match hot.chain_id {
        Some(_) => format!("WHERE {} = $1::int8", quote(&hot.chain_column)),
        None => String::new(),
    }
}

/// Every row of one range in binary COPY format, in range-column order (deterministic files,
/// useful statistics), the bounds read from [`EXPORT_SETTINGS`].
pub fn export_copy(hot: &HotDatasetConfig, table: &QualifiedName, columns: &[String]) -> String {
    let list: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    let setting = |name: &str| format!("current_setting('{name}')::int8");
    format!(
        "COPY (SELECT {} FROM {} WHERE {} ORDER BY {}) TO STDOUT (FORMAT binary)",
        list.join(", "),
        table.sql(),
        range_filter_over(
            hot,
            &setting(SETTING_START),
            &setting(SETTING_END),
            &setting(SETTING_CHAIN)
        ),
        quote(&hot.range_column)
    )
}

/// Rows per delete batch in one scan; the parameter after the range filter's holds the
/// batches' lower bounds, in order.
pub fn batch_count_query(hot: &HotDatasetConfig, table: &QualifiedName) -> String {
    let bounds = if hot.chain_id.is_some() { "$4" } else { "$3" };
    format!(
        "SELECT width_bucket({}::int8, {bounds}::int8[])::int8 AS batch, count(*)::int8 \
         FROM {} WHERE {} GROUP BY 1",
        quote(&hot.range_column),
        table.sql(),
        range_filter(hot),
    )
}

pub fn delete_query(hot: &HotDatasetConfig, table: &QualifiedName) -> String {
    format!("DELETE FROM {} WHERE {}", table.sql(), range_filter(hot))
}

pub fn max_query(hot: &HotDatasetConfig, table: &QualifiedName) -> String {
    format!(
        "SELECT max({})::int8 FROM {} {}",
        quote(&hot.range_column),
        table.sql(),
        chain_only_filter(hot)
    )
}

pub fn min_query(hot: &HotDatasetConfig, table: &QualifiedName) -> String {
    format!(
        "SELECT min({})::int8 FROM {} {}",
        quote(&hot.range_column),
        table.sql(),
        chain_only_filter(hot)
    )
}

/// The configured tip query, its one column read as an integer.
pub fn tip_query(query: &str) -> String {
    format!(
        "SELECT tip::int8 FROM ({}) AS configured_tip(tip)",
        query.trim().trim_end_matches(';')
    )
}

/// A detached partition's rows: all of them, and those outside the range (must be none).
/// `$1`/`$2`/`$3` as in [`range_filter`]; `partition` is a name Postgres itself quoted.
pub fn partition_count_query(hot: &HotDatasetConfig, partition: &str) -> String {
    format!(
        "SELECT count(*)::int8, (count(*) FILTER (WHERE NOT ({})))::int8 FROM {partition}",
        range_filter(hot)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_strict() {
        for ok in ["blocks", "_x", "Block_Number", "a$1"] {
            validate_identifier(ok).unwrap();
        }
        for bad in [
            "",
            "1abc",
            "a b",
            "a\"b",
            "a;drop",
            "é",
            &"x".repeat(64),
            "a-b",
        ] {
            assert!(validate_identifier(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            QualifiedName::parse("public.blocks").unwrap().sql(),
            "\"public\".\"blocks\""
        );
        assert_eq!(QualifiedName::parse("blocks").unwrap().sql(), "\"blocks\"");
        assert!(QualifiedName::parse("a.b.c").is_err());
        assert!(QualifiedName::parse("a.").is_err());
    }

    #[test]
    fn queries_quote_names_and_bind_values() {
        let mut hot = HotDatasetConfig::new("blocks", "public.blocks");
        let table = hot.table_name().unwrap();
        assert_eq!(
            export_copy(&hot, &table, &["block_number".into(), "hash".into()]),
            "COPY (SELECT \"block_number\", \"hash\" FROM \"public\".\"blocks\" WHERE \
             \"block_number\" >= current_setting('compactor.range_start')::int8 AND \
             \"block_number\" < current_setting('compactor.range_end')::int8 ORDER BY \"block_number\") \
             TO STDOUT (FORMAT binary)"
        );
        assert!(EXPORT_SETTINGS.contains(SETTING_START) && EXPORT_SETTINGS.contains(SETTING_END));
        assert!(EXPORT_SETTINGS.contains(SETTING_CHAIN));
        hot.chain_id = Some(1);
        assert_eq!(
            delete_query(&hot, &table),
            "DELETE FROM \"public\".\"blocks\" WHERE \"chain_id\" = $3::int8 AND \"block_number\" >= $1::int8 \
             AND \"block_number\" < $2::int8"
        );
        let counts = batch_count_query(&hot, &table);
        assert!(
            counts.contains("width_bucket(\"block_number\"::int8, $4::int8[])"),
            "{counts}"
        );
        assert!(counts.contains("\"chain_id\" = $3::int8"), "{counts}");
        assert_eq!(
            max_query(&hot, &table),
            "SELECT max(\"block_number\")::int8 FROM \"public\".\"blocks\" WHERE \"chain_id\" = $1::int8"
        );
        hot.chain_id = None;
        assert!(batch_count_query(&hot, &table).contains("$3::int8[]"));
        assert_eq!(
            tip_query("select head from heads where chain = $1;"),
            "SELECT tip::int8 FROM (select head from heads where chain = $1) AS configured_tip(tip)"
        );
    }
}
