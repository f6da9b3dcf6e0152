//! What an HTTP endpoint's answer means for a batch (contract: HTTPS upstream), and the
//! batch's `Idempotency-Key`. Pure: no I/O, no clock of its own.

use std::time::{Duration, SystemTime};

/// A `Retry-After` beyond this is taken as this: one misconfigured header must not stop a
/// site's uplink for days. Logged and shown in status like any other wait.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

/// What to do with the batch after an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx, or 409 (the endpoint has it already): delete it from the backlog.
    Delivered,
    /// Send the same batch again later, not before `after` (the endpoint's `Retry-After`).
    Retry {
        why: String,
        after: Option<Duration>,
    },
    /// The endpoint refused something in it: split it until the refused event is alone.
    Refused { why: String },
}

/// Judges an answer: its status, its `Retry-After` header and the start of its body.
///
/// 401, 403, 404, 405 and 407 are retried like a 503, not split: they say the endpoint, its
/// path or our credentials are wrong (a configuration to fix), nothing about an event, and
/// splitting on them would set aside the whole backlog.
pub fn judge(status: u16, retry_after: Option<&str>, body: &str, now: SystemTime) -> Verdict {
    let said = describe(status, body);
    let after = retry_after.and_then(|v| parse_retry_after(v, now));
    match status {
        200..=299 | 409 => Verdict::Delivered,
        408 | 425 | 429 | 500..=599 => Verdict::Retry { why: said, after },
        401 => Verdict::Retry {
            why: format!("{said}; the endpoint did not accept the bearer token: check upstream.token_file"),
            after,
        },
        403 => Verdict::Retry {
            why: format!("{said}; the endpoint does not allow this client: check upstream.token_file and upstream.cert_file"),
            after,
        },
        404 | 405 => Verdict::Retry {
            why: format!("{said}; check the path in upstream.url"),
            after,
        },
        407 => Verdict::Retry {
            why: format!("{said}; a proxy wants credentials, and the agent connects directly: point upstream.url at the endpoint itself"),
            after,
        },
        400..=499 => Verdict::Refused { why: said },
        300..=399 => Verdict::Retry {
            why: format!("{said}; redirects are not followed: set upstream.url to the address it points to"),
            after,
        },
        _ => Verdict::Retry {
            why: format!("{said}; not an answer to a POST"),
            after,
        },
    }
}

/// `HTTP 503 Service Unavailable: <the body's first 200 characters>`.
fn describe(status: u16, body: &str) -> String {
    let reason = hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut text: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some((cut, _)) = text.char_indices().nth(200) {
        text.truncate(cut);
        text.push('…');
    }
    match (reason, text.is_empty()) {
        ("", true) => format!("HTTP {status}"),
        ("", false) => format!("HTTP {status}: {text}"),
        (r, true) => format!("HTTP {status} {r}"),
        (r, false) => format!("HTTP {status} {r}: {text}"),
    }
}

