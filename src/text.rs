//! Text inputs read line by line with one bound on a line's length ([`MAX_LINE_BYTES`]), so that a
//! compressed file inflating to one enormous line costs what a normal file costs: a longer line is
//! reported by number and skipped without being held. Every line-based reader of the crate (caption
//! lists, JSONL captions and metadata, URL lists) reads through [`BoundedLines`], CSV metadata
//! through [`CsvRecords`], JSON documents through [`json_items`]; gzipped inputs are inflated as
//! they are read ([`open`]), never whole.

use std::io::{BufRead, Read};
use std::path::Path;

/// The longest line a text input may have, in bytes (a caption or metadata row is far shorter).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// One line of a text input.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// 1-based line number.
    pub number: usize,
    /// The line without its end (`\n` or `\r\n`), or why it cannot be used: longer than
    /// [`MAX_LINE_BYTES`], or not UTF-8.
    pub text: Result<String, String>,
}

/// The lines of a reader, each at most `max` bytes held.
pub struct BoundedLines<R> {
    reader: R,
    number: usize,
    lines: usize,
    max: usize,
    done: bool,
}

impl<R: BufRead> BoundedLines<R> {
    /// The lines of `reader`, bounded by [`MAX_LINE_BYTES`].
    pub fn new(reader: R) -> Self {
        Self::with_limit(reader, MAX_LINE_BYTES)
    }

    /// The lines of `reader`, bounded by `max` bytes.
    pub fn with_limit(reader: R, max: usize) -> Self {
        Self { reader, number: 0, lines: 0, max, done: false }
    }
}

/// The next record of `reader` without its line end (`\n` or `\r\n`): at most `max` bytes held
/// (`Err(its length)` past that). A record ends at a newline, outside double quotes when
/// `quotes` (CSV). `None` at the end; `lines` counts the newlines consumed.
fn next_record(
    reader: &mut impl BufRead,
    max: usize,
    quotes: bool,
    done: &mut bool,
    lines: &mut usize,
) -> Option<std::io::Result<Result<Vec<u8>, usize>>> {
    if *done {
        return None;
    }
    let (mut buf, mut length, mut quoted, mut any) = (Vec::new(), 0usize, false, false);
    loop {
        let chunk = match reader.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                *done = true;
                return Some(Err(e));
            }
        };
        if chunk.is_empty() {
            *done = true;
            if !any {
                return None;
            }
            break;
        }
        any = true;
        let mut end = None;
        if quotes {
            for (i, &b) in chunk.iter().enumerate() {
                match b {
                    b'"' => quoted = !quoted,
                    b'\n' => {
                        *lines += 1;
                        if !quoted {
                            end = Some(i);
                            break;
                        }
                    }
                    _ => {}
                }
            }
        } else {
            end = chunk.iter().position(|&b| b == b'\n');
            *lines += usize::from(end.is_some());
        }
        let take = end.unwrap_or(chunk.len());
        length += take;
        if length <= max {
            buf.extend_from_slice(&chunk[..take]);
        }
        reader.consume(take + usize::from(end.is_some()));
        if end.is_some() {
            break;
        }
    }
    if length <= max && buf.last() == Some(&b'\r') {
        buf.pop();
        length -= 1;
    }
    Some(Ok(if length > max { Err(length) } else { Ok(buf) }))
}

impl<R: BufRead> Iterator for BoundedLines<R> {
    /// A line, or the reader's I/O error (after which the iteration ends).
    type Item = std::io::Result<Line>;

    fn next(&mut self) -> Option<Self::Item> {
        let buf = match next_record(&mut self.reader, self.max, false, &mut self.done, &mut self.lines)? {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        self.number += 1;
        let text = match buf {
            Err(length) => {
                Err(format!("line {} is longer than {} bytes ({length} bytes); skipped", self.number, self.max))
            }
            Ok(buf) => String::from_utf8(buf).map_err(|e| {
                format!(
                    "line {} is not UTF-8 (invalid byte at column {})",
                    self.number,
                    e.utf8_error().valid_up_to() + 1
                )
            }),
        };
        Some(Ok(Line { number: self.number, text }))
    }
}

/// A buffered reader of the text file `path`, inflated as it is read when its name ends in `.gz`.
pub fn open(path: &Path) -> anyhow::Result<Box<dyn BufRead + Send>> {
    let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: cannot open: {e}", path.display()))?;
    let gz = path.extension().is_some_and(|e| e == "gz");
    let r: Box<dyn Read + Send> = if gz { Box::new(flate2::read::MultiGzDecoder::new(file)) } else { Box::new(file) };
    Ok(Box::new(std::io::BufReader::with_capacity(1 << 16, r)))
}

/// One record of a CSV input.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvRecord {
    /// 1-based line on which the record starts.
    pub line: usize,
    /// The record without its line end, or its length when longer than the bound (not held).
    pub bytes: Result<Vec<u8>, usize>,
}

