//! The published contract against the real agent: every barcode vector through a pty, out
//! through mosquitto as CloudEvents (parsed by the CloudEvents reference SDK for Python) and as
//! CBOR; every event is checked against docs/schema/edge.v1.schema.json (the Collector does
//! that for each message, and this file checks `data` once more after the SDK read it).

use anyhow::{anyhow, ensure, Result};
use edge_protocol::Envelope;
use edge_tests::{
    check_event_message, read_with_cloudevents_sdk, Agent, Broker, Collector, Pty, DEADLINE,
};
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

#[test]
fn the_cloudevents_sdk_reads_every_event_and_its_data_is_a_valid_edge_v1_event() -> Result<()> {
    let (received, sent) = run("cloudevents")?;
    let messages: Vec<Vec<u8>> = received.iter().map(|r| r.payload.clone()).collect();
    let read = read_with_cloudevents_sdk(&messages)?;
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
        read_with_cloudevents_sdk(&[not_an_event]).is_err(),
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
