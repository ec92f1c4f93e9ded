//! The columns of a hot table as the port describes them: Postgres types and their Arrow/Parquet
//! counterparts (pure; the wire decoders are the adapter's, in `postgres/decode.rs`).
//!
//! | Postgres | Arrow (Parquet) |
//! |---|---|
//! | `bool` | Boolean |
//! | `int2` / `int4` / `int8` | Int16 / Int32 / Int64 |
//! | `float4` / `float8` | Float32 / Float64 |
//! | `numeric(p,s)` | Decimal128(p,s) up to 38 digits, Decimal256(p,s) up to 76 |
//! | `text`, `varchar`, `bpchar`, `name` | Utf8 |
//! | `json`, `jsonb` | Utf8 with the JSON extension type (Parquet JSON) |
//! | `bytea` | Binary |
//! | `uuid` | FixedSizeBinary(16) with the UUID extension type (Parquet UUID) |
//! | `date` | Date32 |
//! | `time` | Time64(µs) |
//! | `timestamp` / `timestamptz` | Timestamp(µs) / Timestamp(µs, "UTC") |
//! | one-dimensional arrays of the above | List |

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, TimeUnit};

use crate::model::hot::config::UnboundedNumeric;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric { precision: u8, scale: i8 },
    NumericText,
    Text,
    Json,
    Jsonb,
    Bytea,
    Uuid,
    Date,
    Time,
    Timestamp,
    Timestamptz,
    Array(Box<PgType>),
}

/// One exported column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HotColumn {
    pub name: String,
    /// The type as Postgres prints it, for messages.
    pub declared: String,
    pub pg_type: PgType,
    pub nullable: bool,
}

impl HotColumn {
    pub fn field(&self) -> Field {
        self.pg_type.field(&self.name, self.nullable)
    }
}

/// Decodes `typmod` of `numeric(p,s)`; `None` for plain `numeric`. Postgres 15 allows a
/// negative scale, stored as an 11-bit two's complement.
fn numeric_typmod(typmod: i32) -> Option<(u16, i16)> {
    if typmod < 4 {
        return None;
    }
    let bits = typmod - 4;
    let precision = ((bits >> 16) & 0xffff) as u16;
    let scale = (((bits & 0x7ff) ^ 1024) - 1024) as i16;
    Some((precision, scale))
}

impl PgType {
    /// The type of a column from the catalog: its (domain-resolved) type name, type modifier
    /// and, for arrays, the element type name. `Err` says why it is not supported.
    pub fn from_catalog(
        type_name: &str,
        typmod: i32,
        element: Option<&str>,
        unbounded: UnboundedNumeric,
    ) -> Result<PgType, String> {
        if let Some(element) = element {
            let inner = PgType::from_catalog(element, typmod, None, unbounded)?;
            return Ok(PgType::Array(Box::new(inner)));
        }
        Ok(match type_name {
            "bool" => PgType::Bool,
            "int2" => PgType::Int2,
            "int4" => PgType::Int4,
            "int8" => PgType::Int8,
            "float4" => PgType::Float4,
            "float8" => PgType::Float8,
            "text" | "varchar" | "bpchar" | "name" => PgType::Text,
            "json" => PgType::Json,
            "jsonb" => PgType::Jsonb,
            "bytea" => PgType::Bytea,
            "uuid" => PgType::Uuid,
            "date" => PgType::Date,
            "time" => PgType::Time,
            "timestamp" => PgType::Timestamp,
            "timestamptz" => PgType::Timestamptz,
            "numeric" => match (numeric_typmod(typmod), unbounded) {
                (Some((precision @ 1..=38, scale)), _) if scale >= 0 => PgType::Numeric {
                    precision: precision as u8,
                    scale: scale as i8,
                },
                (Some((precision @ 39..=76, scale)), UnboundedNumeric::Decimal256) if scale >= 0 => {
                    PgType::Numeric {
                        precision: precision as u8,
                        scale: scale as i8,
                    }
                }
                (_, UnboundedNumeric::Text) => PgType::NumericText,
                (Some((precision, scale)), _) if scale < 0 => {
                    return Err(format!(
                        "numeric({precision},{scale}) has a negative scale, which Parquet decimals \
                         cannot hold; set unbounded_numeric = \"text\" to export its exact text"
                    ))
                }
                (Some((precision @ 77.., _)), _) => {
                    return Err(format!(
                        "numeric with {precision} digits does not fit a Parquet decimal: a 256-bit \
                         decimal (unbounded_numeric = \"decimal256\") holds at most 76 digits; set \
                         unbounded_numeric = \"text\" to export its exact text"
                    ))
                }
                (Some((precision, _)), _) => {
                    return Err(format!(
                        "numeric with {precision} digits: Spark, Trino/Athena and polars read at most \
                         decimal(38) and DuckDB reads wider ones as DOUBLE; set unbounded_numeric = \"text\" \
                         to export its exact text (or \"decimal256\" for a 256-bit decimal, which holds up to 76 digits)"
                    ))
                }
                (None, _) => {
                    return Err(
                        "numeric without precision and scale has no Parquet decimal of its own; declare \
                         it numeric(P,S), or set unbounded_numeric = \"text\" to export its exact text"
                            .into(),
                    )
                }
            },
            other => {
                return Err(format!(
                    "type {other} is not supported (supported: bool, int2/4/8, float4/8, numeric, \
                     text, varchar, char, name, json, jsonb, bytea, uuid, date, time, timestamp, \
                     timestamptz, and one-dimensional arrays of these); leave the column out with \
                     `columns = [...]`"
                ))
            }
        })
    }

