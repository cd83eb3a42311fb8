//! Text inputs read line by line with one bound on a line's length ([`MAX_LINE_BYTES`]), so that a
//! compressed file inflating to one enormous line costs what a normal file costs: a longer line is
//! reported by number and skipped without being held. Every line-based reader of the crate (caption
//! lists, JSONL captions and metadata, URL lists) reads through [`BoundedLines`].

use std::io::BufRead;

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
        Self { reader, number: 0, max, done: false }
    }
}

impl<R: BufRead> Iterator for BoundedLines<R> {
    /// A line, or the reader's I/O error (after which the iteration ends).
    type Item = std::io::Result<Line>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut buf = Vec::new();
        let mut length = 0usize;
        let mut any = false;
        loop {
            let chunk = match self.reader.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            if chunk.is_empty() {
                self.done = true;
                if !any {
                    return None;
                }
                break;
            }
            any = true;
            let (take, end) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (chunk.len(), false),
            };
            length += take;
            if length <= self.max {
                buf.extend_from_slice(&chunk[..take]);
            }
            self.reader.consume(take + usize::from(end));
            if end {
                break;
            }
        }
        self.number += 1;
        let text = if length > self.max {
            Err(format!("line {} is longer than {} bytes ({length} bytes); skipped", self.number, self.max))
        } else {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            String::from_utf8(buf).map_err(|e| {
                format!(
                    "line {} is not UTF-8 (invalid byte at column {})",
                    self.number,
                    e.utf8_error().valid_up_to() + 1
                )
            })
        };
        Some(Ok(Line { number: self.number, text }))
    }
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
}
