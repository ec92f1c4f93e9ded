//! Postgres's binary COPY format, parsed as it streams in: an 11-byte signature, flags and a
//! header extension, then one tuple per row (a 16-bit field count, then each field as a 32-bit
//! length, -1 for NULL, and its bytes), then a trailer (field count -1). Chunks may split a
//! tuple anywhere; only complete tuples are handed on.

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
const HEADER_LEN: usize = 19;
/// Flag bit 16: every tuple carries an OID (never for a `COPY (SELECT ...)`).
const FLAG_OIDS: u32 = 1 << 16;

/// One complete tuple, its fields borrowed from the stream.
pub struct Tuple<'a> {
    buf: &'a [u8],
    /// Where the tuple's first field (its length word) starts.
    fields_start: usize,
    /// Each field's data start and length (-1 for NULL).
    spans: &'a [(usize, i32)],
}

impl<'a> Tuple<'a> {
    /// Field `i` in the column type's binary format; `None` for NULL.
    pub fn value(&self, i: usize) -> Option<&'a [u8]> {
        let (start, len) = self.spans[i];
        (len >= 0).then(|| &self.buf[start..start + len as usize])
    }

    /// The first `n` fields exactly as sent: each one's 32-bit length (-1 for NULL) and bytes.
    pub fn leading_fields(&self, n: usize) -> &'a [u8] {
        let end = match n.checked_sub(1).map(|i| self.spans[i]) {
            Some((start, len)) => start + len.max(0) as usize,
            None => self.fields_start,
        };
        &self.buf[self.fields_start..end]
    }
}

