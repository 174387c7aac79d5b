//! Splits a byte stream into top-level JSON values. SPDK's wire format has no framing: clients
//! send JSON objects (or batch arrays) back to back, pretty-printed or not, with or without
//! whitespace between them, and a read may end anywhere inside one. The [`Framer`] finds where
//! each top-level value ends with a small incremental scanner (strings, escapes, nesting depth),
//! so each byte is looked at once however the stream is split; only complete values are then
//! parsed by serde_json. A value larger than the limit is refused before it is buffered whole.

use std::fmt;

/// Why the stream cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// One value is longer than the limit (an endless request, or a huge one).
    TooLarge(usize),
    /// A byte that cannot start a JSON value where one must start.
    Unexpected(u8),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge(max) => write!(f, "request larger than {max} bytes"),
            FrameError::Unexpected(b) => {
                write!(f, "unexpected byte 0x{b:02x} where a JSON value must start")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Scanner state inside the value being received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between values (skipping whitespace).
    Between,
    /// Inside an object or array, outside strings.
    Nested,
    /// Inside a string (at any depth).
    InString,
    /// After a backslash inside a string.
    Escape,
    /// Inside a top-level number or literal (ends at a delimiter).
    Scalar,
}

/// Incremental splitter of a byte stream into top-level JSON values.
pub struct Framer {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned.
    scanned: usize,
    /// Where the value being scanned starts.
    start: usize,
    state: State,
    depth: usize,
    /// Whether the string being scanned is the top-level value itself.
    top_string: bool,
    max: usize,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl Framer {
    /// A framer that refuses values longer than `max` bytes.
    pub fn new(max: usize) -> Framer {
        Framer {
            buf: Vec::new(),
            scanned: 0,
            start: 0,
            state: State::Between,
            depth: 0,
            top_string: false,
            max,
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet returned as values.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start.min(self.buf.len())
    }

    /// Whether only whitespace (or nothing) is buffered: a connection closed now ends cleanly.
    pub fn is_idle(&self) -> bool {
        self.state == State::Between
            && self.buf[self.scanned.min(self.buf.len())..]
                .iter()
                .all(|&b| is_ws(b))
    }

    /// The next complete top-level value, if one has arrived. Errors are final: the stream has
    /// no point at which parsing could resume.
    pub fn next_value(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        while self.scanned < self.buf.len() {
            let b = self.buf[self.scanned];
            let at = self.scanned;
            self.scanned += 1;
            match self.state {
                State::Between => {
                    if is_ws(b) {
                        continue;
                    }
                    self.start = at;
                    match b {
                        b'{' | b'[' => {
                            self.depth = 1;
                            self.state = State::Nested;
                        }
                        b'"' => {
                            self.top_string = true;
                            self.state = State::InString;
                        }
                        b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => self.state = State::Scalar,
                        other => return Err(FrameError::Unexpected(other)),
                    }
                }
                State::Nested => match b {
                    b'"' => {
                        self.top_string = false;
                        self.state = State::InString;
                    }
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            return Ok(Some(self.take(self.scanned)));
                        }
                    }
                    _ => {}
                },
                State::InString => match b {
                    b'\\' => self.state = State::Escape,
                    b'"' if self.top_string => return Ok(Some(self.take(self.scanned))),
                    b'"' => self.state = State::Nested,
                    _ => {}
                },
                State::Escape => self.state = State::InString,
                State::Scalar => {
                    if is_ws(b) || matches!(b, b'{' | b'[' | b'}' | b']' | b',' | b'"' | b':') {
                        // The delimiter belongs to what follows.
                        self.scanned = at;
                        return Ok(Some(self.take(at)));
                    }
                }
            }
            if self.state != State::Between && self.scanned - self.start > self.max {
                return Err(FrameError::TooLarge(self.max));
            }
        }
        if self.state != State::Between && self.buf.len() - self.start > self.max {
            return Err(FrameError::TooLarge(self.max));
        }
        if self.state == State::Between {
            // Only whitespace is left: drop it.
            self.buf.clear();
            self.scanned = 0;
            self.start = 0;
        }
        Ok(None)
    }

