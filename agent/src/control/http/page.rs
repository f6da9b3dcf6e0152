//! `GET /`: the status page for a shift lead. One self-contained HTML document (inline style,
//! no script, no external asset) that reloads itself every [`REFRESH_S`] seconds and says in
//! plain words what is wrong and what to do: the overall verdict, the uplink, the backlog and
//! when it will be empty, each device with its state, its last reading and (for one that is
//! retrying) the fix, the last exceptions with the bytes the device sent, and the
//! configuration in effect.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use super::health::Health;
use crate::status::RecentException;
use crate::time::{format_rfc3339_ms, now_ms};

/// The page reloads itself this often.
pub const REFRESH_S: u32 = 5;

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d2430}
header{padding:14px 24px;background:#1d2430;color:#fff;display:flex;justify-content:space-between;align-items:baseline;flex-wrap:wrap}
header h1{font-size:1.3em;margin:0}
main{padding:16px 24px;max-width:1200px}
.verdict{padding:14px 18px;border-radius:6px;font-size:1.15em;margin-bottom:16px}
.ok{background:#dff3e4;color:#14532d;border-left:6px solid #16a34a}
.bad{background:#fde2e1;color:#7f1d1d;border-left:6px solid #dc2626}
.warn{background:#fff4d6;color:#713f12;border-left:6px solid #d97706}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(190px,1fr));gap:12px;margin-bottom:18px}
.card{background:#fff;border-radius:6px;padding:12px 14px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.card .label{font-size:.8em;color:#5b6473;text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:1.5em;font-weight:600;margin-top:4px}
.card .sub{font-size:.85em;color:#5b6473;margin-top:2px}
section{background:#fff;border-radius:6px;padding:12px 14px;margin-bottom:18px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
h2{font-size:1.05em;margin:0 0 8px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #e5e7eb;vertical-align:top}
th{font-size:.8em;color:#5b6473;text-transform:uppercase}
.badge{display:inline-block;padding:2px 8px;border-radius:10px;font-size:.8em;font-weight:700}
.b-open{background:#dcfce7;color:#166534}
.b-retrying{background:#fee2e2;color:#991b1b}
.fix{margin-top:4px;color:#7f1d1d;font-weight:600}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;background:#f1f2f4;padding:1px 4px;border-radius:3px;word-break:break-all}
.muted{color:#5b6473}
footer{padding:0 24px 18px;color:#5b6473;font-size:.85em}
";

/// The whole page.
pub fn render(site: &str, doc: &Value, health: &Health, recent: &[RecentException]) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let now = now_ms();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>edge-agent {site} status</title><style>{STYLE}</style></head><body>\
         <header><h1>Site {site}: edge-agent status</h1>\
         <span>updated {at}, refreshes every {REFRESH_S} s</span></header><main>",
        site = esc(site),
        at = esc(&format_rfc3339_ms(now)),
    );
    verdict(&mut out, doc, health);
    cards(&mut out, doc);
    sources(&mut out, doc, now);
    exceptions(&mut out, recent, now);
    let _ = writeln!(
        out,
        "</main><footer>edge-agent {} &middot; machine-readable: <a href=\"/status.json\">/status.json</a>, \
         <a href=\"/healthz\">/healthz</a>, <a href=\"/metrics\">/metrics</a></footer></body></html>",
        esc(doc["version"].as_str().unwrap_or("")),
    );
    out
}

fn verdict(out: &mut String, doc: &Value, health: &Health) {
    let retrying: Vec<&str> = doc["sources"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, s)| s["state"] != "open")
                .map(|(id, _)| id.as_str())
                .collect()
        })
        .unwrap_or_default();
    if !health.ok {
        let _ = write!(
            out,
            "<div class=\"verdict bad\"><b>Needs attention now.</b><ul>"
        );
        for r in &health.reasons {
            let _ = write!(out, "<li>{}</li>", esc(r));
        }
        if !retrying.is_empty() {
            let _ = write!(
                out,
                "<li>devices not connected: {}</li>",
                esc(&retrying.join(", "))
            );
        }
        out.push_str("</ul></div>");
    } else if !retrying.is_empty() {
        let _ = write!(
            out,
            "<div class=\"verdict warn\"><b>Running, but {} device(s) not connected:</b> {}. \
             Their readings are missing until they are; see <i>What to do</i> below.</div>",
            retrying.len(),
            esc(&retrying.join(", "))
        );
    } else {
        out.push_str(
            "<div class=\"verdict ok\"><b>All good.</b> Every device is connected, readings are stored and sent to central.</div>",
        );
    }
    if let Some(h) = doc["http"].as_object() {
        if let Some(e) = h.get("error").and_then(Value::as_str) {
            let _ = write!(out, "<div class=\"verdict warn\">{}</div>", esc(e));
        }
    }
}

fn card(out: &mut String, label: &str, value: &str, sub: &str) {
    let _ = write!(
        out,
        "<div class=\"card\"><div class=\"label\">{}</div><div class=\"value\">{}</div><div class=\"sub\">{}</div></div>",
        esc(label),
        esc(value),
        esc(sub)
    );
}

fn cards(out: &mut String, doc: &Value) {
    out.push_str("<div class=\"cards\">");
    let up = &doc["upstream"];
    let connected = up["connected"] == true;
    card(
        out,
        "Central (upstream)",
        if connected {
            "connected"
        } else {
            "NOT CONNECTED"
        },
        &format!(
            "{}; {} events delivered since start{}",
            up["detail"].as_str().unwrap_or(""),
            up["delivered"].as_u64().unwrap_or(0),
            match up["rejected"].as_u64() {
                Some(n) if n > 0 => format!(
                    "; {n} refused by central, set aside (edge-agent inspect lists them and why)"
                ),
                _ => String::new(),
            }
        ),
    );
    let backlog = doc["backlog"].as_u64().unwrap_or(0);
    card(
        out,
        "Backlog",
        &format!("{backlog} events"),
        "stored, waiting for central",
    );
    let oldest = doc["oldest_pending_s"].as_f64().unwrap_or(0.0);
    card(
        out,
        "Oldest waiting",
        &if backlog == 0 {
            "none".to_string()
        } else {
            age(Duration::from_secs_f64(oldest.max(0.0)))
        },
        "age of the oldest event not yet sent",
    );
    let rate = doc["drain_rate"].as_f64().unwrap_or(0.0);
    card(
        out,
        "Sending",
        &format!("{rate:.1} events/s"),
        "to central, over the last 30 s",
    );
    let eta = match doc["eta_s"].as_f64() {
        Some(s) => format!("in about {}", age(Duration::from_secs_f64(s.max(0.0)))),
        None if backlog == 0 => "empty now".to_string(),
        None => "not draining".to_string(),
    };
    card(
        out,
        "Backlog empty",
        &eta,
        if backlog > 0 && doc["eta_s"].is_null() {
            "nothing is being sent: see Central"
        } else {
            "at the current rate"
        },
    );
    card(
        out,
        "Dropped",
        &doc["dropped"].as_u64().unwrap_or(0).to_string(),
        "undelivered events deleted for room, ever",
    );
    let st = &doc["storage"];
    card(
        out,
        "Buffer",
        &match st["error"].as_str() {
            Some(_) => "FAILING".to_string(),
            None => format!("{} events", st["stored"].as_u64().unwrap_or(0)),
        },
        &match st["error"].as_str() {
            Some(e) => e.to_string(),
            None => format!("{} bytes on disk", st["file_bytes"].as_u64().unwrap_or(0)),
        },
    );
    card(
        out,
        "Configuration",
        &match doc["config_version"].as_u64() {
            Some(v) => format!("version {v}"),
            None => "local file".to_string(),
        },
        "pushed by central, or the file on this gateway",
    );
    out.push_str("</div>");
}

fn sources(out: &mut String, doc: &Value, now: u64) {
    out.push_str(
        "<section><h2>Devices</h2><table><tr><th>Device</th><th>State</th><th>Last reading</th><th>Readings</th><th>Details / what to do</th></tr>",
    );
    let empty = serde_json::Map::new();
    let map = doc["sources"].as_object().unwrap_or(&empty);
    if map.is_empty() {
        out.push_str("<tr><td colspan=\"5\" class=\"muted\">no devices configured</td></tr>");
    }
    for (id, s) in map {
        let state = s["state"].as_str().unwrap_or("?");
        let detail = s["detail"].as_str().unwrap_or("");
        let last = match s["last_reading_at"].as_str() {
            Some(at) => format!(
                "{}<div class=\"muted\">{}</div>",
                esc(at),
                esc(&ago(s["last_reading_at"].as_str(), now))
            ),
            None => "<span class=\"muted\">none yet</span>".to_string(),
        };
        let details = if state == "open" {
            esc(detail)
        } else {
            // "what is wrong; what to do": the fix on its own line.
            match detail.split_once("; ") {
                Some((what, fix)) => format!(
                    "{}<div class=\"fix\">What to do: {}</div>",
                    esc(what),
                    esc(fix)
                ),
                None => esc(detail),
            }
        };
        let _ = write!(
            out,
            "<tr><td><b>{}</b></td><td><span class=\"badge b-{}\">{}</span></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(id),
            if state == "open" { "open" } else { "retrying" },
            esc(&state.to_uppercase()),
            last,
            s["readings"].as_u64().unwrap_or(0),
            details
        );
    }
    out.push_str("</table></section>");
}

fn exceptions(out: &mut String, recent: &[RecentException], now: u64) {
    let _ = write!(
        out,
        "<section><h2>Last exceptions</h2><table><tr><th>When</th><th>Device</th><th>Reason</th><th>Detail</th><th>Bytes the device sent</th></tr>"
    );
    if recent.is_empty() {
        out.push_str(
            "<tr><td colspan=\"5\" class=\"muted\">none since the agent started</td></tr>",
        );
    }
    for e in recent {
        let reason = serde_json::to_value(e.reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let at = format_rfc3339_ms(e.at_ms);
        let more = if e.raw_len > e.raw.len() {
            format!(
                " <span class=\"muted\">(first {} of {} bytes)</span>",
                e.raw.len(),
                e.raw_len
            )
        } else {
            String::new()
        };
        let _ = write!(
            out,
            "<tr><td>{}<div class=\"muted\">{}</div></td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code>{}</td></tr>",
            esc(&at),
            esc(&ago(Some(&at), now)),
            esc(&e.source),
            esc(&reason.replace('_', " ")),
            esc(&e.detail),
            esc(&printable(&e.raw)),
            more
        );
    }
    out.push_str("</table></section>");
}

/// Raw bytes as text: printable ASCII as is, the rest as `\xNN` (`<STX>`-like control bytes
/// stay visible).
pub fn printable(raw: &[u8]) -> String {
    let mut s = String::with_capacity(raw.len());
    for &b in raw {
        match b {
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            _ => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    if s.is_empty() {
        s.push_str("(none)");
    }
    s
}

/// "12 s ago" from an RFC 3339 time.
fn ago(at: Option<&str>, now: u64) -> String {
    let Some(ms) = at.and_then(crate::time::parse_rfc3339_ms) else {
        return String::new();
    };
    format!("{} ago", age(Duration::from_millis(now.saturating_sub(ms))))
}

/// A duration to the second, as "1h 2m 3s".
fn age(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use edge_protocol::event::ExceptionReason;
    use serde_json::json;

    use super::*;

    #[test]
    fn a_retrying_device_shows_its_fix_and_raw_bytes_are_escaped() {
        let doc = json!({
            "backlog": 3, "oldest_pending_s": 75.0, "drain_rate": 0.0, "eta_s": null,
            "dropped": 0, "config_version": 4, "version": "0.1.0",
            "upstream": {"connected": false, "detail": "connection refused", "delivered": 0},
            "storage": {"stored": 3, "file_bytes": 1000, "error": null},
            "sources": {
                "scanner-<1>": {"state": "retrying", "readings": 0,
                    "detail": "serial port /dev/x (source scanner-<1>): not found; check the cable"},
            }
        });
        let recent = [RecentException {
            at_ms: now_ms(),
            source: Arc::from("scale-1"),
            reason: ExceptionReason::ScaleError,
            detail: "overload".into(),
            raw: b"\x02S+ 99.9\r\n".to_vec(),
            raw_len: 11,
        }];
        let html = render(
            "dc-1",
            &doc,
            &Health {
                ok: true,
                reasons: vec![],
            },
            &recent,
        );
        assert!(html.contains("<b>scanner-&lt;1&gt;</b>"), "{html}");
        assert!(html.contains("What to do: check the cable"), "{html}");
        assert!(html.contains("\\x02S+ 99.9\\r\\n"), "{html}");
        assert!(html.contains("scale error"), "{html}");
        assert!(html.contains("version 4"), "{html}");
        assert!(html.contains("not draining"), "{html}");
        assert!(html.contains("http-equiv=\"refresh\""), "{html}");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "external asset"
        );
    }
}