/// The records of a CSV reader: a record ends at a newline outside double quotes, so a quoted
/// field may span lines. At most `max` bytes of a record are held.
pub struct CsvRecords<R> {
    reader: R,
    line: usize,
    max: usize,
    done: bool,
}

impl<R: BufRead> CsvRecords<R> {
    /// The records of `reader`, bounded by [`MAX_LINE_BYTES`].
    pub fn new(reader: R) -> Self {
        Self::with_limit(reader, MAX_LINE_BYTES)
    }

    /// The records of `reader`, bounded by `max` bytes.
    pub fn with_limit(reader: R, max: usize) -> Self {
        Self { reader, line: 1, max, done: false }
    }
}

impl<R: BufRead> Iterator for CsvRecords<R> {
    /// A record, or the reader's I/O error (after which the iteration ends).
    type Item = std::io::Result<CsvRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        let start = self.line;
        let mut newlines = 0;
        let record = next_record(&mut self.reader, self.max, true, &mut self.done, &mut newlines)?;
        self.line += newlines;
        Some(record.map(|bytes| CsvRecord { line: start, bytes }))
    }
}

/// The number of fields of one CSV record separated by `sep` (separators inside quotes do not count).
pub fn csv_field_count(record: &[u8], sep: u8) -> usize {
    let mut quoted = false;
    1 + record
        .iter()
        .filter(|&&b| {
            if b == b'"' {
                quoted = !quoted;
            }
            b == sep && !quoted
        })
        .count()
}

