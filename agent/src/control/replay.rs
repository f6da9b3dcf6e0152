//! Replay requests: `{"since": RFC3339, "until": RFC3339?}`, from the control socket and from
//! `{prefix}/{site}/cmd/replay`; upstream sends the delivered events of the window again.

/// A request to send delivered events observed in a window again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayRequest {
    pub since_ms: u64,
    pub until_ms: u64,
}

/// Why a replay request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplayError {
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("{key}: {value:?} is not an RFC 3339 time (e.g. 2026-11-27T08:00:00Z)")]
    BadTime { key: &'static str, value: String },
    #[error("{key}: {value} is not an RFC 3339 time string")]
    NotText { key: &'static str, value: String },
    #[error("\"since\" is required (RFC 3339)")]
    NoSince,
    #[error("\"until\" is before \"since\"")]
    Backwards,
}

/// Reads `{"since": RFC3339, "until": RFC3339?}`; `until` defaults to now.
pub fn parse_replay(json: &[u8]) -> Result<ReplayRequest, ReplayError> {
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| ReplayError::NotJson(e.to_string()))?;
    let time = |key: &'static str| -> Result<Option<u64>, ReplayError> {
        match v.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => crate::time::parse_rfc3339_ms(s)
                .map(Some)
                .ok_or_else(|| ReplayError::BadTime {
                    key,
                    value: s.clone(),
                }),
            Some(other) => Err(ReplayError::NotText {
                key,
                value: other.to_string(),
            }),
        }
    };
    let since_ms = time("since")?.ok_or(ReplayError::NoSince)?;
    let until_ms = time("until")?.unwrap_or_else(crate::time::now_ms);
    if until_ms < since_ms {
        return Err(ReplayError::Backwards);
    }
    Ok(ReplayRequest { since_ms, until_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_read_and_every_fault_is_named() {
        let r = parse_replay(br#"{"since":"2026-11-27T08:00:00Z","until":"2026-11-27T09:00:00Z"}"#);
        assert_eq!(
            r.map(|r| r.until_ms - r.since_ms),
            Ok(3_600_000),
            "one hour"
        );
        assert_eq!(parse_replay(b"{}"), Err(ReplayError::NoSince));
        assert!(matches!(
            parse_replay(br#"{"since":"yesterday"}"#),
            Err(ReplayError::BadTime { key: "since", .. })
        ));
        assert_eq!(
            parse_replay(br#"{"since":"2026-11-27T09:00:00Z","until":"2026-11-27T08:00:00Z"}"#),
            Err(ReplayError::Backwards)
        );
        assert!(matches!(
            parse_replay(b"nope"),
            Err(ReplayError::NotJson(_))
        ));
    }
}
