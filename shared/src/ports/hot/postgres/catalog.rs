//! What the catalog says about a hot table: its columns (checked and mapped to Arrow) and its
//! partition tree (to find a child partition holding exactly one range). Names read here reach
//! SQL only through [`sql::quote_ident`](crate::model::hot::names::quote_ident).

use tokio_postgres::Client;

use super::pg_err;
use crate::error::{Error, Result};
use crate::model::hot::config::HotDatasetConfig;
use crate::model::hot::names::QualifiedName;
use crate::model::hot::range::KeyRange;
use crate::ports::hot::columns::HotColumn;
use crate::ports::hot::columns::PgType;
use crate::ports::hot::PartitionPair;

pub struct CatalogColumn {
    pub name: String,
    pub type_name: String,
    pub typmod: i32,
    pub element: Option<String>,
    pub not_null: bool,
    pub declared: String,
}

const CATALOG_QUERY: &str = "\
SELECT a.attname::text,
       bt.typname::text,
       CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END,
       CASE WHEN bt.typcategory = 'A' THEN et.typname::text END,
       a.attnotnull,
       format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
LEFT JOIN pg_type et ON et.oid = bt.typelem
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum";

/// The partition tree under a table, with each node's schema and name, its bound, and (for a
/// partitioned node) its strategy and key columns (an expression key has a 0 attnum and so
/// fewer names than `partnatts`).
const PARTITION_TREE_QUERY: &str = "\
SELECT t.relid::oid,
       t.parentrelid::oid,
       t.isleaf,
       n.nspname::text,
       c.relname::text,
       coalesce(pg_get_expr(c.relpartbound, c.oid), ''),
       coalesce(pt.partstrat::text, ''),
       coalesce(pt.partnatts::int4, 0),
       coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord)
                 FROM unnest(pt.partattrs::int2[]) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum),
                '{}')
FROM pg_partition_tree($1::oid::regclass) t
JOIN pg_class c ON c.oid = t.relid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_partitioned_table pt ON pt.partrelid = c.oid";

pub async fn table_oid(client: &Client, table: &QualifiedName) -> Result<u32> {
    // The quoted name is a bound value here, parsed by Postgres's own regclass input.
    let row = client
        .query_one("SELECT to_regclass($1)::oid", &[&table.sql()])
        .await
        .map_err(pg_err(format!("looking up table {}", table.sql())))?;
    row.get::<_, Option<u32>>(0).ok_or_else(|| Error::Postgres {
        context: format!("table {}", table.sql()),
        message: "does not exist (names are case-sensitive as written; qualify it with its schema if it is not on the search_path)".into(),
    })
}

/// The rows of a catalog `query` whose one parameter is `table`'s oid; `what` names them in
/// errors.
async fn rows_of_table(
    client: &Client,
    table: &QualifiedName,
    query: &str,
    what: &str,
) -> Result<Vec<tokio_postgres::Row>> {
    let oid = table_oid(client, table).await?;
    client
        .query(query, &[&oid])
        .await
        .map_err(pg_err(format!("reading {what} of {}", table.sql())))
}

pub async fn catalog_columns(client: &Client, table: &QualifiedName) -> Result<Vec<CatalogColumn>> {
    let rows = rows_of_table(client, table, CATALOG_QUERY, "the columns").await?;
    Ok(rows
        .iter()
        .map(|r| CatalogColumn {
            name: r.get(0),
            type_name: r.get(1),
            typmod: r.get(2),
            element: r.get(3),
            not_null: r.get(4),
            declared: r.get(5),
        })
        .collect())
}

fn is_integer(type_name: &str) -> bool {
    matches!(type_name, "int2" | "int4" | "int8")
}

