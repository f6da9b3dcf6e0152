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
    Overlong {
        /// The frame's first `max_frame` bytes.
        head: Vec<u8>,
        /// How many bytes of the frame had arrived when it passed the cap.
        total: usize,
    },
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
    /// A framer that caps lines at `max_frame` bytes (at least 1).
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

/// STX (0x02): starts a telegram.
pub const STX: u8 = 0x02;
/// ETX (0x03): ends a telegram.
pub const ETX: u8 = 0x03;

/// A telegram whose LRC byte does not match its content: it was damaged on the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("LRC 0x{got:02X}, expected 0x{expected:02X}: the telegram was damaged on the line; check cabling and baud rate")]
pub struct LrcMismatch {
    /// The whole telegram as received: STX, data, ETX and the LRC byte.
    pub raw: Vec<u8>,
    /// The LRC byte received.
    pub got: u8,
    /// The XOR of the bytes after STX through ETX.
    pub expected: u8,
}

/// STX/ETX telegram framing (`framing = "stx_etx"` or `"stx_etx_lrc"`): bytes before STX are
/// skipped; a frame is the data between STX and ETX; with `lrc`, the byte after ETX must be the
/// XOR of every byte after STX up to and including ETX, else the telegram is an
/// [`LrcMismatch`]. An STX inside a telegram restarts it (the earlier bytes were a broken
/// telegram), empty telegrams are skipped, and one that grows past `max_frame` data bytes is
/// reported once as [`Framed::Overlong`] and skipped up to the next STX.
#[derive(Debug)]
pub struct StxEtxFramer {
    max_frame: usize,
    lrc: bool,
    buf: Vec<u8>,
    /// XOR of the data so far.
    xor: u8,
    state: StxState,
    ready: std::collections::VecDeque<Result<Framed, LrcMismatch>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StxState {
    Hunting,
    Data,
    Lrc,
}

impl StxEtxFramer {
    /// A framer capping telegrams at `max_frame` data bytes (at least 1), checking an LRC byte
    /// after ETX when `lrc` is set.
    pub fn new(max_frame: usize, lrc: bool) -> Self {
        StxEtxFramer {
            max_frame: max_frame.max(1),
            lrc,
            buf: Vec::new(),
            xor: 0,
            state: StxState::Hunting,
            ready: std::collections::VecDeque::new(),
        }
    }

    /// Feeds bytes read from the device.
    pub fn push(&mut self, input: &[u8]) {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                StxState::Hunting => match input[i..].iter().position(|&b| b == STX) {
                    Some(at) => {
                        i += at + 1;
                        self.start();
                    }
                    None => return,
                },
                StxState::Data => {
                    let rest = &input[i..];
                    let end = rest.iter().position(|&b| b == ETX || b == STX);
                    let chunk = &rest[..end.unwrap_or(rest.len())];
                    i += chunk.len();
                    if !self.take(chunk) {
                        continue;
                    }
                    match input.get(i) {
                        Some(&STX) => self.start(),
                        Some(_) if self.lrc => self.state = StxState::Lrc,
                        Some(_) => self.finish(None),
                        None => return,
                    }
                    i += 1;
                }
                StxState::Lrc => {
                    self.finish(Some(input[i]));
                    i += 1;
                }
            }
        }
    }

    fn start(&mut self) {
        self.buf.clear();
        self.xor = 0;
        self.state = StxState::Data;
    }

    /// Appends data; false if the telegram passed the cap (reported, now hunting).
    fn take(&mut self, chunk: &[u8]) -> bool {
        let room = self.max_frame - self.buf.len();
        if chunk.len() <= room {
            self.buf.extend_from_slice(chunk);
            self.xor = chunk.iter().fold(self.xor, |x, &b| x ^ b);
            return true;
        }
        self.buf.extend_from_slice(&chunk[..room]);
        let total = self.buf.len() + (chunk.len() - room);
        let head = std::mem::take(&mut self.buf);
        self.ready.push_back(Ok(Framed::Overlong { head, total }));
        self.state = StxState::Hunting;
        false
    }

    /// The telegram ended at ETX, with its LRC byte if checked.
    fn finish(&mut self, lrc: Option<u8>) {
        self.state = StxState::Hunting;
        let expected = self.xor ^ ETX;
        match lrc {
            Some(got) if got != expected => {
                let mut raw = Vec::with_capacity(self.buf.len() + 3);
                raw.push(STX);
                raw.append(&mut self.buf);
                raw.extend_from_slice(&[ETX, got]);
                self.ready
                    .push_back(Err(LrcMismatch { raw, got, expected }));
            }
            _ if self.buf.is_empty() => {}
            _ => {
                let frame = std::mem::take(&mut self.buf);
                self.ready.push_back(Ok(Framed::Frame(frame)));
            }
        }
    }

    /// The next telegram (its data, without STX, ETX and LRC), or an LRC mismatch, if any.
    pub fn next_frame(&mut self) -> Option<Result<Framed, LrcMismatch>> {
        self.ready.pop_front()
    }

    /// Bytes held for an incomplete telegram.
    pub fn pending(&self) -> usize {
        match self.state {
            StxState::Hunting => 0,
            StxState::Data | StxState::Lrc => self.buf.len(),
        }
    }
}

