//! How deep a CBOR item nests, found without recursion.
//!
//! The CBOR decoder recurses once per nested array, map or tag and has no limit of its own, so
//! a damaged buffer row of a million `0x81` bytes would overflow the stack of whatever thread
//! reads it back. Every CBOR input is first walked here, with a counter per open container
//! instead of a call, and refused when it nests deeper than an envelope ever does.

/// The deepest `within` looks.
pub const MAX: usize = 64;

/// Items left in an open container of indefinite length (until its break).
const UNTIL_BREAK: u64 = u64::MAX;

/// Whether the first CBOR item in `bytes` is complete and nests at most `max` (at most [`MAX`])
/// arrays, maps and tags deep. Bytes after it are not looked at.
pub fn within(bytes: &[u8], max: usize) -> bool {
    let max = max.min(MAX);
    // Items still to read in each open container, innermost last.
    let mut open = [0u64; MAX];
    let mut depth = 0;
    let mut at = 0;
    loop {
        let Some(&initial) = bytes.get(at) else {
            return false;
        };
        at += 1;
        let (major, info) = (initial >> 5, initial & 0x1f);
        if initial == 0xff {
            // A break closes the innermost container, which must be of indefinite length.
            if depth == 0 || open[depth - 1] != UNTIL_BREAK {
                return false;
            }
            depth -= 1;
        } else {
            let arg = match info {
                0..=23 => Some(u64::from(info)),
                24..=27 => {
                    let len = 1usize << (info - 24);
                    let Some(b) = bytes.get(at..at + len) else {
                        return false;
                    };
                    at += len;
                    Some(b.iter().fold(0u64, |n, &b| n << 8 | u64::from(b)))
                }
                31 if (2..=5).contains(&major) => None,
                _ => return false,
            };
            let items = match (major, arg) {
                // Integers, simple values and floats: nothing inside.
                (0 | 1 | 7, _) => 0,
                (2 | 3, Some(len)) => {
                    match usize::try_from(len).ok().and_then(|l| at.checked_add(l)) {
                        Some(end) if end <= bytes.len() => at = end,
                        _ => return false,
                    }
                    0
                }
                // Chunks, or items, until a break.
                (2..=5, None) => UNTIL_BREAK,
                // Never UNTIL_BREAK: a container that long cannot end in a slice anyway.
                (4, Some(n)) if n != UNTIL_BREAK => n,
                (5, Some(n)) => match n.checked_mul(2) {
                    Some(items) if items != UNTIL_BREAK => items,
                    _ => return false,
                },
                // A tag holds one item.
                (6, _) => 1,
                _ => return false,
            };
            if items > 0 {
                if depth == max {
                    return false;
                }
                open[depth] = items;
                depth += 1;
                continue;
            }
        }
        // An item is complete: count it in its container, closing those it fills.
        loop {
            if depth == 0 {
                return true;
            }
            let left = &mut open[depth - 1];
            if *left == UNTIL_BREAK {
                break;
            }
            *left -= 1;
            if *left > 0 {
                break;
            }
            depth -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::within;

    fn cbor(v: &ciborium::Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).expect("a value encodes");
        out
    }

    #[test]
    fn scalars_strings_and_flat_containers_nest_at_most_one_deep() {
        use ciborium::Value::*;
        for v in [
            Integer(0.into()),
            Integer((-1_000_000).into()),
            Integer(u64::MAX.into()),
            Float(1.5),
            Bool(true),
            Null,
            Text("x".repeat(300)),
            Bytes(vec![7; 70_000]),
        ] {
            assert!(within(&cbor(&v), 0), "{v:?}");
        }
        let flat = Map(vec![(Text("a".into()), Array(vec![]))]);
        assert!(!within(&cbor(&flat), 0));
        assert!(within(&cbor(&flat), 1));
    }

    #[test]
    fn depth_is_counted_through_arrays_maps_and_tags() {
        use ciborium::Value::*;
        let v = Map(vec![(
            Text("body".into()),
            Array(vec![Tag(1, Box::new(Array(vec![Integer(1.into())])))]),
        )]);
        assert!(within(&cbor(&v), 4));
        assert!(!within(&cbor(&v), 3));
    }

    #[test]
    fn a_million_nested_arrays_are_refused_without_overflowing_the_stack() {
        let mut bytes = vec![0x81; 1_000_000];
        bytes.push(0x00);
        assert!(!within(&bytes, 32));
        // Indefinite-length ones too.
        let mut bytes = vec![0x9f; 1_000_000];
        bytes.extend(vec![0xff; 1_000_000]);
        assert!(!within(&bytes, 32));
    }

    #[test]
    fn indefinite_lengths_close_at_their_break() {
        // [_ 1, [_ ], "a"] then a stray break after the item (not looked at).
        assert!(within(&[0x9f, 0x01, 0x9f, 0xff, 0x61, b'a', 0xff, 0xff], 2));
        // {_ "a": (_ h'01' h'02')}
        assert!(within(
            &[0xbf, 0x61, b'a', 0x5f, 0x41, 0x01, 0x41, 0x02, 0xff, 0xff],
            2
        ));
        // A break with nothing open, or closing a definite array.
        assert!(!within(&[0xff], 8));
        assert!(!within(&[0x82, 0x01, 0xff], 8));
    }

    #[test]
    fn truncated_and_reserved_input_is_refused() {
        for bytes in [
            &[][..],
            &[0x82, 0x01],       // an array of 2 with 1
            &[0x19, 0x01],       // a 2-byte integer cut short
            &[0x63, b'a', b'b'], // a text of 3 with 2
            &[0x1c],             // reserved additional information
            &[0x1f],             // indefinite length for an integer
            &[0x9f, 0x01],       // no break
            &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // 2^64-1 bytes
        ] {
            assert!(!within(bytes, 8), "{bytes:02x?}");
        }
    }
}
