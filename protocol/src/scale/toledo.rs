//! Toledo continuous output, decoder `scale.toledo`.
//!
//! A frame is STX, three status bytes SWA SWB SWC, six digits of displayed weight, six digits
//! of tare (absent in the "short" format), CR, and in most configurations a checksum byte: the
//! two's complement of the 7-bit sum of every byte from STX to CR, so that all bytes including
//! the checksum sum to 0 mod 128. Only the low 7 bits of each byte count (7-bit data, parity in
//! bit 7). The weights carry no decimal point and no sign; the status bits give them:
//!
//! | byte | bits | meaning |
//! | --- | --- | --- |
//! | SWA | 0-2 | decimal position: 0 → ×100, 1 → ×10, 2 → none, 3-7 → 1 to 5 decimals |
//! | SWA | 3-4 | increment (1, 2, 5): not needed here |
//! | SWB | 0 | net (else gross) |
//! | SWB | 1 | negative |
//! | SWB | 2 | out of range: overload, or underload when negative |
//! | SWB | 3 | motion (else stable) |
//! | SWB | 4 | kg (else lb) |
//! | SWB | 6 | power-up: zero not yet captured, the weight means nothing ([`ScaleReading::Busy`]) |
//! | SWC | 0-2 | unit where the indicator defines it: 0 → as SWB bit 4, 1 g, 2 t, 3 oz, 4 ozt, 5 dwt, 6 long ton, 7 custom |
//!
//! SWC bit 3 (print request) and bit 4 (display expanded ×10) do not change the value sent.
//! Frames are found in the byte stream by [`ToledoFramer`].

use std::collections::VecDeque;

use super::{parse_number, weight_reading, ScaleError, ScaleReading};
use crate::event::WeightMode;
use crate::framing::Framed;

const DECODER: &str = "scale.toledo";
const STX: u8 = 0x02;
const CR: u8 = 0x0d;

/// Whether a checksum byte follows the CR (`checksum = "auto" | "always" | "never"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checksum {
    /// Decided per frame: a byte after CR that is not STX is the checksum. A frame is released
    /// when the byte after its CR arrives (or on [`ToledoFramer::flush`]), so the last frame of
    /// a burst waits for the next one. A checksum that happens to be STX (1 in 128 frames) is
    /// read as the next frame's start; that frame then goes unchecked, nothing is lost.
    #[default]
    Auto,
    /// Every frame ends with a checksum byte after CR.
    Always,
    /// Frames end at CR.
    Never,
}

/// Finds Toledo frames in a byte stream (bit 7, a parity bit when the port reads 7-bit data
/// as 8, is ignored): skips to STX, ends after CR (and the checksum byte),
/// and restarts at any STX inside a frame (a frame never contains one). A frame is handed out
/// whole, STX to checksum, as [`Framed::Frame`] for [`parse`]; one that grows past `max_frame`
/// bytes is reported once as [`Framed::Overlong`] and the stream is skipped to the next STX.
#[derive(Debug)]
pub struct ToledoFramer {
    max_frame: usize,
    checksum: Checksum,
    buf: Vec<u8>,
    state: State,
    ready: VecDeque<Framed>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a frame: skip to STX.
    Hunting,
    /// After STX, before CR.
    Body,
    /// After CR: a checksum byte may follow.
    AfterCr,
}

impl ToledoFramer {
    /// A framer that caps frames at `max_frame` bytes (at least 1).
    pub fn new(max_frame: usize, checksum: Checksum) -> Self {
        ToledoFramer {
            max_frame: max_frame.max(1),
            checksum,
            buf: Vec::with_capacity(20),
            state: State::Hunting,
            ready: VecDeque::new(),
        }
    }