pub struct CopyParser {
    fields: usize,
    header_done: bool,
    finished: bool,
    /// The start of a tuple (or of the header) that the last chunk cut off.
    pending: Vec<u8>,
    spans: Vec<(usize, i32)>,
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl CopyParser {
    pub fn new(fields: usize) -> Self {
        Self {
            fields,
            header_done: false,
            finished: false,
            pending: Vec::new(),
            spans: Vec::with_capacity(fields),
        }
    }

    /// Feeds the next chunk of the stream; `row` gets every tuple it completes, in order.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        row: &mut impl FnMut(Tuple<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        if self.pending.is_empty() {
            let used = self.parse(chunk, row)?;
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            let mut pending = std::mem::take(&mut self.pending);
            pending.extend_from_slice(chunk);
            let used = self.parse(&pending, row)?;
            pending.drain(..used);
            self.pending = pending;
        }
        Ok(())
    }

    /// Checks that the stream ended where it should: after the trailer, nothing left over.
    pub fn finish(&self) -> Result<(), String> {
        if !self.finished || !self.pending.is_empty() {
            return Err(format!(
                "the COPY stream ended early ({} bytes of an incomplete tuple, trailer {})",
                self.pending.len(),
                if self.finished { "seen" } else { "missing" }
            ));
        }
        Ok(())
    }

    /// Parses the complete tuples at the start of `buf`; returns the bytes consumed.
    fn parse(
        &mut self,
        buf: &[u8],
        row: &mut impl FnMut(Tuple<'_>) -> Result<(), String>,
    ) -> Result<usize, String> {
        let mut pos = 0;
        if !self.header_done {
            if buf.len() < HEADER_LEN {
                return Ok(0);
            }
            if &buf[..SIGNATURE.len()] != SIGNATURE {
                return Err("not a binary COPY stream (bad signature)".into());
            }
            if be_u32(&buf[11..]) & FLAG_OIDS != 0 {
                return Err("binary COPY with OIDs is not supported".into());
            }
            let extension = be_u32(&buf[15..]) as usize;
            if buf.len() < HEADER_LEN + extension {
                return Ok(0);
            }
            pos = HEADER_LEN + extension;
            self.header_done = true;
        }
        loop {
            if self.finished {
                if pos < buf.len() {
                    return Err("data after the COPY trailer".into());
                }
                return Ok(pos);
            }
            if buf.len() - pos < 2 {
                return Ok(pos);
            }
            let count = i16::from_be_bytes([buf[pos], buf[pos + 1]]);
            if count == -1 {
                self.finished = true;
                pos += 2;
                continue;
            }
            if count < 0 || count as usize != self.fields {
                return Err(format!(
                    "a tuple has {count} fields, the query selects {}",
                    self.fields
                ));
            }
            self.spans.clear();
            let mut p = pos + 2;
            for _ in 0..count {
                if buf.len() - p < 4 {
                    return Ok(pos);
                }
                let len = be_u32(&buf[p..]) as i32;
                p += 4;
                if len < 0 {
                    self.spans.push((p, -1));
                    continue;
                }
                if buf.len() - p < len as usize {
                    return Ok(pos);
                }
                self.spans.push((p, len));
                p += len as usize;
            }
            row(Tuple {
                buf,
                fields_start: pos + 2,
                spans: &self.spans,
            })?;
            pos = p;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary COPY stream of rows of optional byte strings.
    fn stream(rows: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend(0u32.to_be_bytes());
        out.extend(4u32.to_be_bytes());
        out.extend(b"ext!");
        for row in rows {
            out.extend((row.len() as i16).to_be_bytes());
            for field in row {
                match field {
                    Some(v) => {
                        out.extend((v.len() as i32).to_be_bytes());
                        out.extend(*v);
                    }
                    None => out.extend((-1i32).to_be_bytes()),
                }
            }
        }
        out.extend((-1i16).to_be_bytes());
        out
    }

    fn parse_in_chunks(bytes: &[u8], chunk: usize) -> Result<Vec<Vec<Option<Vec<u8>>>>, String> {
        let mut parser = CopyParser::new(2);
        let mut rows = Vec::new();
        for piece in bytes.chunks(chunk) {
            parser.feed(piece, &mut |t| {
                let values: Vec<Option<&[u8]>> = (0..2).map(|i| t.value(i)).collect();
                // The leading fields are the values in COPY layout, as a digest hashes them.
                let mut layout = Vec::new();
                crate::model::hot::digest::push_field(&mut layout, values[0]);
                assert_eq!(t.leading_fields(1), &layout[..]);
                crate::model::hot::digest::push_field(&mut layout, values[1]);
                assert_eq!(t.leading_fields(2), &layout[..]);
                assert!(t.leading_fields(0).is_empty());
                rows.push(values.iter().map(|v| v.map(<[u8]>::to_vec)).collect());
                Ok(())
            })?;
        }
        parser.finish()?;
        Ok(rows)
    }

    #[test]
    fn tuples_survive_any_chunking() {
        let rows: Vec<Vec<Option<&[u8]>>> = vec![
            vec![Some(b"abc"), None],
            vec![Some(b""), Some(b"\x00\x01\x02")],
            vec![None, None],
        ];
        let bytes = stream(&rows);
        let want: Vec<Vec<Option<Vec<u8>>>> = rows
            .iter()
            .map(|r| r.iter().map(|f| f.map(<[u8]>::to_vec)).collect())
            .collect();
        for chunk in [1, 2, 3, 7, 19, 20, bytes.len()] {
            assert_eq!(
                parse_in_chunks(&bytes, chunk).unwrap(),
                want,
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn damaged_streams_are_errors() {
        let good = stream(&[vec![Some(b"a"), Some(b"b")]]);
        let truncated = &good[..good.len() - 3];
        assert!(parse_in_chunks(truncated, 5)
            .unwrap_err()
            .contains("ended early"));
        let mut bad_signature = good.clone();
        bad_signature[0] = b'X';
        assert!(parse_in_chunks(&bad_signature, 64)
            .unwrap_err()
            .contains("signature"));
        let three = stream(&[vec![Some(b"a"), Some(b"b"), Some(b"c")]]);
        assert!(parse_in_chunks(&three, 64)
            .unwrap_err()
            .contains("3 fields"));
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(parse_in_chunks(&trailing, 64)
            .unwrap_err()
            .contains("after"));
    }
}
