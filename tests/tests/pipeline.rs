//! The core pipeline end to end: the built binary, real mosquitto brokers, real ptys, real redb.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::{ensure, Result};
use edge_tests::{rss_kib, run_cli, wait_for, Agent, Broker, Collector, Pty, DEADLINE};
use serde_json::Value;

fn config(central: &Broker, sources: &str) -> String {
    format!(
        r#"
[site]
id = "dc-test-01"
[storage]
path = "{{dir}}/buffer.redb"
[upstream]
url = "{}"
format = "json"
[[stations]]
id = "pack-01"
role = "packing"
[[stations]]
id = "recv-01"
role = "receiving"
{sources}
[control]
socket = "{{dir}}/control.sock"
"#,
        central.url()
    )
}

fn serial_source(id: &str, pty: &Pty, station: &str) -> String {
    format!(
        "[[sources.serial]]\nid = \"{id}\"\npath = \"{}\"\nbaud = 9600\ndecoder = \"barcode\"\nstation = \"{station}\"\n",
        pty.path.display()
    )
}

fn vectors() -> Vec<Value> {
    let text = include_str!("../../protocol/tests/vectors/barcode.jsonl");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("protocol/tests/vectors/barcode.jsonl: {e}"))
        })
        .collect()
}

#[test]
fn every_barcode_vector_written_to_a_pty_arrives_upstream_as_expected() -> Result<()> {
    let central = Broker::start()?;
    let sink = Collector::subscribe(central.port, "edge/#")?;
    let mut pty = Pty::open()?;
    let agent = Agent::start(&config(
        &central,
        &serial_source("scanner-pack-01", &pty, "pack-01"),
    ))?;
    agent.wait_source("scanner-pack-01", "open")?;

    let cases = vectors();
    ensure!(
        cases.len() == 29,
        "expected 29 vectors, found {}",
        cases.len()
    );
    for c in &cases {
        let input = c["input"].as_str().unwrap_or_default();
        pty.write(format!("{input}\r\n").as_bytes())?;
    }
    let mut events = sink.wait_events(cases.len(), DEADLINE)?;
    events.sort_by_key(|e| e["seq"].as_u64());
    let mut failures = Vec::new();
    for (c, e) in cases.iter().zip(&events) {
        let note = c["note"].as_str().unwrap_or_default();
        ensure!(
            e["raw"] == base64(c["input"].as_str().unwrap_or_default()),
            "events out of order at {note}: {e}"
        );
        for (k, want) in c["expect"].as_object().into_iter().flatten() {
            let got = if k == "kind" {
                &e["kind"]
            } else {
                &e["body"][k]
            };
            if got != want {
                failures.push(format!("{note}: {k} = {got}, expected {want}"));
            }
        }
    }
    ensure!(
        failures.is_empty(),
        "{} vectors failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

fn base64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

#[test]
fn a_serial_and_an_mqtt_scanner_feed_one_agent_with_complete_envelopes_in_order() -> Result<()> {
    let central = Broker::start()?;
    let site = Broker::start()?;
    let sink = Collector::subscribe(central.port, "edge/#")?;
    let device = Collector::subscribe(site.port, "unused/#")?;
    let mut pty = Pty::open()?;
    let sources = format!(
        "{}[[sources.mqtt]]\nid = \"scanner-recv-01\"\nurl = \"{}\"\ntopics = [\"site/recv-01/scan\"]\ndecoder = \"barcode\"\nstation = \"recv-01\"\n",
        serial_source("scanner-pack-01", &pty, "pack-01"),
        site.url()
    );
    let agent = Agent::start(&config(&central, &sources))?;
    agent.wait_source("scanner-pack-01", "open")?;
    agent.wait_source("scanner-recv-01", "open")?;

    let n = 200;
    for i in 0..n {
        pty.write(format!("LPN{i:06}\r\n").as_bytes())?;
        device.publish("site/recv-01/scan", format!("ITEM{i:06}"))?;
    }
    let events = sink.wait_events(2 * n, DEADLINE)?;
    let topics: Vec<String> = sink
        .all()
        .into_iter()
        .filter(|r| r.topic.contains("/events/"))
        .map(|r| r.topic)
        .collect();

    let mut ids = HashSet::new();
    let mut per_source: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for (e, topic) in events.iter().zip(&topics) {
        ensure!(e["schema"] == "edge.v1", "schema: {e}");
        ensure!(e["site"] == "dc-test-01", "site: {e}");
        let id = e["id"].as_str().unwrap_or_default();
        ensure!(
            id.len() == 36 && &id[14..15] == "7",
            "id is not a UUID v7: {id}"
        );
        ensure!(ids.insert(id.to_string()), "duplicate id {id}");
        let observed = e["observed_at"].as_str().unwrap_or_default();
        ensure!(
            observed.len() == 24 && observed.ends_with('Z') && &observed[19..20] == ".",
            "observed_at is not RFC 3339 UTC with ms: {observed}"
        );
        ensure!(
            e.get("replayed").is_none(),
            "replayed on a first delivery: {e}"
        );
        ensure!(
            topic
                == &format!(
                    "edge/dc-test-01/events/{}",
                    e["kind"].as_str().unwrap_or("?")
                ),
            "topic {topic} for {e}"
        );
        let source = e["source"].as_str().unwrap_or_default().to_string();
        let (station, role, kind) = match source.as_str() {
            "scanner-pack-01" => ("pack-01", "packing", "shipment.scan"),
            "scanner-recv-01" => ("recv-01", "receiving", "inventory.scan"),
            other => anyhow::bail!("unknown source {other}"),
        };
        ensure!(
            e["station"] == station && e["role"] == role && e["kind"] == kind,
            "{e}"
        );
        per_source.entry(source).or_default().push((
            e["seq"].as_u64().unwrap_or(0),
            e["body"]["code"].as_str().unwrap_or("").to_string(),
        ));
    }
    for (source, got) in &per_source {
        ensure!(got.len() == n, "{source}: {} events", got.len());
        for (i, w) in got.windows(2).enumerate() {
            ensure!(
                w[0].0 < w[1].0,
                "{source}: seq not increasing at {i}: {w:?}"
            );
            ensure!(w[0].1 < w[1].1, "{source}: order not kept at {i}: {w:?}");
        }
    }
    Ok(())
}

/// `upstream.batch`: a backlog goes out as JSON arrays of at most `batch` consecutive events of
/// one topic; flattened they are every reading once, in order, with their envelopes whole.
#[test]
fn with_upstream_batch_a_backlog_goes_out_in_arrays_of_at_most_that_many_in_order() -> Result<()> {
    let mut central = Broker::start()?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    central.stop();
    let mut pty = Pty::open()?;
    let text = config(&central, &serial_source("scanner-pack-01", &pty, "pack-01"))
        .replace("format = \"json\"\n", "format = \"json\"\nbatch = 20\n");
    let agent = Agent::start(&text)?;
    agent.wait_source("scanner-pack-01", "open")?;
    // 45 scans and, in the middle, a line that is no barcode: an exception, another topic.
    for i in 0..45 {
        if i == 30 {
            pty.write(b"\x01\x02garbage\r\n")?;
        }
        pty.write(format!("LPN{i:06}\r\n").as_bytes())?;
    }
    wait_for("46 events buffered", DEADLINE, || {
        (agent.status().ok()?["backlog"] == 46).then_some(())
    })?;
    central.restart()?;
    let messages = wait_for("every event upstream", Duration::from_secs(60), || {
        let all: Vec<_> = sink
            .all()
            .into_iter()
            .filter(|r| r.topic.contains("/events/"))
            .collect();
        let n: usize = all
            .iter()
            .map(|r| r.json().as_array().map_or(0, Vec::len))
            .sum();
        (n >= 46).then_some(all)
    })?;
    let mut codes = Vec::new();
    let mut seqs = Vec::new();
    for m in &messages {
        let Some(events) = m.json().as_array().cloned() else {
            anyhow::bail!(
                "not a JSON array on {}: {:?}",
                m.topic,
                String::from_utf8_lossy(&m.payload)
            );
        };
        ensure!(
            (1..=20).contains(&events.len()),
            "{} events in one message",
            events.len()
        );
        for e in &events {
            ensure!(
                m.topic
                    .ends_with(&format!("/events/{}", e["kind"].as_str().unwrap_or(""))),
                "an event of kind {} in a message on {}",
                e["kind"],
                m.topic
            );
            ensure!(e["schema"] == "edge.v1" && e["id"].is_string(), "{e}");
            seqs.push(e["seq"].as_u64().unwrap_or(0));
            if e["kind"] == "shipment.scan" {
                codes.push(e["body"]["code"].as_str().unwrap_or("").to_string());
            }
        }
    }
    let want: Vec<String> = (0..45).map(|i| format!("LPN{i:06}")).collect();
    ensure!(codes == want, "scans out of order or incomplete: {codes:?}");
    ensure!(
        seqs.windows(2).all(|w| w[0] < w[1]) && seqs.len() == 46,
        "events once each, in seq order: {seqs:?}"
    );
    ensure!(
        messages.len() >= 4,
        "46 events in batches of 20 around an exception: at least 4 messages, got {}",
        messages.len()
    );
    wait_for("the backlog to empty", DEADLINE, || {
        (agent.status().ok()?["backlog"] == 0).then_some(())
    })?;
    Ok(())
}

/// A backlog of several read chunks (1024 rows each) with `upstream.batch`: upstream reads the
/// file a chunk ahead and decodes on the blocking pool (`upstream::reader`). Every event goes
/// out once, in seq order, and a row damaged in the second chunk (nested a million arrays deep,
/// which would overflow a decoding thread's stack) is set aside and reported instead.
#[test]
fn with_upstream_batch_a_backlog_of_several_chunks_is_read_ahead_once_each_in_order() -> Result<()>
{
    use redb::ReadableTable;
    const EVENTS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");
    const N: u64 = 7000;
    const DAMAGED: u64 = 3000;
    let central = Broker::start()?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("buffer.redb");
    edge_tests::write_backlog(&path, N)?;
    {
        let db = redb::Database::create(&path)?;
        let txn = db.begin_write()?;
        {
            let mut ev = txn.open_table(EVENTS)?;
            let mut value = ev
                .get(DAMAGED)?
                .map(|v| v.value()[..8].to_vec())
                .unwrap_or_default();
            ensure!(value.len() == 8, "row {DAMAGED} is missing");
            value.extend_from_slice(b"\xa1\x64body");
            value.extend(std::iter::repeat_n(0x81, 1_000_000));
            value.push(0x00);
            ev.insert(DAMAGED, value.as_slice())?;
        }
        txn.commit()?;
    }
    let text = config(&central, "")
        .replace("{dir}/buffer.redb", &path.to_string_lossy())
        .replace("format = \"json\"\n", "format = \"json\"\nbatch = 100\n");
    let agent = Agent::start(&text)?;
    let events = wait_for("every event upstream", Duration::from_secs(120), || {
        let all: Vec<Value> = sink
            .events()
            .into_iter()
            .flat_map(|m| m.as_array().cloned().unwrap_or_default())
            .collect();
        let report = all.iter().any(|e| e["kind"] == "exception");
        (all.len() as u64 >= N && report).then_some(all)
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log()))?;
    let seqs: Vec<u64> = events
        .iter()
        .filter(|e| e["kind"] == "shipment.scan")
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    let want: Vec<u64> = (1..=N).filter(|s| *s != DAMAGED).collect();
    ensure!(
        seqs == want,
        "{} scans; the first out of place: {:?}",
        seqs.len(),
        seqs.iter().zip(&want).find(|(a, b)| a != b)
    );
    let report = events
        .iter()
        .find(|e| e["kind"] == "exception")
        .cloned()
        .unwrap_or_default();
    let detail = report["body"]["detail"].as_str().unwrap_or("");
    ensure!(
        detail.contains(&format!("row {DAMAGED}")) && detail.contains("32 levels"),
        "{report}"
    );
    wait_for("one row set aside and none pending", DEADLINE, || {
        let s = agent.status().ok()?;
        (s["storage"]["set_aside"] == 1 && s["backlog"] == 0).then_some(())
    })
    .map_err(|e| anyhow::anyhow!("{e}: {:?}", agent.status().ok()))?;
    Ok(())
}

/// Large frames in the backlog: 64 readings of 1 MiB each. Upstream reads the file in chunks of
/// at most 4 MiB (not 1024 rows: that would be all 64 MiB at once), so the agent drains them
/// in bounded memory, every one once and in order.
#[test]
fn a_backlog_of_1_mib_frames_drains_in_bounded_memory() -> Result<()> {
    const N: u64 = 64;
    let central = Broker::start()?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("buffer.redb");
    edge_tests::write_backlog_padded(&path, N, 1 << 20)?;
    let text = config(&central, "").replace("{dir}/buffer.redb", &path.to_string_lossy());
    let agent = Agent::start(&text)?;
    let pid = agent.pid().unwrap_or(0);
    let mut peak = 0;
    let events = wait_for("every event upstream", Duration::from_secs(120), || {
        peak = peak.max(rss_kib(pid).unwrap_or(0));
        let all = sink.events();
        (all.len() as u64 >= N).then_some(all)
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log()))?;
    edge_tests::check_padded_backlog(&events, N)?;
    wait_for("the backlog to empty", DEADLINE, || {
        peak = peak.max(rss_kib(pid).unwrap_or(0));
        (agent.status().ok()?["backlog"] == 0).then_some(())
    })?;
    eprintln!("peak RSS while draining 64 frames of 1 MiB: {peak} KiB");
    // Measured with chunks of at most 4 MiB: 42-49 MiB (release build), 65 MiB (debug, as the
    // suite runs it). Chunks of 2048 rows (the release build of 01f6bd5): 92-96 MiB.
    ensure!(
        peak < 80 * 1024,
        "peak RSS {peak} KiB while draining 64 frames of 1 MiB"
    );
    Ok(())
}

#[test]
fn a_batch_above_the_brokers_maximum_packet_size_is_halved_and_an_event_too_large_alone_set_aside(
) -> Result<()> {
    // mosquitto announces max_packet_size as its MQTT 5 Maximum Packet Size and drops a
    // client that sends a larger packet.
    let central = Broker::start_with("max_packet_size 1000\n")?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    let mut pty = Pty::open()?;
    let text = config(&central, &serial_source("scanner-pack-01", &pty, "pack-01"))
        .replace("format = \"json\"\n", "format = \"json\"\nbatch = 50\n");
    let agent = Agent::start(&text)?;
    agent.wait_source("scanner-pack-01", "open")?;
    wait_for("upstream connected", DEADLINE, || {
        (agent.status().ok()?["upstream"]["connected"] == true).then_some(())
    })?;
    // 40 scans and, in the middle, a line of 1,500 bytes: an exception whose raw bytes alone
    // are larger than the broker takes.
    let mut burst = Vec::new();
    for i in 0..40 {
        if i == 20 {
            burst.extend_from_slice(&[b'x'; 1500]);
            burst.extend_from_slice(b"\r\n");
        }
        burst.extend_from_slice(format!("LPN{i:06}\r\n").as_bytes());
    }
    pty.write(&burst)?;
    let status = wait_for("the backlog to empty", Duration::from_secs(60), || {
        let s = agent.status().ok()?;
        (s["backlog"] == 0 && s["storage"]["stored"] == 41).then_some(s)
    })?;
    ensure!(status["upstream"]["rejected"] == 1, "{status}");
    ensure!(status["storage"]["set_aside"] == 1, "{status}");
    let codes: Vec<String> = wait_for("40 scans upstream", DEADLINE, || {
        let mut codes = Vec::new();
        for m in sink.all() {
            for e in m.json().as_array().cloned().unwrap_or_default() {
                if e["kind"] == "shipment.scan" {
                    codes.push(e["body"]["code"].as_str().unwrap_or("").to_string());
                }
            }
        }
        (codes.len() >= 40).then_some(codes)
    })?;
    let want: Vec<String> = (0..40).map(|i| format!("LPN{i:06}")).collect();
    ensure!(
        codes == want,
        "scans out of order, twice or missing: {codes:?}"
    );
    for m in sink.all() {
        ensure!(
            m.payload.len() < 1000,
            "a message of {} bytes on {}",
            m.payload.len(),
            m.topic
        );
    }
    let log = agent.log();
    ensure!(
        log.contains("more than upstream broker")
            && log.contains("its Maximum Packet Size, 1000 bytes"),
        "the set-aside event is logged with the limit:\n{log}"
    );
    ensure!(
        log.matches("connected to upstream broker").count() == 1,
        "upstream reconnected (a packet too large was sent?):\n{log}"
    );
    Ok(())
}

#[test]
fn upstream_down_at_start_then_everything_stored_is_delivered() -> Result<()> {
    let mut central = Broker::start()?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    central.stop();
    let mut pty = Pty::open()?;
    let agent = Agent::start(&config(
        &central,
        &serial_source("scanner-pack-01", &pty, "pack-01"),
    ))?;
    agent.wait_source("scanner-pack-01", "open")?;
    for i in 0..50 {
        pty.write(format!("LPN{i:06}\r\n").as_bytes())?;
    }
    let status = wait_for("50 events buffered", DEADLINE, || {
        let s = agent.status().ok()?;
        (s["backlog"] == 50).then_some(s)
    })?;
    ensure!(status["upstream"]["connected"] == false, "{status}");
    ensure!(
        status["upstream"]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("connection refused"),
        "status names the cause: {status}"
    );

    central.restart()?;
    let events = sink.wait_events(50, Duration::from_secs(60))?;
    let codes: Vec<&str> = events
        .iter()
        .map(|e| e["body"]["code"].as_str().unwrap_or(""))
        .collect();
    let want: Vec<String> = (0..50).map(|i| format!("LPN{i:06}")).collect();
    ensure!(
        codes == want,
        "delivered out of order or incomplete: {codes:?}"
    );
    wait_for("the backlog to empty", DEADLINE, || {
        (agent.status().ok()?["backlog"] == 0).then_some(())
    })?;
    // The test broker's max_inflight_messages 20 is its MQTT 5 Receive Maximum: upstream
    // (max_inflight 100 by default) keeps below it.
    ensure!(
        agent.log().contains("takes at most 20 unacknowledged messages (its Receive Maximum), fewer than upstream.max_inflight 100: 18 events at a time"),
        "the broker's Receive Maximum is not taken into account:\n{}",
        agent.log()
    );
    Ok(())
}

#[test]
fn garbage_input_becomes_exceptions_and_the_next_line_still_decodes() -> Result<()> {
    let central = Broker::start()?;
    let sink = Collector::subscribe(central.port, "edge/#")?;
    let mut pty = Pty::open()?;
    let agent = Agent::start(&config(
        &central,
        &serial_source("scanner-pack-01", &pty, "pack-01"),
    ))?;
    agent.wait_source("scanner-pack-01", "open")?;

    pty.write(b"\x00\x01\x02\xfe\xff\x1b[2J\r\n")?; // binary junk
    pty.write(&vec![b'A'; 100 * 1024])?; // 100 kB without a newline
    pty.write(b"\r\n")?;
    pty.write(b"caf\xc3\x28\r\n")?; // invalid UTF-8
    pty.write(b"]C100106141412345678908\r\n")?; // a good line
    let events = sink.wait_events(4, DEADLINE)?;
    let mut events = events;
    events.sort_by_key(|e| e["seq"].as_u64());
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or(""))
        .collect();
    ensure!(
        kinds == ["exception", "exception", "exception", "shipment.scan"],
        "kinds {kinds:?}: {events:?}"
    );
    ensure!(
        events[0]["body"]["reason"] == "undecodable",
        "{}",
        events[0]
    );
    ensure!(
        events[1]["body"]["reason"] == "undecodable",
        "{}",
        events[1]
    );
    ensure!(
        events[1]["body"]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("exceeds max_frame 4096 bytes"),
        "{}",
        events[1]
    );
    ensure!(
        events[1]["raw"].as_str().unwrap_or("").len() <= 4096 * 4 / 3 + 4,
        "raw is capped"
    );
    ensure!(
        events[2]["body"]["reason"] == "undecodable",
        "{}",
        events[2]
    );
    ensure!(
        events[3]["body"]["sscc"] == "106141412345678908",
        "{}",
        events[3]
    );
    let rss = rss_kib(agent.pid().unwrap_or(0)).unwrap_or(u64::MAX);
    ensure!(rss < 64 * 1024, "RSS {rss} KiB after garbage");
    Ok(())
}

#[test]
fn sigterm_stops_the_agent_cleanly_and_the_buffer_reopens() -> Result<()> {
    let central = Broker::start()?;
    let mut pty = Pty::open()?;
    let mut agent = Agent::start(&config(
        &central,
        &serial_source("scanner-pack-01", &pty, "pack-01"),
    ))?;
    agent.wait_source("scanner-pack-01", "open")?;
    pty.write(b"LPN1\r\n")?;
    wait_for("one event stored", DEADLINE, || {
        (agent.status().ok()?["storage"]["stored"] == 1).then_some(())
    })?;
    let status = agent.signal(nix::sys::signal::Signal::SIGTERM)?;
    ensure!(status.code() == Some(0), "exit {status:?}\n{}", agent.log());
    ensure!(
        !agent.socket.exists(),
        "the control socket is removed on a clean stop"
    );
    let storage = agent.storage.display().to_string();
    let (code, out, err) = run_cli(&["inspect", "--storage", &storage], &[])?;
    ensure!(code == 0, "inspect: {err}");
    ensure!(out.contains("stored:       1 events"), "{out}");
    Ok(())
}

#[test]
fn check_config_lists_every_problem_and_run_exits_64_on_a_bad_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[site]\nid = \"Bad Site\"\n[upstream]\nurl = \"http://x\"\n[[sources.serial]]\nid = \"s1\"\npath = \"/dev/ttyUSB0\"\nbaud = 12345\ndecoder = \"barcode\"\nstation = \"nowhere\"\n",
    )?;
    let bad = bad.display().to_string();
    let (code, _, err) = run_cli(&["check-config", "--config", &bad], &[])?;
    ensure!(code == 2, "check-config exit {code}: {err}");
    for want in [
        "site.id: \"Bad Site\"",
        "upstream.url: \"http://x\"",
        "sources.serial[0].baud: 12345 is not a standard rate",
        "sources.serial[0].station: \"nowhere\" is not a station",
    ] {
        ensure!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    let (code, _, err) = run_cli(&["run", "--config", &bad], &[])?;
    ensure!(code == 64, "run exit {code}: {err}");

    // Environment variables override the file key by key.
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[site]\nid = \"dc-1\"\n[upstream]\nurl = \"mqtt://127.0.0.1:1883\"\n",
    )?;
    let good = good.display().to_string();
    let (code, _, _) = run_cli(&["check-config", "--config", &good], &[])?;
    ensure!(code == 0, "good file");
    let (code, _, err) = run_cli(
        &["check-config", "--config", &good],
        &[("EDGE_AGENT__UPSTREAM__MAX_INFLIGHT", "0")],
    )?;
    ensure!(
        code == 2 && err.contains("upstream.max_inflight: 0"),
        "env override: {err}"
    );
    Ok(())
}