/// The LRC of a telegram's data: XOR of the data bytes and ETX.
pub fn lrc(data: &[u8]) -> u8 {
    data.iter().fold(ETX, |x, &b| x ^ b)
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

    fn telegrams(f: &mut StxEtxFramer) -> Vec<Result<Framed, LrcMismatch>> {
        std::iter::from_fn(|| f.next_frame()).collect()
    }

    fn with_lrc(data: &[u8]) -> Vec<u8> {
        [&[STX][..], data, &[ETX, lrc(data)]].concat()
    }

    #[test]
    fn stx_etx_telegrams_split_across_reads_and_after_garbage() {
        let mut f = StxEtxFramer::new(64, true);
        let mut stream = b"\x00\x03junk".to_vec();
        stream.extend(with_lrc(b"CONF|1|OK"));
        stream.extend(with_lrc(b"FAULT|JAM"));
        for piece in stream.chunks(3) {
            f.push(piece);
        }
        assert_eq!(
            telegrams(&mut f),
            vec![
                Ok(Framed::Frame(b"CONF|1|OK".to_vec())),
                Ok(Framed::Frame(b"FAULT|JAM".to_vec()))
            ]
        );
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn an_lrc_mismatch_carries_the_raw_telegram_and_the_next_one_decodes() {
        let mut f = StxEtxFramer::new(64, true);
        f.push(b"\x02AB\x03\x07");
        f.push(&with_lrc(b"OK"));
        let bad = LrcMismatch {
            raw: b"\x02AB\x03\x07".to_vec(),
            got: 0x07,
            expected: 0x00,
        };
        assert_eq!(
            bad.to_string(),
            "LRC 0x07, expected 0x00: the telegram was damaged on the line; check cabling and baud rate"
        );
        assert_eq!(
            telegrams(&mut f),
            vec![Err(bad), Ok(Framed::Frame(b"OK".to_vec()))]
        );
    }

    #[test]
    fn without_lrc_the_telegram_ends_at_etx_and_a_new_stx_restarts() {
        let mut f = StxEtxFramer::new(64, false);
        f.push(b"\x02broken\x02A|B\x03\x02\x03\x02C\x03");
        assert_eq!(
            telegrams(&mut f),
            vec![
                Ok(Framed::Frame(b"A|B".to_vec())),
                Ok(Framed::Frame(b"C".to_vec()))
            ],
            "a restarted telegram is dropped and an empty one skipped"
        );
    }

    #[test]
    fn an_overlong_telegram_is_reported_once_and_the_next_decodes() {
        let mut f = StxEtxFramer::new(4, true);
        f.push(b"\x02abcdefgh");
        f.push(b"ijk\x03Z");
        f.push(&with_lrc(b"ok"));
        assert_eq!(
            telegrams(&mut f),
            vec![
                Ok(Framed::Overlong {
                    head: b"abcd".to_vec(),
                    total: 8
                }),
                Ok(Framed::Frame(b"ok".to_vec()))
            ]
        );
    }

    proptest! {
        #[test]
        fn stx_etx_memory_stays_bounded_and_frames_hold_no_delimiters(
            chunks in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![Just(STX), Just(ETX), any::<u8>()], 0..100), 0..20),
            cap in 1usize..50,
            check in any::<bool>(),
        ) {
            let mut f = StxEtxFramer::new(cap, check);
            for c in &chunks {
                f.push(c);
                prop_assert!(f.pending() <= cap);
                while let Some(item) = f.next_frame() {
                    match item {
                        Ok(Framed::Frame(b)) => {
                            prop_assert!(!b.is_empty() && b.len() <= cap);
                            prop_assert!(!b.contains(&STX) && !b.contains(&ETX));
                        }
                        Ok(Framed::Overlong { head, total }) => {
                            prop_assert!(head.len() <= cap && total > cap);
                        }
                        Err(e) => {
                            prop_assert!(check);
                            prop_assert!(e.raw.len() <= cap + 3);
                            prop_assert_ne!(e.got, e.expected);
                        }
                    }
                }
            }
        }

        #[test]
        fn every_well_formed_telegram_comes_back_whatever_the_read_sizes(
            telegrams_in in proptest::collection::vec(proptest::collection::vec(4u8..=255, 1..30), 1..10),
            cut in 1usize..17,
        ) {
            let stream: Vec<u8> = telegrams_in.iter().flat_map(|t| with_lrc(t)).collect();
            let mut f = StxEtxFramer::new(64, true);
            for piece in stream.chunks(cut) {
                f.push(piece);
            }
            let got: Vec<_> = std::iter::from_fn(|| f.next_frame()).collect();
            let want: Vec<_> = telegrams_in.into_iter().map(|t| Ok(Framed::Frame(t))).collect();
            prop_assert_eq!(got, want);
        }
    }
}
