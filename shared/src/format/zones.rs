//! Time zones of timestamp columns, as the writer of an input declared them.
//!
//! Parquet stores a timestamp as an instant (`isAdjustedToUTC`) in ms, µs or ns; the zone, and
//! a unit Parquet lacks (seconds), live only in the Arrow schema the writer embedded
//! (`ARROW:schema`). The Arrow reader takes that zone only when the units agree, so a
//! `timestamp[s, tz=America/New_York]` column would come back as `timestamp[ms, tz=UTC]`.
//! Readers such as pyarrow keep the embedded zone with the stored unit; so does the merge.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use base64::Engine;
use parquet::file::metadata::ParquetMetaData;

/// The Arrow schema an input's writer embedded, if it can be read.
fn embedded_schema(metadata: &ParquetMetaData) -> Option<Schema> {
    let encoded = metadata
        .file_metadata()
        .key_value_metadata()?
        .iter()
        .find(|kv| kv.key == "ARROW:schema")?
        .value
        .clone()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    // An IPC message may start with the continuation marker and a length.
    let slice = if bytes.len() > 8 && bytes[..4] == [0xff; 4] {
        &bytes[8..]
    } else {
        &bytes[..]
    };
    let message = arrow::ipc::root_as_message(slice).ok()?;
    arrow::ipc::convert::try_fb_to_schema(message.header_as_schema()?).ok()
}

/// `read` with each timestamp's zone taken from `declared` where the two differ only there
/// (and in unit), through lists, structs and maps.
fn with_zones(read: &DataType, declared: &DataType) -> DataType {
    match (read, declared) {
        (DataType::Timestamp(unit, zone), DataType::Timestamp(_, Some(declared_zone)))
            if zone.as_deref() != Some(declared_zone.as_ref()) =>
        {
            DataType::Timestamp(*unit, Some(Arc::clone(declared_zone)))
        }
        (DataType::List(a), DataType::List(b) | DataType::LargeList(b)) => {
            DataType::List(Arc::new(field_with_zones(a, b)))
        }
        (DataType::LargeList(a), DataType::List(b) | DataType::LargeList(b)) => {
            DataType::LargeList(Arc::new(field_with_zones(a, b)))
        }
        (DataType::Struct(a), DataType::Struct(b)) => DataType::Struct(fields_with_zones(a, b)),
        (DataType::Map(a, sorted), DataType::Map(b, _)) => {
            DataType::Map(Arc::new(field_with_zones(a, b)), *sorted)
        }
        _ => read.clone(),
    }
}

fn field_with_zones(read: &Field, declared: &Field) -> Field {
    read.clone()
        .with_data_type(with_zones(read.data_type(), declared.data_type()))
}

fn fields_with_zones(read: &Fields, declared: &Fields) -> Fields {
    read.iter()
        .map(|f| match declared.iter().find(|d| d.name() == f.name()) {
            Some(d) => Arc::new(field_with_zones(f, d)),
            None => Arc::clone(f),
        })
        .collect()
}

/// The schema the merge reads an input as: the Arrow reader's, with the zones its writer
/// declared.
pub fn declared_zones(read: &SchemaRef, metadata: &ParquetMetaData) -> SchemaRef {
    let Some(declared) = embedded_schema(metadata) else {
        return Arc::clone(read);
    };
    let fields = fields_with_zones(read.fields(), declared.fields());
    if fields == *read.fields() {
        return Arc::clone(read);
    }
    Arc::new(Schema::new_with_metadata(fields, read.metadata().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::TimeUnit;

    #[test]
    fn zones_come_from_the_declared_type_and_units_from_the_stored_one() {
        let read = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        let declared = DataType::Timestamp(TimeUnit::Second, Some("America/New_York".into()));
        assert_eq!(
            with_zones(&read, &declared),
            DataType::Timestamp(TimeUnit::Millisecond, Some("America/New_York".into()))
        );
        let naive = DataType::Timestamp(TimeUnit::Second, None);
        assert_eq!(with_zones(&read, &naive), read, "no zone declared: kept");
        let list = DataType::List(Arc::new(Field::new("element", read.clone(), true)));
        let declared_list = DataType::List(Arc::new(Field::new("element", declared.clone(), true)));
        assert_eq!(
            with_zones(&list, &declared_list),
            DataType::List(Arc::new(Field::new(
                "element",
                DataType::Timestamp(TimeUnit::Millisecond, Some("America/New_York".into())),
                true
            )))
        );
        assert_eq!(with_zones(&DataType::Int64, &declared), DataType::Int64);
    }
}
