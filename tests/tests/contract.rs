//! The published contract against the real agent: every barcode vector through a pty, out
//! through mosquitto as CloudEvents (parsed by the CloudEvents reference SDK for Python) and as
//! CBOR; every event is checked against docs/schema/edge.v1.schema.json (the Collector does
//! that for each message, and this file checks `data` once more after the SDK read it).

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, ensure, Context, Result};
use edge_protocol::Envelope;
use edge_tests::{check_event_message, Agent, Broker, Collector, Pty, DEADLINE};
use serde_json::{json, Value};

const SITE: &str = "dc-contract-01";
const SOURCE: &str = "scanner-pack-01";

fn config(central: &Broker, pty: &Pty, format: &str) -> String {
    format!(
        r#"
[site]
id = "{SITE}"
[storage]
path = "{{dir}}/buffer.redb"
[upstream]
url = "{}"
format = "{format}"
[[stations]]
id = "pack-01"
role = "packing"
[[sources.serial]]
id = "{SOURCE}"
path = "{}"
baud = 9600
decoder = "barcode"
station = "pack-01"
[control]
socket = "{{dir}}/control.sock"
"#,
        central.url(),
        pty.path.display()
    )
}

/// The inputs of protocol/tests/vectors/barcode.jsonl: shipment and inventory scans with and
/// without SSCC or GTIN, and invalid codes (exceptions).
fn inputs() -> Vec<String> {
    include_str!("../../protocol/tests/vectors/barcode.jsonl")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["input"].as_str().map(str::to_owned))
        .collect()
}

/// Runs the agent with `format`, writes every vector, and returns what central received on the
/// events topics (checked against the schema by the Collector).
fn run(format: &str) -> Result<(Vec<edge_tests::Received>, usize)> {
    let central = Broker::start()?;
    let sink = Collector::subscribe(central.port, &format!("edge/{SITE}/events/#"))?;
    let mut pty = Pty::open()?;
    let agent = Agent::start(&config(&central, &pty, format))?;
    agent.wait_source(SOURCE, "open")?;
    let inputs = inputs();
    ensure!(inputs.len() >= 20, "only {} barcode vectors", inputs.len());
    for input in &inputs {
        pty.write(format!("{input}\r\n").as_bytes())?;
    }
    sink.wait_events(inputs.len(), DEADLINE)?;
    let received = sink
        .all()
        .into_iter()
        .filter(|r| r.topic.contains("/events/"))
        .collect();
    Ok((received, inputs.len()))
}

