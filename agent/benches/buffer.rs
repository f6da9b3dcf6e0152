//! Group-commit throughput of the buffer: readings committed to redb per second, with 1, 4 and
//! 16 concurrent producers, on a real file with immediate durability. Prints a table.
//!
//! cargo bench -p edge-agent --bench buffer

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_agent::buffer::{spawn_writer, Capacity, Reading, Store};
use edge_agent::status::StatusBoard;
use edge_protocol::event::{Body, ShipmentScan};
use tokio_util::sync::CancellationToken;

const READINGS: u64 = 200_000;

fn reading(i: u64) -> Reading {
    let code = format!("]C100106141412345{:06}", i % 1_000_000);
    Reading {
        source: "scanner-pack-01".into(),
        station: Some("pack-01".into()),
        role: Some(edge_protocol::Role::Packing),
        observed_ms: 1_795_773_600_000 + i,
        body: Body::ShipmentScan(ShipmentScan {
            code: code[3..].to_string(),
            symbology: "gs1-128".into(),
            sscc: Some(code[5..].to_string()),
            gs1: Default::default(),
        }),
        raw: code.into_bytes(),
        receipt: None,
    }
}

async fn run(producers: u64, confirmed: bool) -> anyhow::Result<(f64, u64)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("buffer.redb");
    let store = Store::open(&path)?;
    let (writer, done) = spawn_writer(
        store.clone(),
        "dc-bench".into(),
        Duration::from_secs(3600),
        Capacity::unlimited(),
        Arc::new(StatusBoard::default()),
        CancellationToken::new(),
    )?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let w = writer.clone();
        tasks.push(tokio::spawn(async move {
            let per = READINGS / producers;
            for i in 0..per {
                let r = reading(p * per + i);
                if confirmed {
                    // As an MQTT source does: queue, and ack once committed (not awaited here,
                    // the broker's in-flight window would bound it).
                    let _ = w.append_confirmed(r).await;
                } else {
                    let _ = w.append(r).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    drop(writer);
    done.await?;
    let secs = start.elapsed().as_secs_f64();
    let stats = store.stats()?;
    anyhow::ensure!(stats.stored == READINGS, "stored {}", stats.stored);
    Ok((READINGS as f64 / secs, stats.file_bytes / READINGS))
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "buffer group commit: {READINGS} readings into a fresh redb file, Durability::Immediate"
    );
    println!(
        "{:<28} {:>14} {:>16}",
        "producers", "readings/s", "bytes/reading"
    );
    for producers in [1, 4, 16] {
        for confirmed in [false, true] {
            let (rate, per) = rt.block_on(run(producers, confirmed))?;
            let label = format!(
                "{producers} {}",
                if confirmed {
                    "(with commit confirmations)"
                } else {
                    ""
                }
            );
            println!("{label:<28} {rate:>14.0} {per:>16}");
        }
    }
    Ok(())
}