/// Checks the configured columns against the catalog and maps each to Arrow.
pub fn select_columns(
    hot: &HotDatasetConfig,
    table: &QualifiedName,
    catalog: Vec<CatalogColumn>,
) -> Result<Vec<HotColumn>> {
    let unsupported = |column: &str, declared: &str, reason: String| Error::UnsupportedColumn {
        table: table.sql(),
        column: column.to_string(),
        declared: declared.to_string(),
        reason,
    };
    let find = |name: &str| catalog.iter().find(|c| c.name == name);
    let missing = |name: &str, field: &str| Error::Postgres {
        context: format!("table {}", table.sql()),
        message: format!(
            "has no column {name:?} (hot dataset {:?}: {field})",
            hot.name
        ),
    };
    // A column a setting names must exist and be of a type that setting accepts.
    let require =
        |name: &str, field: &str, accepts: &dyn Fn(&CatalogColumn) -> bool, why: &str| match find(
            name,
        ) {
            Some(c) if accepts(c) => Ok(()),
            Some(c) => Err(unsupported(name, &c.declared, why.to_string())),
            None => Err(missing(name, field)),
        };
    let integer = |c: &CatalogColumn| is_integer(&c.type_name) && c.element.is_none();
    let integers = "ranges and chains must be integer columns (int2, int4, int8)";
    require(&hot.range_column, "range_column", &integer, integers)?;
    if hot.chain_id.is_some() {
        require(&hot.chain_column, "chain_column", &integer, integers)?;
    }
    for name in &hot.numeric_as_text {
        require(
            name,
            "numeric_as_text",
            &|c| c.type_name == "numeric",
            "numeric_as_text lists only numeric columns",
        )?;
    }
    let chosen: Vec<&CatalogColumn> = if hot.columns.is_empty() {
        catalog.iter().collect()
    } else {
        hot.columns
            .iter()
            .map(|name| find(name).ok_or_else(|| missing(name, "columns")))
            .collect::<Result<_>>()?
    };
    chosen
        .into_iter()
        .map(|c| {
            let pg_type = if hot.numeric_as_text.contains(&c.name) {
                PgType::NumericText
            } else {
                PgType::from_catalog(
                    &c.type_name,
                    c.typmod,
                    c.element.as_deref(),
                    hot.unbounded_numeric,
                )
                .map_err(|reason| unsupported(&c.name, &c.declared, reason))?
            };
            Ok(HotColumn {
                name: c.name.clone(),
                declared: c.declared.clone(),
                pg_type,
                nullable: !c.not_null,
            })
        })
        .collect()
}

/// One node of `pg_partition_tree`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionNode {
    pub oid: u32,
    pub parent: Option<u32>,
    pub is_leaf: bool,
    pub name: QualifiedName,
    /// `FOR VALUES ...` as Postgres prints it (empty for the root).
    pub bound: String,
    /// `r` (range), `l` (list) or `h` (hash) for a partitioned node, else empty.
    pub strategy: String,
    /// The key columns of a partitioned node; `None` when the key has an expression.
    pub key: Option<Vec<String>>,
}

pub async fn partition_tree(client: &Client, table: &QualifiedName) -> Result<Vec<PartitionNode>> {
    let rows = rows_of_table(client, table, PARTITION_TREE_QUERY, "the partitions").await?;
    Ok(rows
        .iter()
        .map(|r| {
            let natts: i32 = r.get(7);
            let names: Vec<String> = r.get(8);
            PartitionNode {
                oid: r.get(0),
                parent: r.get(1),
                is_leaf: r.get(2),
                name: QualifiedName {
                    schema: Some(r.get(3)),
                    table: r.get(4),
                },
                bound: r.get(5),
                strategy: r.get(6),
                key: (names.len() as i32 == natts).then_some(names),
            }
        })
        .collect())
}

/// The integers of a bound list such as `('1', '0')` or `(1)`.
fn bound_values(list: &str) -> Option<Vec<i64>> {
    list.strip_prefix('(')?
        .strip_suffix(')')?
        .split(", ")
        .map(|v| v.trim_matches('\'').parse().ok())
        .collect()
}

/// The bounds of a range partition, `FROM (a, ...) TO (b, ...)`, as `N` values each.
fn range_bound<const N: usize>(bound: &str) -> Option<([i64; N], [i64; N])> {
    let (from, to) = bound.strip_prefix("FROM ")?.split_once(" TO ")?;
    let values = |v: &str| <[i64; N]>::try_from(bound_values(v)?).ok();
    Some((values(from)?, values(to)?))
}