/// The Python interpreter that has the `cloudevents` package: `$EDGE_TESTS_PYTHON` (tests/run
/// makes a virtual environment and sets it), else `python3`.
fn python() -> String {
    std::env::var("EDGE_TESTS_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Reads one structured-mode JSON CloudEvent per input line with the SDK's own JSON format
/// (cloudevents 2.x, `cloudevents.core`) and prints what it read as JSON.
const READ_WITH_SDK: &str = r#"
import json, sys
from cloudevents.core.formats.json import JSONFormat
fmt = JSONFormat()
for line in sys.stdin:
    if not line.strip():
        continue
    ev = fmt.read(None, line.encode("utf-8"))
    t = ev.get_time()
    print(json.dumps({
        "specversion": ev.get_specversion(),
        "id": ev.get_id(),
        "source": ev.get_source(),
        "type": ev.get_type(),
        "time": None if t is None else t.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "subject": ev.get_subject(),
        "datacontenttype": ev.get_datacontenttype(),
        "data": ev.get_data(),
        "extensions": sorted(k for k in ev.get_attributes() if k not in (
            "specversion", "id", "source", "type", "time", "subject", "datacontenttype")),
    }))
"#;

/// What the CloudEvents SDK read from each message, in order.
fn read_with_sdk(messages: &[Vec<u8>]) -> Result<Vec<Value>> {
    let python = python();
    let mut child = Command::new(&python)
        .args(["-c", READ_WITH_SDK])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {python}; run tests/run, which installs the CloudEvents SDK (or set EDGE_TESTS_PYTHON)"))?;
    {
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("no stdin for {python}"))?;
        for m in messages {
            stdin.write_all(m)?;
            stdin.write_all(b"\n")?;
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the CloudEvents SDK ({python}) refused a message or is not installed ({}): {}\n\
             run tests/run, which installs it into target/py-cloudevents (pip install cloudevents)",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("SDK output {l:?}")))
        .collect()
}

#[test]
fn the_cloudevents_sdk_reads_every_event_and_its_data_is_a_valid_edge_v1_event() -> Result<()> {
    let (received, sent) = run("cloudevents")?;
    let messages: Vec<Vec<u8>> = received.iter().map(|r| r.payload.clone()).collect();
    let read = read_with_sdk(&messages)?;
    ensure!(
        read.len() == messages.len() && read.len() >= sent,
        "the SDK read {} of {} messages ({sent} readings)",
        read.len(),
        messages.len()
    );
    let mut subjects = (0, 0, 0);
    for ((ev, r), m) in read.iter().zip(&received).zip(&messages) {
        let doc: Value = serde_json::from_slice(m)?;
        let data = &ev["data"];
        check_event_message(data).map_err(|e| anyhow!("data of {doc}: {e}"))?;
        let env = Envelope::from_json(data.to_string().as_bytes())
            .map_err(|e| anyhow!("data is not an edge.v1 event ({e}): {doc}"))?;
        ensure!(
            doc["data"] == *data,
            "the SDK's data differs from the message's: {ev} vs {doc}"
        );
        let kind = env.kind().to_string();
        ensure!(
            r.topic == format!("edge/{SITE}/events/{kind}"),
            "topic {} for {kind}",
            r.topic
        );
        let subject = data["body"]["sscc"]
            .as_str()
            .or_else(|| data["body"]["gtin"].as_str());
        match (subject, data["body"]["sscc"].is_string()) {
            (Some(_), true) => subjects.0 += 1,
            (Some(_), false) => subjects.1 += 1,
            (None, _) => subjects.2 += 1,
        }
        let want = json!({
            "specversion": "1.0",
            "id": env.id,
            "source": format!("/sites/{SITE}/sources/{SOURCE}"),
            "type": format!("edge.{kind}.v1"),
            "time": env.observed_at,
            "subject": subject,
            "datacontenttype": "application/json",
            "data": data,
            "extensions": [],
        });
        ensure!(*ev == want, "the SDK read\n{ev}\nexpected\n{want}");
        ensure!(
            doc.get("subject").is_some() == subject.is_some(),
            "subject is absent exactly when there is no SSCC or GTIN: {doc}"
        );
    }
    ensure!(
        subjects.0 > 0 && subjects.1 > 0 && subjects.2 > 0,
        "the vectors cover a subject from an SSCC, from a GTIN, and none: {subjects:?}"
    );
    Ok(())
}

#[test]
fn the_sdk_check_fails_on_a_message_that_is_not_a_cloudevent() -> Result<()> {
    let not_an_event = br#"{"specversion":"1.0","id":"x","type":"edge.exception.v1"}"#.to_vec();
    ensure!(
        read_with_sdk(&[not_an_event]).is_err(),
        "a CloudEvent without source was accepted by the SDK"
    );
    Ok(())
}

#[test]
fn events_sent_as_cbor_are_valid_edge_v1_events_once_decoded() -> Result<()> {
    let (received, sent) = run("cbor")?;
    ensure!(received.len() >= sent, "{} of {sent}", received.len());
    for r in &received {
        let env = Envelope::from_cbor(&r.payload).map_err(|e| anyhow!("{}: {e}", r.topic))?;
        let json: Value = serde_json::from_slice(&env.to_json())?;
        // The Collector checked the CBOR document itself; the same event as JSON must match
        // what the schema says of format = "json".
        check_event_message(&json).map_err(|e| anyhow!("{json}: {e}"))?;
        ensure!(
            r.json() == json,
            "CBOR and JSON carry the same fields and values"
        );
    }
    Ok(())
}