#[test]
fn a_missing_serial_port_is_retried_and_shown_in_status_with_its_cause() -> Result<()> {
    let central = Broker::start()?;
    let src = "[[sources.serial]]\nid = \"scanner-gone\"\npath = \"/dev/ttyEDGEAGENTNOPE0\"\nbaud = 9600\ndecoder = \"barcode\"\n";
    let agent = Agent::start(&config(&central, src))?;
    let s = agent.wait_source("scanner-gone", "retrying")?;
    let detail = s["sources"]["scanner-gone"]["detail"]
        .as_str()
        .unwrap_or("")
        .to_string();
    ensure!(
        detail.contains("/dev/ttyEDGEAGENTNOPE0") && detail.contains("not found"),
        "{detail}"
    );
    let (code, out, err) = run_cli(
        &["status", "--socket", &agent.socket.display().to_string()],
        &[],
    )?;
    ensure!(code == 0, "{err}");
    ensure!(
        out.contains("scanner-gone") && out.contains("retrying"),
        "{out}"
    );
    Ok(())
}

#[test]
fn an_unplugged_pty_is_reopened_when_it_comes_back() -> Result<()> {
    let central = Broker::start()?;
    let sink = Collector::subscribe(central.port, "edge/#")?;
    let pty = Pty::open()?;
    // A stable name for the port, as /dev/serial/by-id gives: a symlink we re-point.
    let dir = tempfile::tempdir()?;
    let link = dir.path().join("scanner");
    std::os::unix::fs::symlink(&pty.path, &link)?;
    let src = format!(
        "[[sources.serial]]\nid = \"scanner-usb\"\npath = \"{}\"\nbaud = 9600\ndecoder = \"barcode\"\n",
        link.display()
    );
    let agent = Agent::start(&config(&central, &src))?;
    agent.wait_source("scanner-usb", "open")?;
    pty.unplug();
    agent.wait_source("scanner-usb", "retrying")?;
    let mut pty2 = Pty::open()?;
    std::fs::remove_file(&link)?;
    std::os::unix::fs::symlink(&pty2.path, &link)?;
    agent.wait_source("scanner-usb", "open")?;
    pty2.write(b"LPN-AFTER-REPLUG\r\n")?;
    let events = sink.wait_events(1, DEADLINE)?;
    ensure!(
        events[0]["body"]["code"] == "LPN-AFTER-REPLUG",
        "{}",
        events[0]
    );
    Ok(())
}