    /// Removes and returns `buf[start..end]`, and everything before it.
    fn take(&mut self, end: usize) -> Vec<u8> {
        let value = self.buf[self.start..end].to_vec();
        self.buf.drain(..end);
        self.scanned -= end;
        self.start = 0;
        self.state = State::Between;
        self.depth = 0;
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(f: &mut Framer) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(v) = f.next_value().expect("valid stream") {
            out.push(String::from_utf8(v).expect("utf8"));
        }
        out
    }

    #[test]
    fn concatenated_pretty_printed_requests() {
        let a = "{\n  \"jsonrpc\": \"2.0\",\n  \"method\": \"a\",\n  \"id\": 1\n}";
        let b = "{\"method\":\"b\",\"params\":{\"x\":\"}{][\\\"\"},\"id\":2}";
        let mut f = Framer::new(1 << 20);
        f.feed(format!("{a}\n{b}[{{}},{{}}]  ").as_bytes());
        assert_eq!(
            all(&mut f),
            vec![a.to_string(), b.to_string(), "[{},{}]".to_string()]
        );
        assert!(f.is_idle());
    }

    #[test]
    fn every_split_point_gives_the_same_values() {
        let stream = "{\"a\":[1,{\"b\":\"x\\\\\\\"y}\"}]}\n[{\"m\":1}]{\"c\":\"\\u00e9\"}";
        let want = {
            let mut f = Framer::new(1 << 20);
            f.feed(stream.as_bytes());
            all(&mut f)
        };
        assert_eq!(want.len(), 3);
        for cut in 0..stream.len() {
            for cut2 in cut..stream.len() {
                let mut f = Framer::new(1 << 20);
                let mut got = Vec::new();
                for part in [&stream[..cut], &stream[cut..cut2], &stream[cut2..]] {
                    f.feed(part.as_bytes());
                    got.extend(all(&mut f));
                }
                assert_eq!(got, want, "split at {cut}/{cut2}");
            }
        }
    }

    #[test]
    fn byte_at_a_time() {
        let stream = b"  {\"id\":1,\"method\":\"x\"}\n\n{\"id\":2}";
        let mut f = Framer::new(1024);
        let mut got = Vec::new();
        for b in stream {
            f.feed(&[*b]);
            got.extend(all(&mut f));
        }
        assert_eq!(got, vec!["{\"id\":1,\"method\":\"x\"}", "{\"id\":2}"]);
    }

    #[test]
    fn scalars_end_at_delimiters() {
        let mut f = Framer::new(64);
        f.feed(b"123 \"s\\\"t\" true{}");
        assert_eq!(all(&mut f), vec!["123", "\"s\\\"t\"", "true", "{}"]);
        f.feed(b"45");
        assert_eq!(all(&mut f), Vec::<String>::new(), "a number may go on");
        f.feed(b"6\n");
        assert_eq!(all(&mut f), vec!["456"]);
    }

    #[test]
    fn oversized_and_endless_values_are_refused() {
        let mut f = Framer::new(100);
        f.feed(&[b'['; 50]);
        assert_eq!(f.next_value(), Ok(None));
        f.feed(&[b'['; 60]);
        assert_eq!(f.next_value(), Err(FrameError::TooLarge(100)));
        let mut f = Framer::new(100);
        f.feed(b"{\"method\":\"");
        for _ in 0..20 {
            f.feed(b"aaaaaaaa");
        }
        assert_eq!(f.next_value(), Err(FrameError::TooLarge(100)));
        // Exactly at the limit is fine.
        let mut f = Framer::new(10);
        f.feed(b"{\"a\":1234}");
        assert_eq!(all(&mut f), vec!["{\"a\":1234}"]);
    }

    #[test]
    fn whitespace_between_values_is_not_counted() {
        let mut f = Framer::new(8);
        f.feed(&[b'\n'; 100]);
        f.feed(b"{\"a\":1}");
        f.feed(&[b' '; 100]);
        assert_eq!(all(&mut f), vec!["{\"a\":1}"]);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn stray_closers_are_errors() {
        let mut f = Framer::new(100);
        f.feed(b"{} }");
        assert!(f.next_value().expect("first").is_some());
        assert_eq!(f.next_value(), Err(FrameError::Unexpected(b'}')));
    }
}
