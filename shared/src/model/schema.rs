//! Unifying the schemas of a partition's inputs. Compatible drift is absorbed: a column missing
//! from some files becomes nullable, columns are matched by name whatever their order, integers
//! and floats widen, string/binary offsets widen, dictionary encoding is dropped when files
//! disagree. Anything else stops the merge with every conflict named.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};

use crate::error::{Error, Result};

/// Merges input schemas (with the key of the file each came from) into one.
pub fn unify(partition: &str, inputs: &[(String, SchemaRef)], drop: &[&str]) -> Result<SchemaRef> {
    struct Column {
        field: Field,
        first_file: String,
        seen_in: usize,
    }
    let mut columns: Vec<Column> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut conflicts: Vec<String> = Vec::new();
    for (key, schema) in inputs {
        let mut names_in_file = std::collections::HashSet::new();
        for field in schema.fields() {
            if drop.contains(&field.name().as_str()) {
                continue;
            }
            if !names_in_file.insert(field.name().clone()) {
                conflicts.push(format!("column {:?} appears twice in {key}", field.name()));
                continue;
            }
            match by_name.get(field.name()) {
                Some(&i) => {
                    let column = &mut columns[i];
                    match widen(column.field.data_type(), field.data_type()) {
                        Some(t) => {
                            let nullable = column.field.is_nullable() || field.is_nullable();
                            column.field = column
                                .field
                                .clone()
                                .with_data_type(t)
                                .with_nullable(nullable);
                            column.seen_in += 1;
                        }
                        None => conflicts.push(format!(
                            "column {:?} is {} in {} but {} in {key}",
                            field.name(),
                            column.field.data_type(),
                            column.first_file,
                            field.data_type()
                        )),
                    }
                }
                None => {
                    by_name.insert(field.name().clone(), columns.len());
                    columns.push(Column {
                        field: field.as_ref().clone(),
                        first_file: key.clone(),
                        seen_in: 1,
                    });
                }
            }
        }
    }
    if !conflicts.is_empty() {
        let total = conflicts.len();
        conflicts.truncate(10);
        let mut details = conflicts.join("; ");
        if total > 10 {
            details.push_str(&format!("; and {} more", total - 10));
        }
        return Err(Error::IncompatibleSchema {
            partition: partition.to_string(),
            details,
        });
    }
    let files = inputs.len();
    let fields: Vec<Field> = columns
        .into_iter()
        .map(|c| {
            let nullable = c.field.is_nullable() || c.seen_in < files;
            c.field.with_nullable(nullable)
        })
        .collect();
    Ok(Arc::new(Schema::new(fields)))
}

/// The common type of two column types, if one can hold every value of the other.
fn widen(a: &DataType, b: &DataType) -> Option<DataType> {
    use DataType::*;
    if a == b {
        return Some(a.clone());
    }
    match (a, b) {
        (Dictionary(_, v), other) | (other, Dictionary(_, v)) => widen(v, other),
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => Some(LargeUtf8),
        (Binary | LargeBinary | BinaryView, Binary | LargeBinary | BinaryView) => Some(LargeBinary),
        (Float16 | Float32 | Float64, Float16 | Float32 | Float64) => {
            Some(if a == &Float64 || b == &Float64 {
                Float64
            } else {
                Float32
            })
        }
        (Decimal128(p1, s1), Decimal128(p2, s2)) => {
            let scale = (*s1).max(*s2);
            let int_digits = (*p1 as i16 - *s1 as i16).max(*p2 as i16 - *s2 as i16);
            let precision = int_digits + scale as i16;
            (precision <= 38).then_some(Decimal128(precision as u8, scale))
        }
        (List(fa), List(fb)) => widen_field(fa, fb).map(List),
        (LargeList(fa), LargeList(fb)) => widen_field(fa, fb).map(LargeList),
        (Struct(fa), Struct(fb)) if fa.len() == fb.len() => {
            let fields: Option<Vec<FieldRef>> = fa
                .iter()
                .zip(fb.iter())
                .map(|(x, y)| (x.name() == y.name()).then(|| widen_field(x, y)).flatten())
                .collect();
            fields.map(|f| Struct(f.into()))
        }
        _ => widen_integer(a, b),
    }
}

fn widen_field(a: &FieldRef, b: &FieldRef) -> Option<FieldRef> {
    let t = widen(a.data_type(), b.data_type())?;
    Some(Arc::new(
        a.as_ref()
            .clone()
            .with_data_type(t)
            .with_nullable(a.is_nullable() || b.is_nullable()),
    ))
}

