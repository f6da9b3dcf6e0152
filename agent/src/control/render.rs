//! Human-readable renderings for `edge-agent status` and `edge-agent inspect`.

use std::fmt::Write as _;
use std::path::Path;

use edge_protocol::Envelope;
use serde_json::Value;

use crate::time::format_rfc3339_ms;

/// The status document as an operator reads it.
pub fn render_status(v: &Value) -> String {
    let mut out = String::new();
    let up = &v["upstream"];
    let _ = writeln!(
        out,
        "upstream:  {} ({}), {} delivered since start{}",
        if up["connected"].as_bool() == Some(true) {
            "connected"
        } else {
            "NOT CONNECTED"
        },
        up["detail"].as_str().unwrap_or(""),
        up["delivered"],
        match up["rejected"].as_u64() {
            Some(n) if n > 0 => format!(", {n} refused by central (set aside)"),
            _ => String::new(),
        }
    );
    let _ = writeln!(
        out,
        "backlog:   {} events, oldest pending {} s, draining {} events/s{}",
        v["backlog"],
        v["oldest_pending_s"],
        v["drain_rate"],
        match v["eta_s"].as_f64() {
            Some(s) => format!(
                ", empty in about {}",
                humantime::format_duration(std::time::Duration::from_secs(s as u64))
            ),
            None => String::new(),
        }
    );
    let _ = writeln!(out, "dropped:   {}", v["dropped"]);
    if v["storage"]["set_aside"].as_u64().is_some_and(|n| n > 0) {
        let _ = writeln!(
            out,
            "set aside: {} events (unreadable, or refused by central); they are kept in the buffer file (edge-agent inspect lists them and why)",
            v["storage"]["set_aside"]
        );
    }
    let st = &v["storage"];
    let _ = writeln!(
        out,
        "buffer:    {} events stored, {} bytes{}",
        st["stored"],
        st["file_bytes"],
        match st["error"].as_str() {
            Some(e) => format!(", ERROR: {e}"),
            None => String::new(),
        }
    );
    let _ = writeln!(
        out,
        "config:    version {}",
        v["config_version"]
            .as_u64()
            .map(|n| n.to_string())
            .unwrap_or_else(|| "local file".into())
    );
    let _ = writeln!(out, "sources:");
    if let Some(map) = v["sources"].as_object() {
        if map.is_empty() {
            let _ = writeln!(out, "  (none configured)");
        }
        for (id, s) in map {
            let _ = writeln!(
                out,
                "  {id:<24} {:<9} {} readings, last {}  {}",
                s["state"].as_str().unwrap_or("?"),
                s["readings"],
                s["last_reading_at"].as_str().unwrap_or("never"),
                s["detail"].as_str().unwrap_or("")
            );
        }
    }
    out
}

/// `edge-agent inspect`: counts, oldest/newest and a sample of a stopped agent's buffer.
pub fn inspect(path: &Path) -> Result<String, crate::buffer::StoreError> {
    let i = crate::buffer::inspect(path, 6)?;
    let s = &i.stats;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "buffer file:  {} ({} bytes)",
        path.display(),
        s.file_bytes
    );
    let _ = writeln!(
        out,
        "stored:       {} events (seq {:?} to {:?})",
        s.stored, s.first_seq, s.last_seq
    );
    let _ = writeln!(
        out,
        "pending:      {} events, oldest observed {}",
        s.backlog,
        s.oldest_pending_ms
            .map(format_rfc3339_ms)
            .unwrap_or_else(|| "-".into())
    );
    let _ = writeln!(out, "dropped:      {}", s.dropped);
    let _ = writeln!(
        out,
        "set aside:    {} events (kept, not sent: they cannot be read back, or central refused them)",
        s.set_aside
    );
    for (seq, why) in &i.set_aside {
        let _ = writeln!(out, "  seq {seq:<8} {why}");
    }
    let _ = writeln!(out, "sample (oldest and newest):");
    for (seq, pending, cbor) in &i.sample {
        match Envelope::from_cbor(cbor) {
            Ok(e) => {
                let _ = writeln!(
                    out,
                    "  seq {seq:<8} {:<9} {} {:<16} {:<16} {}",
                    if *pending { "pending" } else { "delivered" },
                    e.observed_at,
                    e.source,
                    e.kind(),
                    String::from_utf8_lossy(&e.to_json())
                );
            }
            Err(err) => {
                let _ = writeln!(out, "  seq {seq:<8} unreadable: {err}");
            }
        }
    }
    Ok(out)
}
