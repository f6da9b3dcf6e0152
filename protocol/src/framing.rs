//! Byte-stream framing for serial devices (sans-IO).
//!
//! A framer is fed whatever the port returned and hands back whole frames. It never holds more
//! than `max_frame` bytes: a frame that grows past the cap is reported as `Overlong` with its
//! first `max_frame` bytes, and the rest up to the next frame end is skipped.

/// What a framer found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framed {
    /// One complete frame, terminator removed.
    Frame(Vec<u8>),
    /// A frame longer than `max_frame`: its first `max_frame` bytes, and how many bytes of it
    /// had arrived when it passed the cap (at least `max_frame + 1`).
    Overlong { head: Vec<u8>, total: usize },
}

/// Line framing: CR, LF or CRLF end a frame; empty lines are skipped.
#[derive(Debug)]
pub struct LineFramer {
    max_frame: usize,
    buf: Vec<u8>,
    /// Inside an over-long frame (already reported): skip up to the next line end.
    skipping: bool,
    ready: std::collections::VecDeque<Framed>,
}

impl LineFramer {
    pub fn new(max_frame: usize) -> Self {
        LineFramer {
            max_frame: max_frame.max(1),
            buf: Vec::new(),
            skipping: false,
            ready: std::collections::VecDeque::new(),
        }
    }

    /// Feeds bytes read from the device.
    pub fn push(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            let end = input.iter().position(|&b| b == b'\r' || b == b'\n');
            let (chunk, rest, terminated) = match end {
                Some(i) => (&input[..i], &input[i + 1..], true),
                None => (input, &input[input.len()..], false),
            };
            self.take(chunk);
            if terminated {
                self.finish();
            }
            input = rest;
        }
    }

    fn take(&mut self, chunk: &[u8]) {
        if self.skipping {
            return;
        }
        let room = self.max_frame - self.buf.len();
        if chunk.len() <= room {
            self.buf.extend_from_slice(chunk);
            return;
        }
        // Reported as soon as it passes the cap, so a device that never sends a line end still
        // produces an exception rather than silence; the rest of the line is skipped.
        self.buf.extend_from_slice(&chunk[..room]);
        let total = self.buf.len() + (chunk.len() - room);
        let head = std::mem::take(&mut self.buf);
        self.ready.push_back(Framed::Overlong { head, total });
        self.skipping = true;
    }

    fn finish(&mut self) {
        if std::mem::replace(&mut self.skipping, false) {
            return;
        }
        let frame = std::mem::take(&mut self.buf);
        if !frame.is_empty() {
            self.ready.push_back(Framed::Frame(frame));
        }
    }

    /// The next complete frame, if any.
    pub fn next_frame(&mut self) -> Option<Framed> {
        self.ready.pop_front()
    }

    /// Bytes held for an incomplete frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(f: &mut LineFramer) -> Vec<Framed> {
        std::iter::from_fn(|| f.next_frame()).collect()
    }

    #[test]
    fn cr_lf_and_crlf_each_end_one_line() {
        let mut f = LineFramer::new(64);
        f.push(b"a\rb\nc\r\nd");
        assert_eq!(
            frames(&mut f),
            vec![
                Framed::Frame(b"a".to_vec()),
                Framed::Frame(b"b".to_vec()),
                Framed::Frame(b"c".to_vec())
            ]
        );
        f.push(b"\n");
        assert_eq!(frames(&mut f), vec![Framed::Frame(b"d".to_vec())]);
    }

    #[test]
    fn a_line_split_across_reads_is_joined() {
        let mut f = LineFramer::new(64);
        f.push(b"]C1001061");
        assert!(frames(&mut f).is_empty());
        f.push(b"41412345678908\r\n");
        assert_eq!(
            frames(&mut f),
            vec![Framed::Frame(b"]C100106141412345678908".to_vec())]
        );
    }

    #[test]
    fn an_overlong_line_is_reported_once_and_the_next_line_decodes() {
        let mut f = LineFramer::new(4);
        f.push(b"abcdefgh");
        assert_eq!(
            frames(&mut f),
            vec![Framed::Overlong {
                head: b"abcd".to_vec(),
                total: 8
            }]
        );
        f.push(b"ijk");
        assert!(frames(&mut f).is_empty(), "reported once");
        f.push(b"\nok\n");
        assert_eq!(frames(&mut f), vec![Framed::Frame(b"ok".to_vec())]);
        assert_eq!(f.pending(), 0);
    }

    proptest! {
        #[test]
        fn memory_stays_bounded_and_frames_respect_the_cap(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20),
            cap in 1usize..50,
        ) {
            let mut f = LineFramer::new(cap);
            for c in &chunks {
                f.push(c);
                prop_assert!(f.pending() <= cap);
                while let Some(fr) = f.next_frame() {
                    match fr {
                        Framed::Frame(b) => {
                            prop_assert!(!b.is_empty() && b.len() <= cap);
                            prop_assert!(!b.contains(&b'\n') && !b.contains(&b'\r'));
                        }
                        Framed::Overlong { head, total } => {
                            prop_assert!(head.len() <= cap);
                            prop_assert!(total > cap);
                        }
                    }
                }
            }
        }
    }
}