fn widen_integer(a: &DataType, b: &DataType) -> Option<DataType> {
    use DataType::*;
    fn class(t: &DataType) -> Option<(bool, u32)> {
        Some(match t {
            Int8 => (true, 8),
            Int16 => (true, 16),
            Int32 => (true, 32),
            Int64 => (true, 64),
            UInt8 => (false, 8),
            UInt16 => (false, 16),
            UInt32 => (false, 32),
            UInt64 => (false, 64),
            _ => return None,
        })
    }
    let (sa, ba) = class(a)?;
    let (sb, bb) = class(b)?;
    let bits = match (sa, sb) {
        (true, true) | (false, false) => ba.max(bb),
        // A signed type holds an unsigned one only with one more bit.
        (true, false) => ba.max(bb * 2),
        (false, true) => bb.max(ba * 2),
    };
    let signed = sa || sb;
    match (signed, bits) {
        (true, 8) => Some(Int8),
        (true, 16) => Some(Int16),
        (true, 32) => Some(Int32),
        (true, 64) => Some(Int64),
        (false, 8) => Some(UInt8),
        (false, 16) => Some(UInt16),
        (false, 32) => Some(UInt32),
        (false, 64) => Some(UInt64),
        _ => None,
    }
}

/// Reshapes a batch to the unified schema: columns by name, missing ones as nulls, types cast.
pub fn conform(
    batch: &RecordBatch,
    target: &SchemaRef,
) -> std::result::Result<RecordBatch, String> {
    let rows = batch.num_rows();
    let columns: Vec<ArrayRef> = target
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(col) if col.data_type() == field.data_type() => Ok(Arc::clone(col)),
            Some(col) => arrow::compute::cast(col, field.data_type()).map_err(|e| {
                format!(
                    "cannot convert column {:?} to {}: {e}",
                    field.name(),
                    field.data_type()
                )
            }),
            None => Ok(new_null_array(field.data_type(), rows)),
        })
        .collect::<std::result::Result<_, _>>()?;
    RecordBatch::try_new(Arc::clone(target), columns).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, Int64Array, StringArray};

    fn schema(fields: Vec<Field>) -> SchemaRef {
        Arc::new(Schema::new(fields))
    }

    #[test]
    fn compatible_drift_is_unified() {
        let a = schema(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("name", DataType::Utf8, false),
        ]);
        let b = schema(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("id", DataType::Int64, false),
            Field::new("extra", DataType::Float64, true),
        ]);
        let u = unify("p", &[("a".into(), a.clone()), ("b".into(), b)], &[]).unwrap();
        assert_eq!(u.field(0), &Field::new("id", DataType::Int64, false));
        assert_eq!(u.field(1), &Field::new("name", DataType::Utf8, false));
        assert_eq!(u.field(2), &Field::new("extra", DataType::Float64, true));

        let batch = RecordBatch::try_new(
            a,
            vec![
                Arc::new(Int32Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec!["x", "y"])),
            ],
        )
        .unwrap();
        let c = conform(&batch, &u).unwrap();
        assert_eq!(c.schema(), u);
        assert_eq!(
            c.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values(),
            &[1, 2]
        );
        assert_eq!(c.column(2).null_count(), 2);
    }

    #[test]
    fn a_column_missing_from_some_files_becomes_nullable() {
        let a = schema(vec![Field::new("id", DataType::Int64, false)]);
        let b = schema(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
        ]);
        let u = unify("p", &[("a".into(), a), ("b".into(), b)], &[]).unwrap();
        assert!(u.field_with_name("v").unwrap().is_nullable());
        assert!(!u.field_with_name("id").unwrap().is_nullable());
    }

    #[test]
    fn incompatible_types_are_named_with_their_files() {
        let a = schema(vec![Field::new("id", DataType::Int64, false)]);
        let b = schema(vec![Field::new("id", DataType::Utf8, false)]);
        let e = unify(
            "dt=1",
            &[("p/a.parquet".into(), a), ("p/b.parquet".into(), b)],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("\"id\"") && e.contains("p/a.parquet") && e.contains("p/b.parquet"),
            "{e}"
        );
    }

    #[test]
    fn integer_widening_rules() {
        use DataType::*;
        assert_eq!(widen(&Int8, &Int32), Some(Int32));
        assert_eq!(widen(&UInt32, &Int32), Some(Int64));
        assert_eq!(widen(&UInt16, &UInt64), Some(UInt64));
        assert_eq!(widen(&UInt64, &Int64), None);
        assert_eq!(widen(&Int64, &Float64), None);
        assert_eq!(widen(&Float32, &Float64), Some(Float64));
        assert_eq!(
            widen(&Decimal128(10, 2), &Decimal128(12, 4)),
            Some(Decimal128(12, 4))
        );
        assert_eq!(
            widen(&Dictionary(Box::new(Int32), Box::new(Utf8)), &Utf8),
            Some(Utf8)
        );
    }

    #[test]
    fn dropped_columns_are_ignored() {
        let a = schema(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("seq", DataType::Int64, false),
        ]);
        let u = unify("p", &[("a".into(), a)], &["seq"]).unwrap();
        assert_eq!(u.fields().len(), 1);
    }
}