    /// Feeds bytes read from the device.
    pub fn push(&mut self, input: &[u8]) {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Hunting => match input[i..].iter().position(|&b| b & 0x7f == STX) {
                    Some(at) => {
                        i += at;
                        self.start(input[i]);
                        i += 1;
                    }
                    None => return,
                },
                State::Body => {
                    let rest = &input[i..];
                    let end = rest.iter().position(|&b| matches!(b & 0x7f, CR | STX));
                    let chunk = &rest[..end.unwrap_or(rest.len())];
                    if !self.take(chunk) {
                        i += chunk.len();
                        continue;
                    }
                    i += chunk.len();
                    let Some(&b) = input.get(i) else { return };
                    i += 1;
                    if b & 0x7f == STX {
                        // A new frame before this one ended: this one was cut short.
                        self.start(b);
                    } else {
                        self.buf.push(b);
                        match self.checksum {
                            Checksum::Never => self.emit(),
                            Checksum::Always | Checksum::Auto => self.state = State::AfterCr,
                        }
                    }
                }
                State::AfterCr => {
                    let b = input[i];
                    i += 1;
                    if b & 0x7f == STX && self.checksum == Checksum::Auto {
                        self.emit();
                        self.start(b);
                    } else {
                        self.buf.push(b);
                        self.emit();
                    }
                }
            }
        }
    }

    /// Starts a frame at an STX (as received, parity bit and all).
    fn start(&mut self, stx: u8) {
        self.buf.clear();
        self.buf.push(stx);
        self.state = State::Body;
    }

    /// Appends body bytes; false if the frame passed the cap (reported, now hunting).
    fn take(&mut self, chunk: &[u8]) -> bool {
        // Room is kept for the CR; the checksum byte may come on top of the cap.
        let room = self.max_frame.saturating_sub(self.buf.len() + 1);
        if chunk.len() <= room {
            self.buf.extend_from_slice(chunk);
            return true;
        }
        let total = self.buf.len() + chunk.len();
        self.buf.extend_from_slice(&chunk[..room]);
        let head = std::mem::take(&mut self.buf);
        self.ready.push_back(Framed::Overlong { head, total });
        self.state = State::Hunting;
        false
    }

    fn emit(&mut self) {
        let frame = std::mem::replace(&mut self.buf, Vec::with_capacity(20));
        self.ready.push_back(Framed::Frame(frame));
        self.state = State::Hunting;
    }

    /// Releases a frame held for a possible checksum byte ([`Checksum::Auto`]): call it when
    /// the line has been idle.
    pub fn flush(&mut self) {
        if self.state == State::AfterCr && self.checksum == Checksum::Auto {
            self.emit();
        }
    }

    /// The next complete frame, if any.
    pub fn next_frame(&mut self) -> Option<Framed> {
        self.ready.pop_front()
    }

    /// Bytes held for an incomplete frame.
    pub fn pending(&self) -> usize {
        match self.state {
            State::Hunting => 0,
            State::Body | State::AfterCr => self.buf.len(),
        }
    }
}

/// The checksum of a frame's bytes STX..CR: two's complement of the 7-bit sum, in 7 bits.
pub fn checksum(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |acc, &b| acc.wrapping_add(b & 0x7f));
    sum.wrapping_neg() & 0x7f
}

/// Decodes one frame, STX to CR plus the optional checksum byte (as [`ToledoFramer`] hands it
/// out). A checksum that does not match is an error, never a weight.
pub fn parse(frame: &[u8]) -> Result<ScaleReading, ScaleError> {
    if frame.is_empty() {
        return Err(ScaleError::Empty);
    }
    if frame[0] & 0x7f != STX {
        return Err(ScaleError::format(
            DECODER,
            "does not start with STX",
            frame,
        ));
    }
    // STX, 3 status bytes, 6 or 12 digits, CR, optional checksum.
    let (fields, check) = match frame.len() {
        11 | 17 => (frame, None),
        12 | 18 => (&frame[..frame.len() - 1], frame.last().copied()),
        n => {
            return Err(ScaleError::format(
                DECODER,
                format!("{n} bytes, expected 11 or 17 (short or with tare), plus a checksum byte"),
                frame,
            ))
        }
    };
    if fields.last().map(|b| b & 0x7f) != Some(CR) {
        return Err(ScaleError::format(
            DECODER,
            "no CR after the weight fields",
            frame,
        ));
    }
    if let Some(got) = check {
        let expected = checksum(fields);
        if got & 0x7f != expected {
            return Err(ScaleError::Checksum { got, expected });
        }
    }
    // Only the low 7 bits carry data.
    let mut clean = [0u8; 17];
    for (c, b) in clean.iter_mut().zip(fields) {
        *c = b & 0x7f;
    }
    let fields = &clean[..fields.len()];
    let [swa, swb, swc] = [fields[1], fields[2], fields[3]];
    let weight = &fields[4..10];
    let tare = fields.get(10..16).filter(|_| fields.len() == 17);
    let negative = swb & 0b10 != 0;
    if swb & 0b100 != 0 {
        return Ok(if negative {
            ScaleReading::Underload
        } else {
            ScaleReading::Overload
        });
    }
    if swb & 0b100_0000 != 0 {
        return Ok(ScaleReading::Busy);
    }
    let shift = decimal_shift(swa);
    let unit = unit(swb, swc);
    let value = digits(weight, "weight", shift, frame)?;
    let value = if negative { -value } else { value };
    let tare = match tare {
        Some(t) => Some(digits(t, "tare", shift, frame)?),
        None => None,
    };
    let mode = if swb & 1 != 0 {
        WeightMode::Net
    } else {
        WeightMode::Gross
    };
    weight_reading(DECODER, swb & 0b1000 == 0, mode, value, unit, tare)
}

