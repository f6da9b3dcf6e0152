//! Simulated devices: a serial barcode scanner on a pseudo-terminal and a scanner that
//! publishes to the site broker. Both cycle through realistic codes, good and bad.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio::io::AsyncWriteExt;
use tokio_serial::{SerialPort, SerialStream};
use tokio_util::sync::CancellationToken;

/// The topic the MQTT scanner publishes to (the agent's source subscribes to it).
pub const SCAN_TOPIC: &str = "site/recv-01/scan";

/// What the packing scanner sends, one frame each, in turn.
const SERIAL_FRAMES: &[&[u8]] = &[
    b"]C100106141412345678908\r\n", // GS1-128 SSCC
    b"]C100106141412345678907\r\n", // same SSCC, wrong check digit
    b"NOREAD\r\n",                  // the scanner's no-read text
    b"LPN0004711\r\n",              // a licence plate, not GS1
    b"(00)106141412345678908\r\n",  // bracketed human-readable form
    b"\x1b\xff\xfe\x00garbage\r\n", // line noise
];

/// What the receiving scanner publishes, one message each, in turn.
const MQTT_CODES: &[&str] = &[
    "]C10195012345678903310200123410LOT42", // GTIN, net weight, batch
    "]E02112345678900",                     // EAN-13
    "]C1019501234567890317240200",          // GTIN with an expiry date (DD=00)
    "(01)12345678901231(10)12345",          // bracketed GTIN and batch
    "RCV-PALLET-77",                        // not GS1
];

/// A pseudo-terminal pair: the master end for the simulator and the slave's path for the agent.
pub fn scanner_pty() -> anyhow::Result<(SerialStream, PathBuf)> {
    let (master, slave) = SerialStream::pair()
        .context("cannot create a pseudo-terminal for the simulated scanner")?;
    let path = slave
        .name()
        .context("the pseudo-terminal's slave end has no path")?;
    // The slave end is opened exclusively; close it so that the agent can open the path.
    drop(slave);
    Ok((master, PathBuf::from(path)))
}

/// Writes a frame to the pty every `every` until `stop`.
pub async fn serial_scanner(mut port: SerialStream, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    for frame in SERIAL_FRAMES.iter().cycle() {
        tokio::select! {
            // Cancel-safe: an interval tick that is dropped is simply not taken.
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = port.write_all(frame).await {
            tracing::error!("simulated serial scanner: cannot write to the pty: {e}");
            return;
        }
    }
}

/// Publishes a code (QoS 1) to the site broker every `every` until `stop`.
pub async fn mqtt_scanner(port: u16, every: Duration, stop: CancellationToken) {
    let mut options = MqttOptions::new("demo-scanner-recv-01", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(options, 16);
    let loop_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                // Dropped only when the demo stops; nothing is lost that matters then.
                r = events.poll() => if let Err(e) = r {
                    tracing::debug!("simulated MQTT scanner: {e}; reconnecting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                },
                _ = loop_stop.cancelled() => return,
            }
        }
    });
    let mut tick = tokio::time::interval(every);
    for code in MQTT_CODES.iter().cycle() {
        tokio::select! {
            // Cancel-safe: an interval tick that is dropped is simply not taken.
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = client
            .publish(SCAN_TOPIC, QoS::AtLeastOnce, false, code.as_bytes())
            .await
        {
            tracing::error!("simulated MQTT scanner: {e}");
            return;
        }
    }
}
