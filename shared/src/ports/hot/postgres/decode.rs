//! Decoders from Postgres's binary wire format into Arrow arrays, one builder per exported
//! column. Pure: every rule is unit-tested on hand-made bytes.
//!
//! About 470 lines of decoders; the rest of the file is their tests.

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Decimal256Builder, FixedSizeBinaryBuilder, Float32Builder, Float64Builder, Int16Builder,
    Int32Builder, Int64Builder, ListArray, NullBufferBuilder, StringBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{i256, FieldRef};

use crate::ports::hot::columns::PgType;

/// Microseconds and days between the Unix epoch and Postgres's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const PG_EPOCH_DAYS: i32 = 10_957;

/// Builds one Arrow column from Postgres binary values.
pub enum ColumnBuilder {
    Bool(BooleanBuilder),
    Int2(Int16Builder),
    Int4(Int32Builder),
    Int8(Int64Builder),
    Float4(Float32Builder),
    Float8(Float64Builder),
    Decimal128(Decimal128Builder, i8),
    Decimal256(Decimal256Builder, i8),
    NumericText(StringBuilder),
    Text(StringBuilder),
    Jsonb(StringBuilder),
    Bytea(BinaryBuilder),
    Uuid(FixedSizeBinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    List(Box<ListBuilder>),
}

pub struct ListBuilder {
    field: FieldRef,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
    child: ColumnBuilder,
}

fn be<const N: usize>(bytes: &[u8], what: &str) -> Result<[u8; N], String> {
    bytes
        .try_into()
        .map_err(|_| format!("{what} value of {} bytes (expected {N})", bytes.len()))
}

fn utf8<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str, String> {
    std::str::from_utf8(bytes).map_err(|e| format!("{what} value is not UTF-8: {e}"))
}

impl ColumnBuilder {
    pub fn new(pg_type: &PgType, capacity: usize) -> Result<Self, String> {
        let decimal = |e: arrow::error::ArrowError| e.to_string();
        Ok(match pg_type {
            PgType::Bool => Self::Bool(BooleanBuilder::with_capacity(capacity)),
            PgType::Int2 => Self::Int2(Int16Builder::with_capacity(capacity)),
            PgType::Int4 => Self::Int4(Int32Builder::with_capacity(capacity)),
            PgType::Int8 => Self::Int8(Int64Builder::with_capacity(capacity)),
            PgType::Float4 => Self::Float4(Float32Builder::with_capacity(capacity)),
            PgType::Float8 => Self::Float8(Float64Builder::with_capacity(capacity)),
            PgType::Numeric { precision, scale } if *precision <= 38 => Self::Decimal128(
                Decimal128Builder::with_capacity(capacity)
                    .with_precision_and_scale(*precision, *scale)
                    .map_err(decimal)?,
                *scale,
            ),
            PgType::Numeric { precision, scale } => Self::Decimal256(
                Decimal256Builder::with_capacity(capacity)
                    .with_precision_and_scale(*precision, *scale)
                    .map_err(decimal)?,
                *scale,
            ),
            PgType::NumericText => Self::NumericText(StringBuilder::with_capacity(capacity, 0)),
            PgType::Text | PgType::Json => Self::Text(StringBuilder::with_capacity(capacity, 0)),
            PgType::Jsonb => Self::Jsonb(StringBuilder::with_capacity(capacity, 0)),
            PgType::Bytea => Self::Bytea(BinaryBuilder::with_capacity(capacity, 0)),
            PgType::Uuid => Self::Uuid(FixedSizeBinaryBuilder::with_capacity(capacity, 16)),
            PgType::Date => Self::Date(Date32Builder::with_capacity(capacity)),
            PgType::Time => Self::Time(Time64MicrosecondBuilder::with_capacity(capacity)),
            PgType::Timestamp => {
                Self::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity))
            }
            PgType::Timestamptz => Self::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            ),
            PgType::Array(inner) => {
                let mut offsets = Vec::with_capacity(capacity + 1);
                offsets.push(0);
                Self::List(Box::new(ListBuilder {
                    field: Arc::new(inner.field("item", true)),
                    offsets,
                    nulls: NullBufferBuilder::new(capacity),
                    child: ColumnBuilder::new(inner, capacity)?,
                }))
            }
        })
    }

    /// Appends one value (`None` is SQL NULL) in Postgres's binary format.
    pub fn append(&mut self, value: Option<&[u8]>) -> Result<(), String> {
        let Some(v) = value else {
            self.append_null();
            return Ok(());
        };
        match self {
            Self::Bool(b) => b.append_value(be::<1>(v, "bool")?[0] != 0),
            Self::Int2(b) => b.append_value(i16::from_be_bytes(be(v, "int2")?)),
            Self::Int4(b) => b.append_value(i32::from_be_bytes(be(v, "int4")?)),
            Self::Int8(b) => b.append_value(i64::from_be_bytes(be(v, "int8")?)),
            Self::Float4(b) => b.append_value(f32::from_be_bytes(be(v, "float4")?)),
            Self::Float8(b) => b.append_value(f64::from_be_bytes(be(v, "float8")?)),
            Self::Decimal128(b, scale) => b.append_value(numeric_scaled::<i128>(v, *scale)?),
            Self::Decimal256(b, scale) => b.append_value(numeric_scaled::<i256>(v, *scale)?),
            Self::NumericText(b) => b.append_value(numeric_text(v)?),
            Self::Text(b) => b.append_value(utf8(v, "text")?),
            Self::Jsonb(b) => match v.split_first() {
                Some((1, text)) => b.append_value(utf8(text, "jsonb")?),
                _ => return Err("jsonb value in an unknown binary version".into()),
            },
            Self::Bytea(b) => b.append_value(v),
            Self::Uuid(b) => b
                .append_value(be::<16>(v, "uuid")?)
                .map_err(|e| e.to_string())?,
            Self::Date(b) => {
                let days = i32::from_be_bytes(be(v, "date")?);
                if days == i32::MAX || days == i32::MIN {
                    return Err("date is infinity, which Parquet dates cannot hold".into());
                }
                b.append_value(days.checked_add(PG_EPOCH_DAYS).ok_or("date out of range")?)
            }
            Self::Time(b) => b.append_value(i64::from_be_bytes(be(v, "time")?)),
            Self::Timestamp(b) => {
                let micros = i64::from_be_bytes(be(v, "timestamp")?);
                if micros == i64::MAX || micros == i64::MIN {
                    return Err(
                        "timestamp is infinity, which Parquet timestamps cannot hold".into(),
                    );
                }
                b.append_value(
                    micros
                        .checked_add(PG_EPOCH_MICROS)
                        .ok_or("timestamp out of range")?,
                )
            }
            Self::List(list) => list.append_array(v)?,
        }
        Ok(())
    }

    fn append_null(&mut self) {
        match self {
            Self::Bool(b) => b.append_null(),
            Self::Int2(b) => b.append_null(),
            Self::Int4(b) => b.append_null(),
            Self::Int8(b) => b.append_null(),
            Self::Float4(b) => b.append_null(),
            Self::Float8(b) => b.append_null(),
            Self::Decimal128(b, _) => b.append_null(),
            Self::Decimal256(b, _) => b.append_null(),
            Self::NumericText(b) | Self::Text(b) | Self::Jsonb(b) => b.append_null(),
            Self::Bytea(b) => b.append_null(),
            Self::Uuid(b) => b.append_null(),
            Self::Date(b) => b.append_null(),
            Self::Time(b) => b.append_null(),
            Self::Timestamp(b) => b.append_null(),
            Self::List(list) => {
                let last = list.offsets.last().copied().unwrap_or(0);
                list.offsets.push(last);
                list.nulls.append_null();
            }
        }
    }

    /// The column so far; the builder starts over empty.
    pub fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Int2(b) => Arc::new(b.finish()),
            Self::Int4(b) => Arc::new(b.finish()),
            Self::Int8(b) => Arc::new(b.finish()),
            Self::Float4(b) => Arc::new(b.finish()),
            Self::Float8(b) => Arc::new(b.finish()),
            Self::Decimal128(b, _) => Arc::new(b.finish()),
            Self::Decimal256(b, _) => Arc::new(b.finish()),
            Self::NumericText(b) | Self::Text(b) | Self::Jsonb(b) => Arc::new(b.finish()),
            Self::Bytea(b) => Arc::new(b.finish()),
            Self::Uuid(b) => Arc::new(b.finish()),
            Self::Date(b) => Arc::new(b.finish()),
            Self::Time(b) => Arc::new(b.finish()),
            Self::Timestamp(b) => Arc::new(b.finish()),
            Self::List(list) => list.finish(),
        }
    }

    /// Bytes held so far (for bounding the batch size).
    pub fn len(&self) -> usize {
        match self {
            Self::Bool(b) => b.len(),
            Self::Int2(b) => b.len(),
            Self::Int4(b) => b.len(),
            Self::Int8(b) => b.len(),
            Self::Float4(b) => b.len(),
            Self::Float8(b) => b.len(),
            Self::Decimal128(b, _) => b.len(),
            Self::Decimal256(b, _) => b.len(),
            Self::NumericText(b) | Self::Text(b) | Self::Jsonb(b) => b.len(),
            Self::Bytea(b) => b.len(),
            Self::Uuid(b) => b.len(),
            Self::Date(b) => b.len(),
            Self::Time(b) => b.len(),
            Self::Timestamp(b) => b.len(),
            Self::List(list) => list.offsets.len() - 1,
        }
    }
}