/// SWA bits 0-2 as a power of ten: code 0 is ×100, 2 is an integer, 4 is two decimals.
fn decimal_shift(swa: u8) -> i32 {
    2 - i32::from(swa & 0b111)
}

/// The unit from SWC bits 0-2, falling back to SWB bit 4 (kg / lb).
fn unit(swb: u8, swc: u8) -> &'static str {
    match swc & 0b111 {
        1 => "g",
        2 => "t",
        3 => "oz",
        4 => "ozt",
        5 => "dwt",
        6 => "lt",
        7 => "custom",
        _ if swb & 0b1_0000 != 0 => "kg",
        _ => "lb",
    }
}

/// Six digits (leading blanks allowed) with the decimal shift applied.
fn digits(
    field: &[u8],
    name: &'static str,
    shift: i32,
    frame: &[u8],
) -> Result<crate::decimal::Decimal, ScaleError> {
    let trimmed = field.trim_ascii_start();
    if trimmed.is_empty() || !trimmed.iter().all(u8::is_ascii_digit) {
        return Err(ScaleError::format(
            DECODER,
            format!("{name} field {} is not six digits", super::escape(field)),
            frame,
        ));
    }
    let value = parse_number(DECODER, name, trimmed)?;
    // Six digits shifted by at most 10^2 or 10^-5 always fit.
    value
        .checked_shift(shift)
        .ok_or_else(|| ScaleError::format(DECODER, format!("{name} field out of range"), frame))
}