#[test]
fn mqtt_readings_published_while_the_agent_is_down_arrive_after_restart() -> Result<()> {
    let central = Broker::start()?;
    let site = Broker::start()?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    let device = Collector::subscribe(site.port, "unused/#")?;
    let src = format!(
        "[[sources.mqtt]]\nid = \"scanner-mqtt\"\nurl = \"{}\"\ntopics = [\"site/+/scan\"]\ndecoder = \"barcode\"\nstation = \"pack-01\"\n",
        site.url()
    );
    let mut agent = Agent::start(&config(&central, &src))?;
    agent.wait_source("scanner-mqtt", "open")?;
    device.publish("site/a/scan", "BEFORE-1")?;
    sink.wait_events(1, DEADLINE)?;

    let status = agent.signal(nix::sys::signal::Signal::SIGTERM)?;
    ensure!(status.code() == Some(0), "exit {status:?}");
    for i in 0..20 {
        device.publish("site/a/scan", format!("WHILE-DOWN-{i:02}"))?;
    }
    agent.restart()?;
    let events = sink.wait_events(21, DEADLINE)?;
    let codes: Vec<&str> = events
        .iter()
        .map(|e| e["body"]["code"].as_str().unwrap_or(""))
        .collect();
    let mut want = vec!["BEFORE-1".to_string()];
    want.extend((0..20).map(|i| format!("WHILE-DOWN-{i:02}")));
    ensure!(codes == want, "{codes:?}");
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["seq"].as_u64().unwrap_or(0))
        .collect();
    ensure!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq continues across restarts: {seqs:?}"
    );
    Ok(())
}

