//! The embedded MQTT broker: site broker and central in one, on a free port of 127.0.0.1.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use anyhow::Context;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Starts the broker on its own threads and returns its port. It runs until the process
/// exits; readiness is seen by the first client that connects.
pub fn start() -> anyhow::Result<u16> {
    // rumqttd cannot report the port it bound, so ask the OS for a free one first.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .context("cannot find a free port on 127.0.0.1 for the embedded broker")?
        .port();
    let server = ServerSettings {
        name: "demo-v4".into(),
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: 1 << 20,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        router: RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 500,
            max_segment_size: 1 << 20,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Config::default()
    };
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            // Returns only when every listener failed (e.g. the port was taken meanwhile).
            if let Err(e) = broker.start() {
                tracing::error!("embedded broker: {e}");
            }
        })
        .context("cannot start the embedded broker's thread")?;
    Ok(port)
}
