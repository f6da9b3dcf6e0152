//! A site broker that speaks only MQTT 3.1.1 (rumqttd's v4 listener, in this process: it
//! closes the connection on an MQTT 5 CONNECT, as many legacy and embedded brokers do), the
//! built binary, a real central mosquitto.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{anyhow, ensure, Result};
use edge_tests::{serve_in_process, wait_for, Agent, Broker, Collector, DEADLINE};
use serde_json::Value;

/// Starts rumqttd with a single MQTT 3.1.1 listener on a free port of 127.0.0.1, on its own
/// threads for the rest of the test process; returns the port once it listens on it. rumqttd
/// gives up a listener whose port is taken (another program bound it after `free_port` looked)
/// and its `start` returns: then it starts again on another port.
fn start_v311_broker() -> Result<u16> {
    serve_in_process(|port| {
        let listener = rumqttd::ServerSettings {
            name: "site-v4".into(),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            tls: None,
            next_connection_delay_ms: 1,
            connections: rumqttd::ConnectionSettings {
                connection_timeout_ms: 10_000,
                max_payload_size: 1 << 20,
                max_inflight_count: 100,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let config = rumqttd::Config {
            router: rumqttd::RouterConfig {
                max_connections: 64,
                max_outgoing_packet_count: 200,
                max_segment_size: 1 << 20,
                max_segment_count: 10,
                ..rumqttd::RouterConfig::default()
            },
            v4: Some(HashMap::from([("1".to_string(), listener)])),
            ..rumqttd::Config::default()
        };
        let mut broker = rumqttd::Broker::new(config);
        std::thread::spawn(move || {
            if let Err(e) = broker.start() {
                eprintln!("rumqttd: {e}");
            }
        })
    })
}

fn config(central: &Broker, site_port: u16) -> String {
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
id = "recv-01"
role = "receiving"
[[sources.mqtt]]
id = "scanner-recv-01"
url = "mqtt://127.0.0.1:{site_port}"
topics = ["site/recv-01/scan"]
decoder = "barcode"
station = "recv-01"
[control]
socket = "{{dir}}/control.sock"
"#,
        central.url()
    )
}

/// The codes of the events central received, in arrival order.
fn codes(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["body"]["code"].as_str().unwrap_or("").to_string())
        .collect()
}

fn detail(status: &Value) -> String {
    status["sources"]["scanner-recv-01"]["detail"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn a_broker_that_speaks_only_mqtt_3_1_1_is_read_with_a_persistent_session() -> Result<()> {
    let site_port = start_v311_broker()?;
    let central = Broker::start()?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    let device = Collector::subscribe(site_port, "unused/#")?;
    // A device's last value, retained: it comes with the first subscription only.
    device.client_publish_retained("site/recv-01/scan", "LPNRETAINED")?;

    let mut agent = Agent::start(&config(&central, site_port))?;
    let status = agent.wait_source("scanner-recv-01", "open")?;
    ensure!(
        detail(&status).contains("MQTT 3.1.1: the broker refused MQTT 5"),
        "status detail: {status}"
    );
    for i in 0..5 {
        device.publish("site/recv-01/scan", format!("LPN{i:06}"))?;
    }
    let events = sink.wait_events(6, DEADLINE)?;
    let got = codes(&events);
    ensure!(
        got[0] == "LPNRETAINED",
        "the retained message first: {got:?}"
    );
    ensure!(
        got[1..]
            == [
                "LPN000000",
                "LPN000001",
                "LPN000002",
                "LPN000003",
                "LPN000004"
            ],
        "{got:?}"
    );
    wait_for("the backlog to empty", DEADLINE, || {
        (agent.status().ok()?["backlog"] == 0).then_some(())
    })?;

    // Stopped: what devices publish meanwhile waits in the broker's session.
    let exit = agent.signal(nix::sys::signal::Signal::SIGTERM)?;
    ensure!(exit.success(), "agent exit: {exit:?}\n{}", agent.log());
    for i in 5..10 {
        device.publish("site/recv-01/scan", format!("LPN{i:06}"))?;
    }
    agent.restart()?;
    let status = agent.wait_source("scanner-recv-01", "open")?;
    ensure!(
        detail(&status).contains("MQTT 3.1.1"),
        "after a restart MQTT 5 is tried again and refused again: {status}"
    );
    let events = sink
        .wait_events(11, DEADLINE)
        .map_err(|e| anyhow!("{e}\nagent log:\n{}", agent.log()))?;
    let got = codes(&events);
    let want: Vec<String> = (0..10).map(|i| format!("LPN{i:06}")).collect();
    for code in &want {
        ensure!(
            got.contains(code),
            "{code} published while the agent was away is lost: {got:?}"
        );
    }
    // The resumed session has its subscription: no SUBSCRIBE, which in 3.1.1 would bring the
    // retained message again (from mosquitto or aedes; rumqttd sends retained messages to new
    // subscriptions only, so the log tells).
    wait_for("the resumed session without a SUBSCRIBE", DEADLINE, || {
        agent
            .log()
            .contains("resumed the session at site broker")
            .then_some(())
    })
    .map_err(|e| anyhow!("{e}\nagent log:\n{}", agent.log()))?;
    ensure!(
        agent.log().matches("subscribed at site broker").count() == 1,
        "one SUBSCRIBE, by the first session:\n{}",
        agent.log()
    );
    device.publish("site/recv-01/scan", "LPN000010")?;
    let events = sink.wait_events(12, DEADLINE)?;
    let got = codes(&events);
    let retained = got.iter().filter(|c| *c == "LPNRETAINED").count();
    ensure!(
        retained == 1,
        "the resumed session was subscribed again (the retained message came {retained} times): {got:?}"
    );
    ensure!(
        got.len() == 12,
        "duplicates after a clean stop: {got:?}\n{}",
        agent.log()
    );
    Ok(())
}