#[test]
fn replay_sends_delivered_events_again_with_their_ids_from_the_socket_and_from_mqtt() -> Result<()>
{
    let central = Broker::start()?;
    let sink = Collector::subscribe(central.port, "edge/#")?;
    let mut pty = Pty::open()?;
    let agent = Agent::start(&config(
        &central,
        &serial_source("scanner-pack-01", &pty, "pack-01"),
    ))?;
    agent.wait_source("scanner-pack-01", "open")?;
    for i in 0..30 {
        pty.write(format!("LPN{i:06}\r\n").as_bytes())?;
    }
    let first = sink.wait_events(30, DEADLINE)?;
    wait_for("the backlog to empty", DEADLINE, || {
        (agent.status().ok()?["backlog"] == 0).then_some(())
    })?;
    let since = first[10]["observed_at"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let until = first[19]["observed_at"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let in_window = first
        .iter()
        .filter(|e| {
            let t = e["observed_at"].as_str().unwrap_or_default();
            t >= since.as_str() && t <= until.as_str()
        })
        .count();

    let socket = agent.socket.display().to_string();
    let (code, out, err) = run_cli(
        &[
            "replay", "--socket", &socket, "--since", &since, "--until", &until,
        ],
        &[],
    )?;
    ensure!(code == 0, "replay: {err}");
    ensure!(
        out.contains(&format!("replaying {in_window} delivered events")),
        "{out}"
    );
    let all = sink.wait_events(30 + in_window, DEADLINE)?;
    let replayed: Vec<&Value> = all.iter().filter(|e| e["replayed"] == true).collect();
    ensure!(
        replayed.len() == in_window,
        "{} replayed, expected {in_window}",
        replayed.len()
    );
    for r in &replayed {
        let orig = first.iter().find(|e| e["id"] == r["id"]);
        ensure!(orig.is_some(), "a replayed event has a new id: {r}");
        if let Some(o) = orig {
            ensure!(
                o["seq"] == r["seq"]
                    && o["observed_at"] == r["observed_at"]
                    && o["body"] == r["body"],
                "{o} vs {r}"
            );
        }
    }

    // The same through MQTT, from central.
    sink.publish(
        "edge/dc-test-01/cmd/replay",
        format!("{{\"since\":\"{since}\",\"until\":\"{until}\"}}"),
    )?;
    let all = sink
        .wait_events(30 + 2 * in_window, DEADLINE)
        .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log()))?;
    ensure!(
        all.iter().filter(|e| e["replayed"] == true).count() == 2 * in_window,
        "MQTT replay"
    );

    let (code, _, err) = run_cli(
        &["replay", "--socket", &socket, "--since", "yesterday"],
        &[],
    )?;
    ensure!(
        code != 0 && err.contains("not an RFC 3339 time"),
        "bad time: {err}"
    );
    Ok(())
}

