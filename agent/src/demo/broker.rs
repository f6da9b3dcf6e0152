//! The embedded MQTT broker: site broker and central in one, on a free port of 127.0.0.1.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use anyhow::Context;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// The embedded broker's two listeners: MQTT 3.1.1 for the upstream side and the simulated MQTT
/// device, MQTT 5 for the agent's MQTT source (which speaks only MQTT 5). They share one router,
/// so a message published on one reaches subscribers on the other.
pub struct Ports {
    pub v4: u16,
    pub v5: u16,
}

/// A free port on 127.0.0.1: rumqttd cannot report the port it bound, so ask the OS first.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .context("cannot find a free port on 127.0.0.1 for the embedded broker")?
        .port())
}

fn listener(name: &str, port: u16) -> ServerSettings {
    ServerSettings {
        name: name.into(),
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
    }
}

/// Starts the broker on its own threads and returns its ports. It runs until the process
/// exits; readiness is seen by the first client that connects.
pub fn start() -> anyhow::Result<Ports> {
    let ports = Ports {
        v4: free_port()?,
        v5: free_port()?,
    };
    let config = Config {
        router: RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 500,
            max_segment_size: 1 << 20,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([(
            "1".to_string(),
            listener("demo-v4", ports.v4),
        )])),
        v5: Some(HashMap::from([(
            "2".to_string(),
            listener("demo-v5", ports.v5),
        )])),
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
    Ok(ports)
}