    pub fn data_type(&self) -> DataType {
        match self {
            PgType::Bool => DataType::Boolean,
            PgType::Int2 => DataType::Int16,
            PgType::Int4 => DataType::Int32,
            PgType::Int8 => DataType::Int64,
            PgType::Float4 => DataType::Float32,
            PgType::Float8 => DataType::Float64,
            PgType::Numeric { precision, scale } if *precision <= 38 => {
                DataType::Decimal128(*precision, *scale)
            }
            PgType::Numeric { precision, scale } => DataType::Decimal256(*precision, *scale),
            PgType::NumericText | PgType::Text | PgType::Json | PgType::Jsonb => DataType::Utf8,
            PgType::Bytea => DataType::Binary,
            PgType::Uuid => DataType::FixedSizeBinary(16),
            PgType::Date => DataType::Date32,
            PgType::Time => DataType::Time64(TimeUnit::Microsecond),
            PgType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            PgType::Timestamptz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            PgType::Array(inner) => DataType::List(Arc::new(inner.field("item", true))),
        }
    }

    /// The Arrow field, with the canonical extension type where Parquet has a logical type
    /// for it (UUID, JSON).
    pub fn field(&self, name: &str, nullable: bool) -> Field {
        let field = Field::new(name, self.data_type(), nullable);
        match self {
            PgType::Uuid => field.with_extension_type(arrow_schema::extension::Uuid),
            PgType::Json | PgType::Jsonb => {
                field.with_extension_type(arrow_schema::extension::Json::default())
            }
            _ => field,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_types_map_to_arrow() {
        let t =
            |name, typmod, elem| PgType::from_catalog(name, typmod, elem, UnboundedNumeric::Error);
        assert_eq!(t("int8", -1, None).unwrap().data_type(), DataType::Int64);
        // numeric(20,4): typmod = (20 << 16 | 4) + 4
        assert_eq!(
            t("numeric", (20 << 16 | 4) + 4, None).unwrap().data_type(),
            DataType::Decimal128(20, 4)
        );
        assert!(t("numeric", (60 << 16 | 10) + 4, None)
            .unwrap_err()
            .contains("decimal(38)"));
        assert_eq!(
            PgType::from_catalog(
                "numeric",
                (60 << 16 | 10) + 4,
                None,
                UnboundedNumeric::Decimal256
            )
            .unwrap()
            .data_type(),
            DataType::Decimal256(60, 10)
        );
        assert!(PgType::from_catalog("numeric", -1, None, UnboundedNumeric::Decimal256).is_err());
        // numeric(5,-2): the scale is an 11-bit two's complement, and negative scales have no
        // Parquet decimal.
        let negative = ((5 << 16) | (0x7ff & -2i32)) + 4;
        assert_eq!(numeric_typmod(negative), Some((5, -2)));
        assert!(t("numeric", negative, None)
            .unwrap_err()
            .contains("negative scale"));
        let e = t("numeric", -1, None).unwrap_err();
        assert!(e.contains("unbounded_numeric"), "{e}");
        assert!(t("numeric", (78 << 16) + 4, None).is_err());
        assert_eq!(
            PgType::from_catalog("numeric", -1, None, UnboundedNumeric::Text).unwrap(),
            PgType::NumericText
        );
        let list = t("_int4", -1, Some("int4")).unwrap();
        assert!(matches!(list.data_type(), DataType::List(f) if f.data_type() == &DataType::Int32));
        let e = t("interval", -1, None).unwrap_err();
        assert!(e.contains("interval") && e.contains("columns"), "{e}");
        assert_eq!(
            t("timestamptz", -1, None).unwrap().data_type(),
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        let uuid = t("uuid", -1, None).unwrap().field("id", false);
        assert_eq!(
            uuid.extension_type_name(),
            Some(<arrow_schema::extension::Uuid as arrow_schema::extension::ExtensionType>::NAME)
        );
    }
}