/// The leaf partition holding exactly `range` (and, with a chain filter, exactly that chain):
/// found from the bounds of the leaf and its ancestors. Supported shapes: `RANGE (range)`,
/// `RANGE (chain, range)`, and `LIST (chain)` above `RANGE (range)`.
pub fn find_exact_partition(
    nodes: &[PartitionNode],
    hot: &HotDatasetConfig,
    range: KeyRange,
) -> Option<PartitionPair> {
    let by_oid = |oid: u32| nodes.iter().find(|n| n.oid == oid);
    'leaves: for leaf in nodes.iter().filter(|n| n.is_leaf) {
        let mut range_bounds = None;
        let mut chain = None;
        let mut node = leaf;
        while let Some(parent) = node.parent.and_then(by_oid) {
            let Some(columns) = &parent.key else {
                continue 'leaves;
            };
            let names: Vec<&str> = columns.iter().map(String::as_str).collect();
            let Some(bound) = node.bound.strip_prefix("FOR VALUES ") else {
                continue 'leaves;
            };
            match (parent.strategy.as_str(), names.as_slice()) {
                ("r", [col]) if *col == hot.range_column => match range_bound(bound) {
                    Some(([s], [e])) => range_bounds = Some((s, e)),
                    _ => continue 'leaves,
                },
                ("r", [c, r]) if *c == hot.chain_column && *r == hot.range_column => {
                    match range_bound(bound) {
                        Some(([c1, s], [c2, e])) if c1 == c2 => {
                            chain = Some(c1);
                            range_bounds = Some((s, e));
                        }
                        _ => continue 'leaves,
                    }
                }
                ("l", [col]) if *col == hot.chain_column => {
                    match bound.strip_prefix("IN ").and_then(bound_values).as_deref() {
                        Some([c]) => chain = Some(*c),
                        _ => continue 'leaves,
                    }
                }
                _ => continue 'leaves,
            }
            node = parent;
        }
        let chain_ok = match hot.chain_id {
            Some(c) => chain == Some(c),
            None => true,
        };
        if chain_ok && range_bounds == Some((range.start, range.end)) {
            if let Some(parent) = leaf.parent.and_then(by_oid) {
                return Some(PartitionPair {
                    partition: leaf.name.clone(),
                    parent: parent.name.clone(),
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(
        oid: u32,
        name: &str,
        parent: Option<u32>,
        bound: &str,
        strategy: &str,
        key: &[&str],
    ) -> PartitionNode {
        PartitionNode {
            oid,
            parent,
            is_leaf: strategy.is_empty(),
            name: QualifiedName {
                schema: Some("s".into()),
                table: name.into(),
            },
            bound: bound.into(),
            strategy: strategy.into(),
            key: Some(key.iter().map(|k| k.to_string()).collect()),
        }
    }

    fn hot(chain: Option<i64>) -> HotDatasetConfig {
        HotDatasetConfig {
            chain_id: chain,
            range_size: 100,
            ..HotDatasetConfig::new("b", "b")
        }
    }

    const R: KeyRange = KeyRange { start: 0, end: 100 };

    fn found(nodes: &[PartitionNode], hot: &HotDatasetConfig, range: KeyRange) -> Option<String> {
        find_exact_partition(nodes, hot, range)
            .map(|p| format!("{} of {}", p.partition.table, p.parent.table))
    }

    #[test]
    fn range_partitions_on_the_range_column() {
        let nodes = vec![
            node(1, "q", None, "", "r", &["block_number"]),
            node(
                2,
                "q\"0",
                Some(1),
                "FOR VALUES FROM ('0') TO ('100')",
                "",
                &[],
            ),
            node(
                3,
                "q_1",
                Some(1),
                "FOR VALUES FROM ('100') TO ('300')",
                "",
                &[],
            ),
        ];
        assert_eq!(found(&nodes, &hot(None), R), Some("q\"0 of q".into()));
        // With a chain filter, a partition holding every chain is not exact.
        assert_eq!(found(&nodes, &hot(Some(1)), R), None);
        assert_eq!(
            found(
                &nodes,
                &hot(None),
                KeyRange {
                    start: 100,
                    end: 200
                }
            ),
            None
        );
        let pair = find_exact_partition(&nodes, &hot(None), R).unwrap();
        assert_eq!(pair.partition.sql(), "\"s\".\"q\"\"0\"");
    }

    #[test]
    fn chain_and_range_partitions() {
        let two_columns = vec![
            node(1, "p", None, "", "r", &["chain_id", "block_number"]),
            node(
                2,
                "p_1",
                Some(1),
                "FOR VALUES FROM ('1', '0') TO ('1', '100')",
                "",
                &[],
            ),
            node(
                3,
                "p_2",
                Some(1),
                "FOR VALUES FROM ('2', '0') TO ('2', '100')",
                "",
                &[],
            ),
            node(
                4,
                "p_x",
                Some(1),
                "FOR VALUES FROM ('2', '100') TO ('3', '0')",
                "",
                &[],
            ),
        ];
        assert_eq!(
            found(&two_columns, &hot(Some(2)), R),
            Some("p_2 of p".into())
        );
        assert_eq!(found(&two_columns, &hot(Some(3)), R), None);
        let list_then_range = vec![
            node(1, "r", None, "", "l", &["chain_id"]),
            node(
                2,
                "r_1",
                Some(1),
                "FOR VALUES IN ('1')",
                "r",
                &["block_number"],
            ),
            node(
                3,
                "r_1_0",
                Some(2),
                "FOR VALUES FROM ('0') TO ('100')",
                "",
                &[],
            ),
            node(4, "r_d", Some(1), "DEFAULT", "", &[]),
        ];
        assert_eq!(
            found(&list_then_range, &hot(Some(1)), R),
            Some("r_1_0 of r_1".into())
        );
        assert_eq!(found(&list_then_range, &hot(Some(2)), R), None);
    }

    #[test]
    fn plain_tables_and_expression_keys_have_no_exact_partition() {
        let plain = vec![PartitionNode {
            is_leaf: true,
            ..node(1, "t", None, "", "", &[])
        }];
        assert_eq!(found(&plain, &hot(None), R), None);
        let mut expression = vec![
            node(1, "e", None, "", "r", &[]),
            node(
                2,
                "e_0",
                Some(1),
                "FOR VALUES FROM ('0') TO ('100')",
                "",
                &[],
            ),
        ];
        expression[0].key = None;
        assert_eq!(found(&expression, &hot(None), R), None);
    }
}
