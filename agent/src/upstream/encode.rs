//! Events as upstream sends them: one event in the configured format, or several as one
//! array (a CBOR array of the stored envelopes with `format = "cbor"`, else a JSON array of
//! what each would be alone). The MQTT and the HTTP upstream share it.

use std::borrow::Cow;

use edge_protocol::Envelope;

use crate::buffer::PendingRow;
use crate::config::Format;

/// One event's payload: a stored row, already decoded as `env`.
pub fn event<'r>(format: Format, row: &'r PendingRow, env: &Envelope) -> Cow<'r, [u8]> {
    match format {
        // As stored: no encoding, no copy.
        Format::Cbor => Cow::Borrowed(&row.cbor),
        _ => Cow::Owned(envelope(format, env)),
    }
}

/// An envelope in `format`.
pub fn envelope(format: Format, env: &Envelope) -> Vec<u8> {
    match format {
        Format::Cbor => env.to_cbor(),
        Format::Json => env.to_json(),
        Format::CloudEvents => edge_protocol::cloudevents::to_json(env),
    }
}

/// Several events as one array, in order.
pub fn array(format: Format, rows: &[PendingRow], envs: &[Envelope]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.iter().map(|r| r.cbor.len() + 64).sum());
    match format {
        Format::Cbor => {
            cbor_array_header(rows.len(), &mut out);
            for r in rows {
                out.extend_from_slice(&r.cbor);
            }
        }
        _ => json_array(
            rows.iter().zip(envs).map(|(r, env)| event(format, r, env)),
            &mut out,
        ),
    }
    out
}

/// Encoded JSON values as one JSON array.
pub fn json_array<T: AsRef<[u8]>>(items: impl IntoIterator<Item = T>, out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item.as_ref());
    }
    out.push(b']');
}

/// The CBOR head of an array of `n` items.
fn cbor_array_header(n: usize, out: &mut Vec<u8>) {
    match n {
        0..=23 => out.push(0x80 | n as u8),
        24..=0xff => out.extend_from_slice(&[0x98, n as u8]),
        0x100..=0xffff => {
            out.push(0x99);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(0x9a);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{cbor_array_header, json_array};

    #[test]
    fn a_cbor_batch_starts_with_the_array_head_rfc_8949_gives() {
        let head = |n| {
            let mut out = Vec::new();
            cbor_array_header(n, &mut out);
            out
        };
        assert_eq!(head(0), [0x80]);
        assert_eq!(head(23), [0x97]);
        assert_eq!(head(24), [0x98, 24]);
        assert_eq!(head(255), [0x98, 0xff]);
        assert_eq!(head(256), [0x99, 1, 0]);
        assert_eq!(head(70_000), [0x9a, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn a_json_array_separates_its_items_with_commas() {
        let mut out = Vec::new();
        json_array([&b"{}"[..], b"1", b"\"x\""], &mut out);
        assert_eq!(out, b"[{},1,\"x\"]");
        out.clear();
        json_array(Vec::<Vec<u8>>::new(), &mut out);
        assert_eq!(out, b"[]");
    }
}