/// `Retry-After` (RFC 9110 10.2.3): delay-seconds or an HTTP-date (IMF-fixdate), as a wait
/// from `now`, at most [`RETRY_AFTER_MAX`]; None if it is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = parse_imf_fixdate(value)?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(RETRY_AFTER_MAX))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`.
fn parse_imf_fixdate(value: &str) -> Option<SystemTime> {
    let rest = value.split_once(", ")?.1;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, clock, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? as u8 + 1;
    let date = time::Date::from_calendar_date(
        year.parse().ok()?,
        time::Month::try_from(month).ok()?,
        day.parse().ok()?,
    )
    .ok()?;
    let hms: Vec<u8> = clock
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    let at = date.with_hms(*h, *m, *s).ok()?.assume_utc();
    let secs = u64::try_from(at.unix_timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// The `Idempotency-Key` of a batch: the first 16 bytes of SHA-256 over its event ids, each
/// followed by a newline, in lowercase hex (32 characters). The same events in the same order
/// give the same key on every retry and after a restart. A replay's key covers `replay\n`
/// first: a replay is sent to be taken again, not to be recognised as the original batch.
pub fn idempotency_key<'a>(ids: impl IntoIterator<Item = &'a str>, replay: bool) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    if replay {
        ctx.update(b"replay\n");
    }
    for id in ids {
        ctx.update(id.as_bytes());
        ctx.update(b"\n");
    }
    let digest = ctx.finish();
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn success_and_conflict_deliver() {
        for status in [200, 201, 202, 204, 299, 409] {
            assert_eq!(
                judge(status, None, "", at(0)),
                Verdict::Delivered,
                "{status}"
            );
        }
    }

    #[test]
    fn overload_timeouts_and_server_errors_are_retried_with_their_retry_after() {
        for status in [408, 425, 429, 500, 502, 503, 504, 599] {
            assert!(
                matches!(
                    judge(status, None, "", at(0)),
                    Verdict::Retry { after: None, .. }
                ),
                "{status}"
            );
        }
        assert_eq!(
            judge(503, Some("7"), "down for maintenance", at(0)),
            Verdict::Retry {
                why: "HTTP 503 Service Unavailable: down for maintenance".into(),
                after: Some(Duration::from_secs(7)),
            }
        );
    }

    #[test]
    fn a_refusal_of_the_content_splits_but_one_of_credentials_or_path_does_not() {
        for status in [400, 413, 415, 422] {
            assert!(
                matches!(judge(status, None, "", at(0)), Verdict::Refused { .. }),
                "{status}"
            );
        }
        for (status, hint) in [
            (401, "upstream.token_file"),
            (403, "upstream.cert_file"),
            (404, "upstream.url"),
            (405, "upstream.url"),
            (407, "proxy"),
            (301, "redirects"),
        ] {
            match judge(status, None, "", at(0)) {
                Verdict::Retry { why, .. } => assert!(why.contains(hint), "{status}: {why}"),
                v => panic!("{status}: {v:?}"),
            }
        }
    }

    #[test]
    fn the_reason_carries_the_start_of_the_body_on_one_line() {
        let body = format!("line one\n  line two {}", "x".repeat(500));
        let Verdict::Refused { why } = judge(400, None, &body, at(0)) else {
            panic!("not refused");
        };
        assert!(
            why.starts_with("HTTP 400 Bad Request: line one line two xxx"),
            "{why}"
        );
        assert!(why.ends_with('…'), "{why}");
        assert!(why.chars().count() < 240, "{why}");
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date_and_is_capped() {
        assert_eq!(
            parse_retry_after("120", at(0)),
            Some(Duration::from_secs(120))
        );
        // RFC 9110's example date: 1994-11-06T08:49:37Z is 784111777.
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(
            parse_retry_after(date, at(784_111_777 - 30)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after(date, at(784_111_777 + 5)),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("999999", at(0)), Some(RETRY_AFTER_MAX));
        for bad in ["", "soon", "-1", "Sun, 06 Nov 1994 08:49:37 CET", "1.5"] {
            assert_eq!(parse_retry_after(bad, at(0)), None, "{bad:?}");
        }
    }

    #[test]
    fn the_idempotency_key_depends_on_the_ids_their_order_and_replay() {
        let a = idempotency_key(["id-1", "id-2"], false);
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(a, idempotency_key(["id-1", "id-2"], false));
        assert_ne!(a, idempotency_key(["id-2", "id-1"], false));
        assert_ne!(a, idempotency_key(["id-1"], false));
        assert_ne!(a, idempotency_key(["id-1", "id-2"], true));
        // Ids are separated: ["ab","c"] is not ["a","bc"].
        assert_ne!(
            idempotency_key(["ab", "c"], false),
            idempotency_key(["a", "bc"], false)
        );
        // As sha256sum computes it: printf 'id-1\nid-2\n' | sha256sum | cut -c1-32
        assert_eq!(a, "29e20b94f5be65562de6742ed66727c6");
    }
}
