//! Scales and sorters end to end: device emulators on real ptys and a real site broker, the
//! built binary, a real central broker.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use edge_tests::{wait_for, Agent, Broker, Collector, Pty, DEADLINE};
use serde_json::Value;

fn config(central: &Broker, sources: &str) -> String {
    format!(
        r#"
[site]
id = "dc-dev-01"
[storage]
path = "{{dir}}/buffer.redb"
[upstream]
url = "{}"
format = "json"
[[stations]]
id = "weigh-01"
role = "weighing"
[[stations]]
id = "sort-01"
role = "sorting"
{sources}
[control]
socket = "{{dir}}/control.sock"
"#,
        central.url()
    )
}

fn serial(id: &str, pty: &Pty, decoder: &str, extra: &str) -> String {
    format!(
        "[[sources.serial]]\nid = \"{id}\"\npath = \"{}\"\nbaud = 9600\ndecoder = \"{decoder}\"\nstation = \"weigh-01\"\n{extra}\n",
        pty.path.display()
    )
}

/// A Toledo continuous-output frame: kg, gross, 2 decimals, the checksum byte appended.
fn toledo(centi_kg: u32, motion: bool) -> Vec<u8> {
    let mut f = vec![0x02, b',', if motion { b'8' } else { b'0' }, b' '];
    f.extend_from_slice(format!("{centi_kg:06}000000\r").as_bytes());
    f.push(edge_protocol::scale::toledo::checksum(&f));
    f
}