/// Reads a big-endian i32 at `*pos`, advancing it.
fn take_i32(bytes: &[u8], pos: &mut usize) -> Result<i32, String> {
    let chunk = bytes
        .get(*pos..*pos + 4)
        .ok_or("array value is truncated")?;
    *pos += 4;
    Ok(i32::from_be_bytes(be(chunk, "array header")?))
}

impl ListBuilder {
    /// A binary array value: ndim, has-nulls flag, element oid, (length, lower bound) per
    /// dimension, then each element as a length (-1 for NULL) and its bytes.
    fn append_array(&mut self, v: &[u8]) -> Result<(), String> {
        let mut pos = 0;
        let ndim = take_i32(v, &mut pos)?;
        let _has_nulls = take_i32(v, &mut pos)?;
        let _element_oid = take_i32(v, &mut pos)?;
        let count = match ndim {
            0 => 0,
            1 => {
                let len = take_i32(v, &mut pos)?;
                let _lower_bound = take_i32(v, &mut pos)?;
                usize::try_from(len).map_err(|_| "negative array length")?
            }
            n => {
                return Err(format!(
                    "{n}-dimensional array; only one-dimensional arrays map to a Parquet list"
                ))
            }
        };
        for _ in 0..count {
            let len = take_i32(v, &mut pos)?;
            if len < 0 {
                self.child.append(None)?;
                continue;
            }
            let element = v
                .get(pos..pos + len as usize)
                .ok_or("array element is truncated")?;
            pos += len as usize;
            self.child.append(Some(element))?;
        }
        let end = i32::try_from(self.child.len()).map_err(|_| "list offsets overflow i32")?;
        self.offsets.push(end);
        self.nulls.append_non_null();
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        let offsets = std::mem::replace(&mut self.offsets, vec![0]);
        let values = self.child.finish();
        Arc::new(ListArray::new(
            Arc::clone(&self.field),
            OffsetBuffer::new(offsets.into()),
            values,
            self.nulls.finish(),
        ))
    }
}

