//! The `json` and `delimited` decoders: frames read as records, mapped by the rules.

use super::{apply, Record, Rule};
use crate::decoder::{decode_message, Context, Decoded, Decoder, Framing, TextFramer};
use crate::event::{Body, ExceptionReason};

/// How a frame becomes a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Records {
    /// `json`: one JSON object.
    Json,
    /// `delimited`: columns split on this separator.
    Delimited(String),
}

/// Frames (lines or STX/ETX telegrams on a serial port, whole MQTT messages) read as JSON or
/// delimited records and mapped by the first matching rule.
#[derive(Debug)]
pub struct RulesDecoder {
    framer: TextFramer,
    records: Records,
    rules: Vec<Rule>,
    max_frame: usize,
}

impl RulesDecoder {
    pub fn new(framing: Framing, records: Records, rules: Vec<Rule>, max_frame: usize) -> Self {
        RulesDecoder {
            framer: TextFramer::new(framing, max_frame),
            records,
            rules,
            max_frame,
        }
    }
}

/// A frame's body: the mapped event, or an `undecodable` exception saying why not.
fn body(records: &Records, rules: &[Rule], frame: &[u8], year: u16) -> Body {
    let record = match records {
        Records::Json => Record::json(frame),
        Records::Delimited(separator) => Record::delimited(frame, separator),
    };
    match record.and_then(|r| apply(rules, &r, year)) {
        Ok(body) => body,
        Err(detail) => Body::exception(ExceptionReason::Undecodable, detail),
    }
}

impl Decoder for RulesDecoder {
    fn push(&mut self, bytes: &[u8], cx: Context, out: &mut Vec<Decoded>) {
        let (records, rules) = (&self.records, &self.rules);
        self.framer.decode(bytes, self.max_frame, out, |frame| {
            body(records, rules, frame, cx.year())
        });
    }

    fn message(&mut self, payload: &[u8], cx: Context, out: &mut Vec<Decoded>) {
        decode_message(payload, self.max_frame, out, |frame| {
            body(&self.records, &self.rules, frame, cx.year())
        });
    }
}