#[test]
fn a_site_broker_that_goes_down_is_retried_and_readings_flow_again_when_it_returns() -> Result<()> {
    let central = Broker::start()?;
    let mut site = Broker::start()?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    let src = format!(
        "[[sources.mqtt]]\nid = \"scanner-mqtt\"\nurl = \"{}\"\ntopics = [\"site/+/scan\"]\ndecoder = \"barcode\"\nstation = \"pack-01\"\n",
        site.url()
    );
    let agent = Agent::start(&config(&central, &src))?;
    agent.wait_source("scanner-mqtt", "open")?;
    site.stop();
    let st = agent.wait_source("scanner-mqtt", "retrying")?;
    let detail = st["sources"]["scanner-mqtt"]["detail"]
        .as_str()
        .unwrap_or("")
        .to_string();
    ensure!(
        detail.contains(&site.url()),
        "the status names the broker: {detail}"
    );
    site.restart()?;
    agent.wait_source("scanner-mqtt", "open")?;
    let device = Collector::subscribe(site.port, "unused/#")?;
    device.publish("site/a/scan", "AFTER-BROKER-RETURNED")?;
    let events = sink.wait_events(1, DEADLINE)?;
    ensure!(
        events[0]["body"]["code"] == "AFTER-BROKER-RETURNED",
        "{}",
        events[0]
    );
    Ok(())
}