/// A binary `numeric`: ndigits, weight, sign, dscale (all 16-bit), then ndigits base-10000
/// digits, the first worth 10000^weight.
struct Numeric<'a> {
    weight: i32,
    negative: bool,
    dscale: u16,
    digits: &'a [u8],
}

const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

fn parse_numeric(v: &[u8]) -> Result<Result<Numeric<'_>, &'static str>, String> {
    if v.len() < 8 {
        return Err("numeric value is truncated".into());
    }
    let word = |i: usize| u16::from_be_bytes([v[i], v[i + 1]]);
    let ndigits = word(0) as usize;
    let sign = word(4);
    match sign {
        NUMERIC_NAN => return Ok(Err("NaN")),
        NUMERIC_PINF => return Ok(Err("Infinity")),
        NUMERIC_NINF => return Ok(Err("-Infinity")),
        0 | NUMERIC_NEG => {}
        other => return Err(format!("numeric value with unknown sign {other:#x}")),
    }
    let digits = v
        .get(8..8 + 2 * ndigits)
        .ok_or("numeric digits are truncated")?;
    Ok(Ok(Numeric {
        weight: word(2) as i16 as i32,
        negative: sign == NUMERIC_NEG,
        dscale: word(6),
        digits,
    }))
}

impl Numeric<'_> {
    fn digit(&self, i: usize) -> i64 {
        u16::from_be_bytes([self.digits[2 * i], self.digits[2 * i + 1]]) as i64
    }

    fn ndigits(&self) -> usize {
        self.digits.len() / 2
    }
}