/// Waits until central has everything the agent stored and returns the events.
fn settled_events(agent: &Agent, sink: &Collector, at_least: usize) -> Result<Vec<Value>> {
    sink.wait_events(at_least, DEADLINE)?;
    wait_for("the backlog to empty", DEADLINE, || {
        (agent.status().ok()?["backlog"] == 0).then_some(())
    })?;
    let mut events = sink.events();
    events.sort_by_key(|e| e["seq"].as_u64());
    Ok(events)
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

#[test]
fn a_scan_then_a_toledo_weighing_gives_one_weight_event_with_that_sscc() -> Result<()> {
    let central = Broker::start()?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    let mut scanner = Pty::open()?;
    let mut scale = Pty::open()?;
    let sources = format!(
        "{}{}",
        serial("scanner", &scanner, "barcode", ""),
        serial(
            "scale",
            &scale,
            "scale.toledo",
            "settle = \"300ms\"\nchecksum = \"always\""
        )
    );
    let agent = Agent::start(&config(&central, &sources))?;
    agent.wait_source("scanner", "open")?;
    agent.wait_source("scale", "open")?;

    scanner.write(b"]C100106141412345678908\r\n")?;
    sink.wait_events(1, DEADLINE)?;
    // 20 frames a second: empty, the parcel swinging on, a stable second, removed.
    let timeline: Vec<(u32, bool, usize)> = vec![
        (0, false, 10),
        (530, true, 5),
        (1180, true, 5),
        (1234, false, 20),
        (0, true, 3),
        (0, false, 10),
    ];
    for (w, motion, frames) in timeline {
        for _ in 0..frames {
            scale.write(&toledo(w, motion))?;
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let events = settled_events(&agent, &sink, 2)?;
    let weights = of_kind(&events, "shipment.weight");
    ensure!(
        weights.len() == 1,
        "one weight per item, got {}: {weights:?}",
        weights.len()
    );
    let b = &weights[0]["body"];
    ensure!(
        b["weight_kg"] == "12.34"
            && b["mode"] == "gross"
            && b["tare_kg"] == "0"
            && b["unit"] == "kg",
        "{b}"
    );
    ensure!(
        b["sscc"] == "106141412345678908",
        "the weight carries the scanned SSCC: {b}"
    );
    ensure!(
        weights[0]["station"] == "weigh-01" && weights[0]["role"] == "weighing",
        "{}",
        weights[0]
    );
    Ok(())
}

#[test]
fn an_mt_sics_balance_is_polled_and_yields_one_weight_per_item() -> Result<()> {
    let central = Broker::start()?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    let balance = Pty::open()?;
    let reader = balance.reader()?;
    let sources = serial(
        "balance",
        &balance,
        "scale.mt_sics",
        "poll_interval = \"50ms\"\nsettle = \"200ms\"",
    );
    let agent = Agent::start(&config(&central, &sources))?;
    agent.wait_source("balance", "open")?;

    // The balance follows a weight timeline and answers each SI with the weight of the moment.
    let start = Instant::now();
    let answers = std::thread::spawn(move || -> Result<usize> {
        let mut polls = 0;
        let mut lines = BufReader::new(reader);
        let mut line = String::new();
        let mut out = balance;
        while start.elapsed() < Duration::from_millis(3000) {
            line.clear();
            if lines.read_line(&mut line)? == 0 {
                break;
            }
            if line.trim() != "SI" {
                continue;
            }
            polls += 1;
            let t = start.elapsed().as_millis();
            let reply = match t {
                0..=500 => "S S       0.000 kg\r\n",
                501..=900 => "S D       1.730 kg\r\n",
                901..=2000 => "S S       2.500 kg\r\n",
                _ => "S S       0.000 kg\r\n",
            };
            out.write(reply.as_bytes())?;
        }
        Ok(polls)
    });
    let events = settled_events(&agent, &sink, 1)?;
    let polls = answers
        .join()
        .map_err(|_| anyhow::anyhow!("balance emulator panicked"))??;
    ensure!(polls >= 10, "the agent polled {polls} times");
    let weights = of_kind(&events, "shipment.weight");
    ensure!(weights.len() == 1, "{weights:?}");
    ensure!(weights[0]["body"]["weight_kg"] == "2.5", "{}", weights[0]);
    Ok(())
}

#[test]
fn an_ascii_indicator_overload_is_one_exception_per_episode() -> Result<()> {
    let central = Broker::start()?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    let mut ind = Pty::open()?;
    let agent = Agent::start(&config(
        &central,
        &serial("indicator", &ind, "scale.ascii", "settle = \"200ms\""),
    ))?;
    agent.wait_source("indicator", "open")?;
    for _ in 0..10 {
        ind.write(b"OL,GS,+    .  kg\r\n")?;
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..10 {
        ind.write(b"ST,GS,+0000.00kg\r\n")?;
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..10 {
        ind.write(b"ST,NT,+0010.00kg\r\n")?;
        std::thread::sleep(Duration::from_millis(50));
    }
    let events = settled_events(&agent, &sink, 2)?;
    let over: Vec<_> = events
        .iter()
        .filter(|e| e["body"]["reason"] == "overload")
        .collect();
    ensure!(
        over.len() == 1,
        "one overload exception for ten frames: {over:?}"
    );
    let weights = of_kind(&events, "shipment.weight");
    ensure!(
        weights.len() == 1 && weights[0]["body"]["mode"] == "net",
        "{weights:?}"
    );
    Ok(())
}

const SORTER_RULES: &str = r#"
[[sources.mqtt.rules]]
when = { "/type" = "CONF" }
kind = "shipment.sort"
fields = { code = "/barcode", destination = "/chute", result = "/status" }
values = { result = { OK = "diverted", RC = "recirculated", NR = "no_read" } }
[[sources.mqtt.rules]]
when = { "/type" = "STATE" }
kind = "equipment.state"
fields = { state = "/state", code = "/code", message = "/text" }
values = { state = { RUN = "running", STOP = "stopped", JAM = "fault" } }
"#;

#[test]
fn a_sorter_over_mqtt_json_is_mapped_by_rules() -> Result<()> {
    let central = Broker::start()?;
    let site = Broker::start()?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    let plc = Collector::subscribe(site.port, "unused/#")?;
    let sources = format!(
        "[[sources.mqtt]]\nid = \"sorter-plc\"\nurl = \"{}\"\ntopics = [\"site/sorter/+/telegram\"]\ndecoder = \"json\"\nstation = \"sort-01\"\n{SORTER_RULES}",
        site.url()
    );
    let agent = Agent::start(&config(&central, &sources))?;
    agent.wait_source("sorter-plc", "open")?;
    let t = "site/sorter/s1/telegram";
    plc.publish(
        t,
        r#"{"type":"CONF","barcode":"106141412345678908","chute":"CH017","status":"OK"}"#,
    )?;
    plc.publish(
        t,
        r#"{"type":"CONF","barcode":"LPN0004711","chute":"CH000","status":"RC"}"#,
    )?;
    plc.publish(
        t,
        r#"{"type":"CONF","barcode":null,"chute":"CH099","status":"NR"}"#,
    )?;
    plc.publish(
        t,
        r#"{"type":"STATE","state":"JAM","code":"PE12","text":"photo eye 12 blocked"}"#,
    )?;
    plc.publish(t, r#"{"type":"HELLO"}"#)?;
    plc.publish(t, r#"{"type":"CONF", broken"#)?;
    let events = settled_events(&agent, &sink, 6)?;
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or(""))
        .collect();
    ensure!(
        kinds
            == [
                "shipment.sort",
                "shipment.sort",
                "shipment.sort",
                "equipment.state",
                "exception",
                "exception"
            ],
        "{kinds:?}"
    );
    let b: Vec<&Value> = events.iter().map(|e| &e["body"]).collect();
    ensure!(
        b[0]["result"] == "diverted"
            && b[0]["sscc"] == "106141412345678908"
            && b[0]["destination"] == "CH017",
        "{}",
        b[0]
    );
    ensure!(
        b[1]["result"] == "recirculated" && b[1]["sscc"].is_null(),
        "{}",
        b[1]
    );
    ensure!(b[2]["result"] == "no_read", "{}", b[2]);
    ensure!(
        b[3]["state"] == "fault" && b[3]["code"] == "PE12",
        "{}",
        b[3]
    );
    ensure!(
        b[4]["reason"] == "undecodable" && b[5]["reason"] == "undecodable",
        "{} {}",
        b[4],
        b[5]
    );
    ensure!(
        events[5]["raw"].as_str().is_some_and(|r| !r.is_empty()),
        "the malformed message's raw bytes travel"
    );
    Ok(())
}

#[test]
fn a_sorter_over_serial_stx_etx_lrc_is_mapped_by_rules() -> Result<()> {
    let central = Broker::start()?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    let mut plc = Pty::open()?;
    let rules = r#"framing = "stx_etx_lrc"
separator = "|"
[[sources.serial.rules]]
when = { "0" = "CONF" }
kind = "shipment.sort"
fields = { code = "2", destination = "3", result = "4" }
values = { result = { OK = "diverted", RC = "recirculated", NR = "no_read" } }
[[sources.serial.rules]]
when = { "0" = "FAULT" }
kind = "equipment.state"
fields = { state = "0", code = "2", message = "3" }
values = { state = { FAULT = "fault" } }"#;
    let src = serial("sorter-serial", &plc, "delimited", rules)
        .replace("station = \"weigh-01\"", "station = \"sort-01\"");
    let agent = Agent::start(&config(&central, &src))?;
    agent.wait_source("sorter-serial", "open")?;
    // From protocol/tests/vectors/framing.jsonl: a divert confirmation, a jam, a damaged telegram.
    plc.write(b"garbage\x02CONF|0042|106141412345678908|CH017|OK\x036")?;
    plc.write(b"\x02FAULT|0044|JAM|PE12\x03e")?;
    plc.write(b"\x02SCAN|0042|T01|106141412345678908\x03>")?;
    let events = settled_events(&agent, &sink, 3)?;
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or(""))
        .collect();
    ensure!(
        kinds == ["shipment.sort", "equipment.state", "exception"],
        "{kinds:?}: {events:?}"
    );
    ensure!(
        events[0]["body"]["result"] == "diverted"
            && events[0]["body"]["sscc"] == "106141412345678908",
        "{}",
        events[0]
    );
    ensure!(
        events[1]["body"]["state"] == "fault" && events[1]["body"]["code"] == "JAM",
        "{}",
        events[1]
    );
    ensure!(
        events[2]["body"]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("LRC"),
        "{}",
        events[2]
    );
    Ok(())
}
