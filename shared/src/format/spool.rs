//! The byte sink under the synchronous Parquet file writer. What the writer produces is queued
//! as data; a stretch announced as a *hole* stands for a byte range of a source object that the
//! store copies itself (a row group copied verbatim), so those bytes are counted for the file's
//! offsets but never held. The async side drains the queue after each row group.

use std::io::{self, Write};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// A stretch of the output file, in order.
#[derive(Debug)]
pub enum Segment {
    Data(Bytes),
    /// Bytes `range` of the source object `key` (at `version`) belong here.
    Copy {
        key: String,
        version: String,
        range: Range<u64>,
    },
}

#[derive(Debug)]
struct Hole {
    key: String,
    version: String,
    range: Range<u64>,
    remaining: u64,
}

#[derive(Debug, Default)]
struct State {
    data: Vec<u8>,
    segments: Vec<Segment>,
    hole: Option<Hole>,
}

impl State {
    fn close_data(&mut self) {
        if !self.data.is_empty() {
            let data = std::mem::take(&mut self.data);
            self.segments.push(Segment::Data(Bytes::from(data)));
        }
    }
}

/// Shared between the file writer (which owns a clone as its `Write`) and the code that drains it.
#[derive(Clone, Debug, Default)]
pub struct Spool(Arc<Mutex<State>>);

fn poisoned() -> io::Error {
    io::Error::other("output spool poisoned by a panic")
}

impl Spool {
    /// The next `range.end - range.start` bytes written are placeholders for `range` of `key`.
    pub fn begin_hole(&self, key: &str, version: &str, range: Range<u64>) -> io::Result<()> {
        let mut state = self.0.lock().map_err(|_| poisoned())?;
        if state.hole.is_some() {
            return Err(io::Error::other("a copied range is already pending"));
        }
        state.close_data();
        let remaining = range.end - range.start;
        state.hole = Some(Hole {
            key: key.to_string(),
            version: version.to_string(),
            range,
            remaining,
        });
        Ok(())
    }

    /// Everything written since the last drain, in file order.
    pub fn drain(&self) -> io::Result<Vec<Segment>> {
        let mut state = self.0.lock().map_err(|_| poisoned())?;
        if state.hole.is_some() {
            return Err(io::Error::other(
                "drained while a copied range was incomplete",
            ));
        }
        state.close_data();
        Ok(std::mem::take(&mut state.segments))
    }
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.0.lock().map_err(|_| poisoned())?;
        let mut rest = buf;
        if let Some(hole) = state.hole.as_mut() {
            let n = (hole.remaining).min(rest.len() as u64) as usize;
            hole.remaining -= n as u64;
            rest = &rest[n..];
            if hole.remaining == 0 {
                if let Some(hole) = state.hole.take() {
                    state.segments.push(Segment::Copy {
                        key: hole.key,
                        version: hole.version,
                        range: hole.range,
                    });
                }
            }
        }
        state.data.extend_from_slice(rest);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_become_copies_between_data() {
        let spool = Spool::default();
        let mut w = spool.clone();
        w.write_all(b"PAR1").unwrap();
        spool.begin_hole("src", "v1", 10..16).unwrap();
        w.write_all(&[0u8; 4]).unwrap();
        w.write_all(&[0u8; 2]).unwrap();
        w.write_all(b"tail").unwrap();
        let segments = spool.drain().unwrap();
        assert_eq!(segments.len(), 3);
        assert!(matches!(&segments[0], Segment::Data(d) if d.as_ref() == b"PAR1"));
        assert!(
            matches!(&segments[1], Segment::Copy { key, range, .. } if key == "src" && *range == (10..16))
        );
        assert!(matches!(&segments[2], Segment::Data(d) if d.as_ref() == b"tail"));
        assert!(spool.drain().unwrap().is_empty());
    }

    #[test]
    fn a_hole_left_open_refuses_to_drain() {
        let spool = Spool::default();
        let mut w = spool.clone();
        spool.begin_hole("src", "v1", 0..8).unwrap();
        w.write_all(&[0u8; 3]).unwrap();
        assert!(spool.drain().is_err());
    }
}