/// The integer types a scaled decimal is computed in: i128 for up to 38 digits (the common,
/// fast case), i256 beyond.
trait ScaledInt: Copy {
    const ZERO: Self;
    fn small(v: i64) -> Self;
    fn checked_mul(self, other: Self) -> Option<Self>;
    fn checked_add(self, other: Self) -> Option<Self>;
    fn checked_neg(self) -> Option<Self>;
    fn checked_pow(self, exp: u32) -> Option<Self>;
}

impl ScaledInt for i128 {
    const ZERO: Self = 0;
    fn small(v: i64) -> Self {
        v as i128
    }
    fn checked_mul(self, other: Self) -> Option<Self> {
        i128::checked_mul(self, other)
    }
    fn checked_add(self, other: Self) -> Option<Self> {
        i128::checked_add(self, other)
    }
    fn checked_neg(self) -> Option<Self> {
        i128::checked_neg(self)
    }
    fn checked_pow(self, exp: u32) -> Option<Self> {
        i128::checked_pow(self, exp)
    }
}

impl ScaledInt for i256 {
    const ZERO: Self = i256::ZERO;
    fn small(v: i64) -> Self {
        i256::from_i128(v as i128)
    }
    fn checked_mul(self, other: Self) -> Option<Self> {
        i256::checked_mul(self, other)
    }
    fn checked_add(self, other: Self) -> Option<Self> {
        i256::checked_add(self, other)
    }
    fn checked_neg(self) -> Option<Self> {
        i256::checked_neg(self)
    }
    fn checked_pow(self, exp: u32) -> Option<Self> {
        i256::checked_pow(self, exp)
    }
}

/// The value times 10^scale, exactly (digits below the scale must be zero).
fn numeric_scaled<T: ScaledInt>(v: &[u8], scale: i8) -> Result<T, String> {
    let n = parse_numeric(v)?.map_err(|special| {
        format!(
            "numeric {special} has no Parquet decimal; list the column in numeric_as_text = [...] \
             to export its exact text"
        )
    })?;
    let overflow = || "numeric value overflows its decimal type".to_string();
    let below_scale = || format!("numeric value has more than {scale} decimal places");
    let mut acc = T::ZERO;
    // The decimal exponent of the last digit group folded into `acc`.
    let mut unit_exp: i32 = 0;
    for i in 0..n.ndigits() {
        let d = n.digit(i);
        let exp = 4 * (n.weight - i as i32) + scale as i32;
        if exp >= 0 {
            acc = acc
                .checked_mul(T::small(10_000))
                .and_then(|a| a.checked_add(T::small(d)))
                .ok_or_else(overflow)?;
            unit_exp = exp;
        } else if exp > -4 {
            let cut = 10i64.pow((-exp) as u32);
            if d % cut != 0 {
                return Err(below_scale());
            }
            acc = acc
                .checked_mul(T::small(10i64.pow((4 + exp) as u32)))
                .and_then(|a| a.checked_add(T::small(d / cut)))
                .ok_or_else(overflow)?;
            unit_exp = 0;
        } else if d != 0 {
            return Err(below_scale());
        }
    }
    let factor = T::small(10)
        .checked_pow(unit_exp as u32)
        .ok_or_else(overflow)?;
    let value = acc.checked_mul(factor).ok_or_else(overflow)?;
    Ok(if n.negative {
        value.checked_neg().ok_or_else(overflow)?
    } else {
        value
    })
}