/// The `scale.toledo` decoder: continuous output, streamed by the scale.
pub fn decoder(
    settle: super::settle::SettleConfig,
    max_frame: usize,
    checksum: Checksum,
) -> super::decoder::ScaleDecoder {
    super::decoder::ScaleDecoder::new(
        DECODER,
        super::decoder::ScaleFramer::Toledo(ToledoFramer::new(max_frame, checksum)),
        parse,
        settle,
        max_frame,
        crate::decoder::Requests::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A frame with its checksum appended.
    fn framed(body: &[u8]) -> Vec<u8> {
        let mut f = vec![STX];
        f.extend_from_slice(body);
        f.push(CR);
        f.push(checksum(&f));
        f
    }

    fn frames(f: &mut ToledoFramer) -> Vec<Framed> {
        std::iter::from_fn(|| f.next_frame()).collect()
    }

    #[test]
    fn checksum_matches_the_documented_example() {
        assert_eq!(checksum(b"\x02,0 001234000000\r"), b'+');
    }

    #[test]
    fn decimal_codes_signs_and_units() {
        let kg = |f: &[u8]| match parse(f) {
            Ok(ScaleReading::Weight { weight_kg, .. }) => weight_kg,
            other => panic!("{f:?}: {other:?}"),
        };
        // SWA '(' code 0 (×100), '+' code 3 (one decimal), '/' code 7 (five decimals).
        assert_eq!(kg(&framed(b"(0 000012000000")), Some("1200".into()));
        assert_eq!(kg(&framed(b"+0 000125000000")), Some("12.5".into()));
        assert_eq!(kg(&framed(b"/0 123456000000")), Some("1.23456".into()));
        // SWB '2': negative, kg.
        assert_eq!(kg(&framed(b",2 000150000000")), Some("-1.5".into()));
        // SWC '!': grams.
        assert_eq!(kg(&framed(b"*0!000250000000")), Some("0.25".into()));
        // Short format, no tare.
        assert_eq!(kg(&framed(b",0 001234")), Some("12.34".into()));
        // Leading blanks instead of zeros.
        assert_eq!(kg(&framed(b",0   1234000000")), Some("12.34".into()));
        // Parity bit set on every byte: only 7 bits count.
        let with_parity: Vec<u8> = framed(b",0 001234000000")
            .iter()
            .map(|b| b | 0x80)
            .collect();
        assert_eq!(kg(&with_parity), Some("12.34".into()));
        let mut f = ToledoFramer::new(64, Checksum::Always);
        f.push(&with_parity);
        assert_eq!(f.next_frame(), Some(Framed::Frame(with_parity)));
    }

    #[test]
    fn range_and_power_up_are_not_weights() {
        assert_eq!(
            parse(&framed(b",4 999999000000")),
            Ok(ScaleReading::Overload)
        );
        assert_eq!(
            parse(&framed(b",6 000000000000")),
            Ok(ScaleReading::Underload)
        );
        assert_eq!(parse(&framed(b",p 000000000000")), Ok(ScaleReading::Busy));
    }

    #[test]
    fn malformed_frames_say_why() {
        let e = |f: &[u8]| {
            parse(f)
                .map_err(|e| e.to_string())
                .err()
                .unwrap_or_default()
        };
        assert_eq!(
            e(b"\x02,0 0012\r"),
            "not a scale.toledo frame (9 bytes, expected 11 or 17 (short or with tare), plus a checksum byte): \"\\x02,0 0012\\r\""
        );
        assert_eq!(
            e(&framed(b",0 00A234000000")),
            format!(
                "not a scale.toledo frame (weight field \"00A234\" is not six digits): {}",
                crate::scale::escape(&framed(b",0 00A234000000"))
            )
        );
        assert_eq!(
            e(b"\x02,0 001234000000\r,"),
            "checksum 0x2C, expected 0x2B: the frame was damaged on the line; check cabling and baud rate"
        );
        assert_eq!(parse(b""), Err(ScaleError::Empty));
    }

    #[test]
    fn framer_finds_frames_after_garbage_with_and_without_checksums() {
        let a = framed(b",0 001234000000");
        let mut stream = b"junk\r\x7f".to_vec();
        stream.extend_from_slice(&a);
        stream.extend_from_slice(&a);
        let mut f = ToledoFramer::new(64, Checksum::Auto);
        // Byte by byte, as a slow port delivers.
        for b in &stream {
            f.push(std::slice::from_ref(b));
        }
        assert_eq!(frames(&mut f), vec![Framed::Frame(a.clone()); 2]);

        let plain = b"\x02,0 001234000000\r";
        let mut f = ToledoFramer::new(64, Checksum::Auto);
        f.push(plain);
        f.push(plain);
        assert_eq!(frames(&mut f), vec![Framed::Frame(plain.to_vec())]);
        assert_eq!(f.pending(), 17, "the second waits for the byte after CR");
        f.flush();
        assert_eq!(frames(&mut f), vec![Framed::Frame(plain.to_vec())]);

        let mut f = ToledoFramer::new(64, Checksum::Never);
        f.push(plain);
        assert_eq!(frames(&mut f), vec![Framed::Frame(plain.to_vec())]);

        // A checksum that is STX is taken as such when checksums are always present.
        let mut f = ToledoFramer::new(64, Checksum::Always);
        f.push(b"\x02abc\r\x02\x02,0 001234000000\r+");
        assert_eq!(
            frames(&mut f),
            vec![
                Framed::Frame(b"\x02abc\r\x02".to_vec()),
                Framed::Frame(a.clone())
            ]
        );
    }

    #[test]
    fn a_frame_cut_short_by_a_new_stx_is_dropped_and_an_overlong_one_reported() {
        let a = framed(b",0 001234000000");
        let mut f = ToledoFramer::new(18, Checksum::Always);
        let mut stream = b"\x02,0 0012".to_vec();
        stream.extend_from_slice(&a);
        stream.extend_from_slice(b"\x02");
        stream.extend_from_slice(&[b'0'; 30]);
        stream.extend_from_slice(&a);
        f.push(&stream);
        assert_eq!(
            frames(&mut f),
            vec![
                Framed::Frame(a.clone()),
                Framed::Overlong {
                    head: [&b"\x02"[..], &[b'0'; 16]].concat(),
                    total: 31
                },
                Framed::Frame(a),
            ]
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_well_shaped_frames(status in proptest::collection::vec(any::<u8>(), 3), digits in "[0-9 ]{6,12}") {
            let mut body = status;
            body.extend_from_slice(digits.as_bytes());
            let _ = parse(&framed(&body));
        }

        #[test]
        fn framer_stays_bounded_and_every_frame_starts_with_stx(
            chunks in proptest::collection::vec(proptest::collection::vec(prop_oneof![Just(STX), Just(CR), any::<u8>()], 0..40), 0..20),
            cap in 1usize..40,
            mode in prop_oneof![Just(Checksum::Auto), Just(Checksum::Always), Just(Checksum::Never)],
        ) {
            let mut f = ToledoFramer::new(cap, mode);
            for c in &chunks {
                f.push(c);
                prop_assert!(f.pending() <= cap.max(2));
                while let Some(fr) = f.next_frame() {
                    match fr {
                        Framed::Frame(b) => {
                            prop_assert_eq!(b[0] & 0x7f, STX);
                            // STX and CR always fit, the checksum may come on top.
                            prop_assert!(b.len() <= cap.max(2) + 1);
                        }
                        Framed::Overlong { head, total } => {
                            prop_assert!(head.len() <= cap);
                            prop_assert!(total > head.len());
                        }
                    }
                }
            }
        }
    }
}