/// The README's first command: the demo runs the real pipeline (a serial scanner on a pty, an
/// MQTT scanner on the embedded broker's MQTT 5 listener) and central receives events from
/// both stations.
#[test]
fn the_demo_delivers_events_from_its_serial_and_its_mqtt_scanner() -> Result<()> {
    let (code, out, err) = edge_tests::run_cli(&["demo", "--for", "10s"], &[])?;
    ensure!(code == 0, "demo exited {code}:\n{out}{err}");
    let summary = out
        .lines()
        .chain(err.lines())
        .find(|l| l.contains("central received"))
        .ok_or_else(|| anyhow::anyhow!("no summary line:\n{out}{err}"))?;
    let count = |kind: &str| -> u64 {
        summary
            .split(&format!("{kind} "))
            .nth(1)
            .and_then(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    // pack-01 (packing) is the serial scanner, recv-01 (receiving) the MQTT one.
    ensure!(
        count("shipment.scan") > 0 && count("inventory.scan") > 0,
        "events from both scanners expected: {summary}"
    );
    Ok(())
}

/// The site broker keeps a session's subscriptions for days: a topic taken out of the
/// configuration must stop producing events, and a retained message must become one reading,
/// not one per reconnection.
#[test]
fn a_topic_taken_out_of_the_config_stops_and_a_retained_message_is_stored_once() -> Result<()> {
    let central = Broker::start()?;
    let site = Broker::start()?;
    let device = Collector::subscribe(site.port, "unused/#")?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    let source = |topic: &str| {
        format!(
            "[[sources.mqtt]]\nid = \"scanner-mqtt\"\nurl = \"{}\"\ntopics = [\"{topic}\"]\ndecoder = \"barcode\"\nstation = \"pack-01\"\n",
            site.url()
        )
    };
    let mut agent = Agent::start(&config(&central, &source("site/old")))?;
    agent.wait_source("scanner-mqtt", "open")?;
    // A retained message on the topic the next configuration reads.
    device.client_publish_retained("site/new", "LPN-RETAINED")?;

    let stopped = agent.signal(nix::sys::signal::Signal::SIGTERM)?;
    ensure!(stopped.success(), "{stopped:?}");
    let dir = agent.dir.path().display().to_string();
    std::fs::write(
        &agent.config,
        config(&central, &source("site/new")).replace("{dir}", &dir),
    )?;
    for _ in 0..2 {
        agent.restart()?;
        agent.wait_source("scanner-mqtt", "open")?;
        device.publish("site/old", "LPN-OLD-TOPIC")?;
        device.publish("site/new", format!("LPN-NEW-{}", agent.pid().unwrap_or(0)))?;
        let stopped = agent.signal(nix::sys::signal::Signal::SIGTERM)?;
        ensure!(stopped.success(), "{stopped:?}");
    }
    agent.restart()?;
    let events = sink.wait_events(3, DEADLINE)?;
    // Wait for the broker to have nothing more for us, then look at everything.
    device.publish("site/new", "LPN-LAST")?;
    let events = wait_for("the last reading", DEADLINE, || {
        let e = sink.events();
        e.iter()
            .any(|e| e["body"]["code"] == "LPN-LAST")
            .then_some(e)
    })
    .map_err(|e| anyhow::anyhow!("{e}: {events:?}\n{}", agent.log()))?;
    let codes: Vec<&str> = events
        .iter()
        .filter_map(|e| e["body"]["code"].as_str())
        .collect();
    ensure!(
        !codes.contains(&"LPN-OLD-TOPIC"),
        "a message on the removed topic became an event: {codes:?}"
    );
    ensure!(
        codes.iter().filter(|c| **c == "LPN-RETAINED").count() == 1,
        "the retained message must be stored once: {codes:?}\n{}",
        site.log()
    );
    ensure!(
        codes.iter().filter(|c| c.starts_with("LPN-NEW-")).count() == 2,
        "{codes:?}"
    );
    // The old subscription was dropped at the first start with the new topics, so the
    // broker never sent the messages on site/old at all.
    let log = agent.log();
    ensure!(
        log.matches("unsubscribing from site/old").count() == 1,
        "{log}"
    );
    ensure!(!log.contains("ignoring messages on"), "{log}");
    Ok(())
}

/// A service user outside the dialout group: the port is there but may not be opened. The
/// operator is told exactly that, and what to do.
#[test]
fn a_port_the_service_user_may_not_open_says_to_add_it_to_dialout() -> Result<()> {
    let central = Broker::start()?;
    let pty = Pty::open()?;
    // Only root may open it, as a tty of group dialout with mode 0660 is to anyone else.
    std::fs::set_permissions(
        &pty.path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let src = format!(
        "[[sources.serial]]\nid = \"scanner-locked\"\npath = \"{}\"\nbaud = 9600\ndecoder = \"barcode\"\n",
        pty.path.display()
    );
    const NOBODY: u32 = 65534;
    let agent = Agent::start_as(&config(&central, &src), NOBODY)?;
    let s = agent.wait_source("scanner-locked", "retrying")?;
    let detail = s["sources"]["scanner-locked"]["detail"]
        .as_str()
        .unwrap_or("")
        .to_string();
    ensure!(
        detail
            == format!(
                "serial port {} (source scanner-locked): permission denied; add the service user to group dialout",
                pty.path.display()
            ),
        "{detail}"
    );
    Ok(())
}

#[test]
fn a_flood_of_replay_requests_from_central_does_not_wedge_delivery() -> Result<()> {
    let central = Broker::start()?;
    let sink = Collector::subscribe(central.port, "edge/#")?;
    let mut pty = Pty::open()?;
    let agent = Agent::start(&config(
        &central,
        &serial_source("scanner-pack-01", &pty, "pack-01"),
    ))?;
    agent.wait_source("scanner-pack-01", "open")?;
    pty.write(b"LPN-BEFORE\r\n")?;
    sink.wait_events(1, DEADLINE)?;
    // Far more requests than the queues between upstream and the control plane hold (64 and
    // 16): each replays a window with nothing in it, so only the queues are exercised.
    for _ in 0..400 {
        sink.publish(
            "edge/dc-test-01/cmd/replay",
            "{\"since\":\"2001-01-01T00:00:00Z\",\"until\":\"2001-01-01T00:00:01Z\"}",
        )?;
    }
    // Every request was taken: started, or refused for now with a reason.
    wait_for("the agent to take all 400 requests", DEADLINE, || {
        let log = agent.log();
        let taken = log.matches("replaying delivered events observed").count()
            + log
                .matches("replay requests arrive faster than they start")
                .count();
        (taken == 400).then_some(())
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log()))?;
    pty.write(b"LPN-AFTER\r\n")?;
    wait_for("the reading after the flood", DEADLINE, || {
        sink.events()
            .iter()
            .any(|e| e["body"]["code"] == "LPN-AFTER")
            .then_some(())
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log()))?;
    let s = agent.status()?;
    ensure!(s["upstream"]["connected"] == true, "{s}");
    Ok(())
}