/// The exact text Postgres would print for the value (`NaN` and infinities included).
fn numeric_text(v: &[u8]) -> Result<String, String> {
    let n = match parse_numeric(v)? {
        Ok(n) => n,
        Err(special) => return Ok(special.to_string()),
    };
    let mut out = String::new();
    if n.negative {
        out.push('-');
    }
    // Integer part: groups of weight >= 0; the first without leading zeros.
    if n.weight < 0 {
        out.push('0');
    } else {
        for w in 0..=n.weight {
            let i = w as usize;
            let d = if i < n.ndigits() { n.digit(i) } else { 0 };
            if w == 0 {
                out.push_str(&d.to_string());
            } else {
                out.push_str(&format!("{d:04}"));
            }
        }
    }
    if n.dscale > 0 {
        out.push('.');
        let mut fraction = String::new();
        let mut group = n.weight + 1;
        while fraction.len() < n.dscale as usize {
            let d = usize::try_from(group)
                .ok()
                .filter(|&i| i < n.ndigits())
                .map_or(0, |i| n.digit(i));
            fraction.push_str(&format!("{d:04}"));
            group += 1;
        }
        fraction.truncate(n.dscale as usize);
        out.push_str(&fraction);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Decimal128Type, Int32Type};

    /// The binary `numeric` of a decimal string, built the way Postgres's numeric_send does.
    fn numeric_bytes(text: &str) -> Vec<u8> {
        let (negative, text) = match text.strip_prefix('-') {
            Some(t) => (true, t),
            None => (false, text),
        };
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        let dscale = frac.len() as u16;
        let int = int.trim_start_matches('0');
        let pad_int = (4 - int.len() % 4) % 4;
        let pad_frac = (4 - frac.len() % 4) % 4;
        let all = format!("{}{int}{frac}{}", "0".repeat(pad_int), "0".repeat(pad_frac));
        let mut digits: Vec<u16> = all
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap().parse().unwrap())
            .collect();
        let mut weight = ((int.len() + pad_int) / 4) as i16 - 1;
        while digits.first() == Some(&0) {
            digits.remove(0);
            weight -= 1;
        }
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            weight = 0;
        }
        let mut out = Vec::new();
        out.extend((digits.len() as u16).to_be_bytes());
        out.extend(weight.to_be_bytes());
        out.extend((if negative { NUMERIC_NEG } else { 0 }).to_be_bytes());
        out.extend(dscale.to_be_bytes());
        for d in digits {
            out.extend(d.to_be_bytes());
        }
        out
    }

    #[test]
    fn numerics_decode_exactly() {
        let decimal =
            |text: &str, scale: i8| numeric_scaled::<i256>(&numeric_bytes(text), scale).unwrap();
        assert_eq!(decimal("123.4500", 4), i256::from_i128(1_234_500));
        assert_eq!(decimal("-0.0001", 4), i256::from_i128(-1));
        assert_eq!(decimal("0", 2), i256::ZERO);
        assert_eq!(decimal("10000", 0), i256::from_i128(10_000));
        assert_eq!(decimal("12345678.9", 3), i256::from_i128(12_345_678_900));
        assert_eq!(decimal("1.5", 1), i256::from_i128(15));
        let big = "1".repeat(38) + "." + &"9".repeat(38);
        let expected = ("1".repeat(38) + &"9".repeat(38)).parse::<i256>().unwrap();
        assert_eq!(decimal(&big, 38), expected);
        assert!(numeric_scaled::<i256>(&numeric_bytes("1.25"), 1).is_err());
        // The fast path agrees, and refuses what does not fit 38 digits.
        assert_eq!(
            numeric_scaled::<i128>(&numeric_bytes("-98765.4321"), 6).unwrap(),
            -98_765_432_100
        );
        assert!(numeric_scaled::<i128>(&numeric_bytes(&big), 38)
            .unwrap_err()
            .contains("overflows"));
        for text in ["0", "12.50", "-0.0001", "100000000.000", "7", "-98765.4321"] {
            assert_eq!(numeric_text(&numeric_bytes(text)).unwrap(), text);
        }
        let nan = [0u8, 0, 0, 0, 0xC0, 0, 0, 0];
        assert_eq!(numeric_text(&nan).unwrap(), "NaN");
        assert!(numeric_scaled::<i128>(&nan, 0).unwrap_err().contains("NaN"));
    }

    #[test]
    fn values_decode_into_columns() {
        let mut ints = ColumnBuilder::new(&PgType::Int4, 4).unwrap();
        ints.append(Some(&7i32.to_be_bytes())).unwrap();
        ints.append(None).unwrap();
        assert!(ints.append(Some(&[1, 2])).is_err());
        let array = ints.finish();
        let array = array.as_primitive::<Int32Type>();
        assert_eq!(
            (array.len(), array.value(0), array.is_null(1)),
            (2, 7, true)
        );

        let mut ts = ColumnBuilder::new(&PgType::Timestamptz, 1).unwrap();
        ts.append(Some(&0i64.to_be_bytes())).unwrap();
        assert!(ts
            .append(Some(&i64::MAX.to_be_bytes()))
            .unwrap_err()
            .contains("infinity"));
        let array = ts.finish();
        assert_eq!(
            array
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(0),
            PG_EPOCH_MICROS
        );

        let mut jsonb = ColumnBuilder::new(&PgType::Jsonb, 1).unwrap();
        jsonb.append(Some(b"\x01{\"a\": 1}")).unwrap();
        assert!(jsonb.append(Some(b"\x02{}")).is_err());
        assert_eq!(jsonb.finish().as_string::<i32>().value(0), "{\"a\": 1}");

        let mut dec = ColumnBuilder::new(
            &PgType::Numeric {
                precision: 10,
                scale: 2,
            },
            1,
        )
        .unwrap();
        dec.append(Some(&numeric_bytes("-12.34"))).unwrap();
        assert_eq!(
            dec.finish().as_primitive::<Decimal128Type>().value(0),
            -1234
        );
    }

    fn array_bytes(elements: &[Option<i32>]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(1i32.to_be_bytes());
        out.extend(0i32.to_be_bytes());
        out.extend(23i32.to_be_bytes());
        out.extend((elements.len() as i32).to_be_bytes());
        out.extend(1i32.to_be_bytes());
        for e in elements {
            match e {
                Some(v) => {
                    out.extend(4i32.to_be_bytes());
                    out.extend(v.to_be_bytes());
                }
                None => out.extend((-1i32).to_be_bytes()),
            }
        }
        out
    }

    #[test]
    fn arrays_become_lists() {
        let ty = PgType::Array(Box::new(PgType::Int4));
        let mut b = ColumnBuilder::new(&ty, 4).unwrap();
        b.append(Some(&array_bytes(&[Some(1), None, Some(3)])))
            .unwrap();
        b.append(None).unwrap();
        // An empty array: ndim 0.
        let mut empty = Vec::new();
        empty.extend(0i32.to_be_bytes());
        empty.extend(0i32.to_be_bytes());
        empty.extend(23i32.to_be_bytes());
        b.append(Some(&empty)).unwrap();
        let mut two_d = array_bytes(&[Some(1)]);
        two_d[3] = 2;
        assert!(b
            .append(Some(&two_d))
            .unwrap_err()
            .contains("one-dimensional"));
        let array = b.finish();
        let list = array.as_list::<i32>();
        assert_eq!(list.len(), 3);
        assert!(list.is_null(1));
        assert_eq!(list.value_length(2), 0);
        let first = list.value(0);
        let first = first.as_primitive::<Int32Type>();
        assert_eq!(
            (first.value(0), first.is_null(1), first.value(2)),
            (1, true, 3)
        );
        // The builder starts over after finish.
        b.append(Some(&array_bytes(&[Some(9)]))).unwrap();
        assert_eq!(b.finish().len(), 1);
    }
}