/// Calls `f` with each item of a JSON document read from `reader`, in order, holding one item at a
/// time: the elements of a top-level array, or of the array under the top-level key `array_key`
/// (COCO's `annotations`; the other keys are skipped without being held), when one is named. An
/// item longer than `max` bytes fails the read with its index; so does a document of another shape
/// (errors name `path`; an error of `f` is returned as it is).
pub fn json_items(
    reader: impl Read,
    path: &Path,
    array_key: Option<&str>,
    max: usize,
    f: &mut dyn FnMut(usize, serde_json::Value) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::cell::Cell;
    use std::rc::Rc;

    /// The reader, failing once the item being read exceeds its budget.
    struct Budgeted<R> {
        inner: R,
        left: Rc<Cell<Option<usize>>>,
    }
    impl<R: Read> Read for Budgeted<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            if let Some(left) = self.left.get() {
                if n > left {
                    return Err(std::io::Error::other("item too long"));
                }
                self.left.set(Some(left - n));
            }
            Ok(n)
        }
    }

    struct Items<'a> {
        left: Rc<Cell<Option<usize>>>,
        max: usize,
        key: Option<&'a str>,
        top: bool,
        f: &'a mut dyn FnMut(usize, serde_json::Value) -> anyhow::Result<()>,
        failed: &'a mut Option<anyhow::Error>,
        index: &'a mut usize,
    }
    impl<'de> Visitor<'de> for Items<'_> {
        type Value = ();
        fn expecting(&self, out: &mut std::fmt::Formatter) -> std::fmt::Result {
            match (self.top, self.key) {
                (true, Some(k)) => write!(out, "a JSON array, or an object with an array under {k:?}"),
                (true, None) => write!(out, "a JSON array"),
                (false, k) => write!(out, "an array under {:?}", k.unwrap_or_default()),
            }
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            loop {
                self.left.set(Some(self.max));
                let item = seq.next_element::<serde_json::Value>();
                self.left.set(None);
                match item? {
                    None => return Ok(()),
                    Some(v) => {
                        if let Err(e) = (self.f)(*self.index, v) {
                            *self.failed = Some(e);
                            return Err(serde::de::Error::custom("stopped"));
                        }
                        *self.index += 1;
                    }
                }
            }
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let Some(key) = self.key.filter(|_| self.top) else {
                return Err(serde::de::Error::invalid_type(serde::de::Unexpected::Map, &self));
            };
            let mut found = false;
            while let Some(k) = map.next_key::<String>()? {
                if k == key && !found {
                    found = true;
                    map.next_value_seed(Items {
                        left: self.left.clone(),
                        max: self.max,
                        key: self.key,
                        top: false,
                        f: &mut *self.f,
                        failed: &mut *self.failed,
                        index: &mut *self.index,
                    })?;
                } else {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            if !found {
                return Err(serde::de::Error::custom(format!("expected an array under {key:?}, found no such key")));
            }
            Ok(())
        }
    }
    impl<'de> DeserializeSeed<'de> for Items<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            if self.top {
                d.deserialize_any(self)
            } else {
                d.deserialize_seq(self)
            }
        }
    }

    let left = Rc::new(Cell::new(None));
    let reader = Budgeted { inner: std::io::BufReader::with_capacity(1 << 16, reader), left: left.clone() };
    let (mut failed, mut index) = (None, 0usize);
    let mut de = serde_json::Deserializer::from_reader(reader);
    let seed = Items { left, max, key: array_key, top: true, f, failed: &mut failed, index: &mut index };
    let result = seed.deserialize(&mut de).and_then(|()| de.end());
    if let Some(e) = failed {
        return Err(e);
    }
    result.map_err(|e| {
        if e.is_io() && e.to_string().contains("item too long") {
            anyhow::anyhow!("{}: item {index} is longer than {max} bytes", path.display())
        } else {
            anyhow::anyhow!("{}: not valid JSON: {e}", path.display())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_and_non_utf8_lines_are_reported_by_number_and_the_rest_read() {
        let mut input = b"first\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 100));
        input.extend_from_slice(b"\nbad \xff byte\nlast");
        let reader = std::io::BufReader::with_capacity(8, &input[..]);
        let lines: Vec<Line> = BoundedLines::with_limit(reader, 16).map(Result::unwrap).collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0].text.as_deref(), Ok("first"));
        assert!(lines[1].text.as_ref().unwrap_err().contains("line 2 is longer than 16 bytes (100 bytes)"));
        assert!(lines[2].text.as_ref().unwrap_err().contains("line 3 is not UTF-8 (invalid byte at column 5)"));
        assert_eq!((lines[3].number, lines[3].text.as_deref()), (4, Ok("last")));
    }

    #[test]
    fn csv_records_span_quoted_newlines_and_overlong_ones_are_not_held() {
        let input = b"a,b\r\n1,\"two\nlines\"\n2,xxxxxxxxxxxxxxxxxxxxxxxx\n3,\"x,y\"";
        let reader = std::io::BufReader::with_capacity(4, &input[..]);
        let recs: Vec<CsvRecord> = CsvRecords::with_limit(reader, 16).map(Result::unwrap).collect();
        assert_eq!(recs.len(), 4);
        assert_eq!((recs[0].line, recs[0].bytes.as_deref()), (1, Ok(&b"a,b"[..])));
        assert_eq!((recs[1].line, recs[1].bytes.as_deref()), (2, Ok(&b"1,\"two\nlines\""[..])));
        assert_eq!((recs[2].line, recs[2].bytes.clone()), (4, Err(26)));
        assert_eq!(csv_field_count(recs[3].bytes.as_ref().unwrap(), b','), 2);
        assert_eq!(csv_field_count(b"1,\"a,b\",,", b','), 4);
    }

    #[test]
    fn json_items_are_read_one_at_a_time_with_a_bound() {
        let p = Path::new("captions.json");
        let mut got = Vec::new();
        let mut f = |i: usize, v: serde_json::Value| {
            got.push((i, v));
            Ok(())
        };
        json_items(&br#"[{"a": 1}, "two"]"#[..], p, None, 64, &mut f).unwrap();
        json_items(
            &br#"{"images": [{"x": "skipped"}], "annotations": [{"caption": "c"}]}"#[..],
            p,
            Some("annotations"),
            64,
            &mut f,
        )
        .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], (0, serde_json::json!({"caption": "c"})));
        let long = format!(r#"["short", "{}"]"#, "x".repeat(200));
        let e = json_items(long.as_bytes(), p, Some("annotations"), 64, &mut |_, _| Ok(())).unwrap_err();
        assert_eq!(e.to_string(), "captions.json: item 1 is longer than 64 bytes");
        let e = json_items(&b"42"[..], p, Some("annotations"), 64, &mut |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().contains("a JSON array, or an object"), "{e}");
        let e = json_items(&br#"{"annotations": []}"#[..], p, None, 64, &mut |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().contains("expected a JSON array"), "{e}");
        let e = json_items(&br#"{"images": []}"#[..], p, Some("annotations"), 64, &mut |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().contains("found no such key"), "{e}");
    }
}
