//! Outages: kill -9 mid-ingest, the uplink going away, and the agent restarting with a backlog.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Result};
use edge_tests::{fill, wait_for, Agent, Broker, Collector, SmallDisk, DEADLINE};

fn config(central: &Broker, site: &Broker) -> String {
    format!(
        r#"
[site]
id = "dc-test-02"
[storage]
path = "{{dir}}/buffer.redb"
[upstream]
url = "{}"
format = "json"
max_inflight = 10
[[stations]]
id = "pack-01"
role = "packing"
[[sources.mqtt]]
id = "scanner-mqtt"
url = "{}"
topics = ["site/scan"]
decoder = "barcode"
station = "pack-01"
receive_maximum = 10
[control]
socket = "{{dir}}/control.sock"
"#,
        central.url(),
        site.url()
    )
}

fn codes(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["body"]["code"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The acceptance scenario of the outages issue: 3,000 readings from an MQTT device while the
/// uplink is down, `kill -9` three times during ingest, the uplink returns, drops for a while
/// mid-drain, and the agent is killed once more mid-drain. Every reading arrives, first arrivals
/// in the order taken. Each code is scanned twice in a row (two readings, two ids), so equal
/// readings meet every crash. A message the site broker sends again after a crash is
/// recognised by its receipt and not stored again: no reading is stored twice (with a new
/// id), at the default receive window. What is sent twice is only what a drop or crash
/// mid-drain resends upstream (at most `max_inflight`, here 10, with the same id).
#[test]
fn every_reading_survives_kill_9_during_ingest_and_drain_and_an_uplink_drop() -> Result<()> {
    const N: usize = 3000;
    const KILLS: usize = 4;
    // max_inflight in this test's config: each upstream disruption resends about one window.
    const WINDOW: usize = 10;
    let mut central = Broker::start()?;
    let site = Broker::start()?;
    let device = Collector::subscribe(site.port, "unused/#")?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    central.stop();
    // The default receive window: crashes must not make it store anything twice.
    let text = config(&central, &site).replace("receive_maximum = 10\n", "");
    let mut agent = Agent::start(&text)?;
    agent.wait_source("scanner-mqtt", "open")?;

    let publisher = std::thread::spawn(move || -> Result<Collector> {
        for i in 0..N {
            device.publish("site/scan", format!("LPN{:06}", i / 2))?;
        }
        Ok(device)
    });
    for floor in [400u64, 1200, 2000] {
        wait_for(&format!("{floor} readings stored"), DEADLINE, || {
            (agent.status().ok()?["storage"]["stored"].as_u64()? >= floor).then_some(())
        })
        .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log()))?;
        let status = agent.signal(nix::sys::signal::Signal::SIGKILL)?;
        ensure!(status.code().is_none(), "killed by a signal: {status:?}");
        agent.restart()?;
    }
    let _device = publisher
        .join()
        .map_err(|_| anyhow::anyhow!("publisher panicked"))??;
    wait_for("every reading stored", Duration::from_secs(60), || {
        (agent.status().ok()?["storage"]["stored"].as_u64()? >= N as u64).then_some(())
    })?;

    // The uplink returns, drains a while, drops, returns.
    central.restart()?;
    sink.wait_events(N / 10, DEADLINE)?;
    central.stop();
    wait_for("upstream to notice the drop", DEADLINE, || {
        (agent.status().ok()?["upstream"]["connected"] == false).then_some(())
    })?;
    central.restart()?;
    sink.wait_events(N / 3, DEADLINE)?;
    let status = agent.signal(nix::sys::signal::Signal::SIGKILL)?;
    ensure!(status.code().is_none(), "killed mid-drain: {status:?}");
    // An operator can look into the buffer of the killed agent.
    let storage = agent.storage.display().to_string();
    let (code, out, err) = edge_tests::run_cli(&["inspect", "--storage", &storage], &[])?;
    ensure!(
        code == 0 && out.contains("pending:"),
        "inspect after kill -9: {err}{out}"
    );
    agent.restart()?;

    let ids_of = |e: &[serde_json::Value]| -> BTreeSet<String> {
        e.iter()
            .filter_map(|e| e["id"].as_str().map(str::to_string))
            .collect()
    };
    let events = wait_for("every reading upstream", Duration::from_secs(120), || {
        let e = sink.events();
        (ids_of(&e).len() >= N).then_some(e)
    })
    .map_err(|e| anyhow::anyhow!("{e}; got {} events\n{}", sink.events().len(), agent.log()))?;
    let got = codes(&events);
    let distinct: BTreeSet<&String> = got.iter().collect();
    ensure!(
        distinct.len() == N / 2,
        "{} distinct codes of {}",
        distinct.len(),
        N / 2
    );
    // Each code twice: two readings with two ids, whatever crashed around them.
    let mut ids_by_code: std::collections::BTreeMap<&str, BTreeSet<&str>> = Default::default();
    for e in &events {
        ids_by_code
            .entry(e["body"]["code"].as_str().unwrap_or(""))
            .or_default()
            .insert(e["id"].as_str().unwrap_or(""));
    }
    let not_two: Vec<(&str, usize)> = ids_by_code
        .iter()
        .filter(|(_, ids)| ids.len() != 2)
        .map(|(c, ids)| (*c, ids.len()))
        .collect();
    ensure!(
        not_two.is_empty(),
        "codes not stored exactly twice (code, ids): {not_two:?}"
    );
    // First arrivals in the order taken (by id: each reading is one id).
    let mut seen = BTreeSet::new();
    let firsts: Vec<u64> = events
        .iter()
        .filter(|e| seen.insert(e["id"].as_str().unwrap_or("").to_string()))
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    ensure!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "first arrivals out of order"
    );
    let dup = got.len() - N;
    let _ = &distinct;
    if std::env::var_os("SHOW_DUPS").is_some() {
        let mut count = std::collections::BTreeMap::new();
        for e in &events {
            *count.entry(e["seq"].as_u64().unwrap_or(0)).or_insert(0) += 1;
        }
        let dups: Vec<u64> = count
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(s, _)| *s)
            .collect();
        println!("duplicated seqs: {dups:?}");
        let mut ids_by_code: std::collections::BTreeMap<&str, BTreeSet<&str>> = Default::default();
        for e in &events {
            ids_by_code
                .entry(e["body"]["code"].as_str().unwrap_or(""))
                .or_default()
                .insert(e["id"].as_str().unwrap_or(""));
        }
        let reingested: Vec<&str> = ids_by_code
            .iter()
            .filter(|(_, v)| v.len() > 1)
            .map(|(c, _)| *c)
            .collect();
        println!("re-ingested codes: {reingested:?}");
    }
    let ids: BTreeSet<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    println!(
        "{N} readings, {KILLS} kills, uplink dropped once: {} events upstream, {dup} duplicates ({:.2}%): {} re-ingested (new id), {} redelivered (same id)",
        got.len(),
        dup as f64 * 100.0 / N as f64,
        ids.len() - N,
        got.len() - ids.len()
    );
    let redelivered = got.len() - ids.len();
    let reingested = ids.len() - N;
    println!("stored twice (a reading re-ingested with a new id): {reingested}");
    let recognised: u64 = agent
        .log()
        .lines()
        .filter_map(|l| l.split("the site broker sent ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse::<u64>().ok())
        .sum();
    println!("redeliveries from the site broker recognised and not stored again: {recognised}");
    // Upstream resends only what may have been in flight, per disruption (the drop, the crash
    // mid-drain): at most max_inflight unacknowledged, plus at most as many PUBACKs received
    // whose removal from the backlog was not yet committed.
    ensure!(
        redelivered <= 2 * 2 * WINDOW,
        "{redelivered} redelivered with the same id"
    );
    // A crash makes the site broker redeliver what was stored beyond what it confirmed reading
    // the PUBACKs of; the receipts recognise all of it.
    ensure!(
        reingested == 0,
        "{reingested} readings stored twice (new ids) after 3 crashes during ingest"
    );
    let log = agent.log();
    ensure!(
        !log.contains("in sequence"),
        "mosquitto gives out packet ids in sequence, yet the agent said otherwise:\n{log}"
    );
    Ok(())
}

#[test]
fn the_uplink_dropping_mid_drain_loses_nothing_and_repeats_the_same_ids() -> Result<()> {
    let mut central = Broker::start()?;
    let site = Broker::start()?;
    let device = Collector::subscribe(site.port, "unused/#")?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    central.stop();
    let agent = Agent::start(&config(&central, &site))?;
    agent.wait_source("scanner-mqtt", "open")?;
    let n = 6000; // more than any internal queue holds
    for i in 0..n {
        device.publish("site/scan", format!("LPN{i:06}"))?;
    }
    wait_for("the backlog to build", DEADLINE, || {
        (agent.status().ok()?["backlog"].as_u64()? >= n as u64).then_some(())
    })?;
    central.restart()?;
    sink.wait_events(1, DEADLINE)?;
    central.stop();
    wait_for("upstream to notice", DEADLINE, || {
        (agent.status().ok()?["upstream"]["connected"] == false).then_some(())
    })?;
    central.restart()?;
    wait_for("the backlog to drain", Duration::from_secs(60), || {
        (agent.status().ok()?["backlog"] == 0).then_some(())
    })?;
    let all = sink.wait_events(n, DEADLINE)?;
    let mut by_code = std::collections::BTreeMap::new();
    for e in &all {
        let code = e["body"]["code"].as_str().unwrap_or("").to_string();
        let id = e["id"].as_str().unwrap_or("").to_string();
        let prev = by_code.insert(code.clone(), id.clone());
        ensure!(
            prev.is_none() || prev == Some(id),
            "a redelivery of {code} changed its id"
        );
    }
    ensure!(by_code.len() == n, "{} of {n} delivered", by_code.len());
    Ok(())
}

fn with_capacity(text: String, on_full: &str) -> String {
    text.replace(
        "path = \"{dir}/buffer.redb\"\n",
        &format!("path = \"{{dir}}/buffer.redb\"\nmax_bytes = \"1MiB\"\non_full = \"{on_full}\"\n"),
    )
}

#[test]
fn a_full_buffer_drops_the_oldest_and_reports_every_drop_to_central() -> Result<()> {
    const N: usize = 20_000;
    let mut central = Broker::start()?;
    let site = Broker::start()?;
    let device = Collector::subscribe(site.port, "unused/#")?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    central.stop();
    let agent = Agent::start(&with_capacity(config(&central, &site), "drop_oldest"))?;
    agent.wait_source("scanner-mqtt", "open")?;
    for i in 0..N {
        device.publish("site/scan", format!("LPN{i:06}"))?;
    }
    let st = wait_for(
        "every reading stored or dropped",
        Duration::from_secs(120),
        || {
            let s = agent.status().ok()?;
            (s["backlog"].as_u64()? + s["dropped"].as_u64()? >= N as u64).then_some(s)
        },
    )?;
    let file = st["storage"]["file_bytes"].as_u64().unwrap_or(u64::MAX);
    ensure!(
        file <= 1024 * 1024 * 3 / 2,
        "buffer file {file} bytes, cap 1 MiB"
    );
    ensure!(st["dropped"].as_u64().unwrap_or(0) > 0, "{st}");

    central.restart()?;
    let reported = |events: &[serde_json::Value]| -> u64 {
        events
            .iter()
            .filter(|e| e["body"]["reason"] == "dropped")
            .map(|e| e["body"]["count"].as_u64().unwrap_or(0))
            .sum()
    };
    let events = wait_for(
        "the drops reported and the rest delivered",
        Duration::from_secs(120),
        || {
            let e = sink.events();
            let scans = e.iter().filter(|e| e["kind"] == "shipment.scan").count() as u64;
            (scans > 0 && scans + reported(&e) >= N as u64).then_some(e)
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log()))?;
    let delivered: BTreeSet<String> = events
        .iter()
        .filter(|e| e["kind"] == "shipment.scan")
        .map(|e| e["body"]["code"].as_str().unwrap_or("").to_string())
        .collect();
    let dropped = reported(&events);
    println!(
        "scan events {}, distinct {}, reported dropped {dropped} in {} reports, status {}",
        events
            .iter()
            .filter(|e| e["kind"] == "shipment.scan")
            .count(),
        delivered.len(),
        events
            .iter()
            .filter(|e| e["body"]["reason"] == "dropped")
            .count(),
        agent.status()?["dropped"]
    );
    ensure!(
        delivered.len() as u64 + dropped == N as u64,
        "{} delivered + {dropped} reported dropped != {N}\n{}",
        delivered.len(),
        agent.log()
    );
    // The newest survive: what was delivered is the tail of what was read.
    let first = format!("LPN{:06}", N - delivered.len());
    ensure!(
        delivered.iter().next() == Some(&first),
        "oldest delivered {:?}, expected {first}",
        delivered.iter().next()
    );
    let st = agent.status()?;
    ensure!(
        st["dropped"].as_u64() == Some(dropped),
        "status dropped {} vs reported {dropped}",
        st["dropped"]
    );
    let rss = edge_tests::rss_kib(agent.pid().unwrap_or(0)).unwrap_or(u64::MAX);
    ensure!(
        rss < 64 * 1024,
        "agent RSS {rss} KiB after 20,000 readings into a full buffer"
    );
    let reports = events
        .iter()
        .filter(|e| e["body"]["reason"] == "dropped")
        .count();
    ensure!(
        reports <= 3,
        "{reports} drop reports: one per episode, not one per event"
    );
    Ok(())
}

#[test]
fn under_reject_new_mqtt_readings_wait_in_the_site_broker_and_none_is_lost() -> Result<()> {
    const N: usize = 5_000;
    let mut central = Broker::start()?;
    let site = Broker::start()?;
    let device = Collector::subscribe(site.port, "unused/#")?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    central.stop();
    let agent = Agent::start(&with_capacity(config(&central, &site), "reject_new"))?;
    agent.wait_source("scanner-mqtt", "open")?;
    for i in 0..N {
        device.publish("site/scan", format!("LPN{i:06}"))?;
    }
    let st = agent.wait_source("scanner-mqtt", "retrying")?;
    let detail = st["sources"]["scanner-mqtt"]["detail"]
        .as_str()
        .unwrap_or("")
        .to_string();
    ensure!(
        detail.contains("buffer full") && detail.contains("reject_new"),
        "{detail}"
    );
    let backlog = st["backlog"].as_u64().unwrap_or(0);
    ensure!(backlog > 0 && backlog < N as u64, "backlog {backlog}");

    central.restart()?;
    let events = sink.wait_events(N, Duration::from_secs(120))?;
    let codes: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["body"]["code"].as_str())
        .collect();
    ensure!(codes.len() == N, "{} distinct of {N}", codes.len());
    ensure!(
        agent.status()?["dropped"] == 0,
        "nothing counted as dropped"
    );
    Ok(())
}

#[test]
fn a_full_disk_is_reported_retried_and_loses_nothing() -> Result<()> {
    const N: usize = 300;
    let mut central = Broker::start()?;
    let site = Broker::start()?;
    let device = Collector::subscribe(site.port, "unused/#")?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    central.stop();
    let disk_dir = tempfile::tempdir()?;
    let _disk = SmallDisk::mount(disk_dir.path(), "4m")?;
    let buffer = disk_dir.path().join("buffer.redb");
    let text = config(&central, &site).replace("{dir}/buffer.redb", &buffer.display().to_string());
    let agent = Agent::start(&text)?;
    agent.wait_source("scanner-mqtt", "open")?;
    device.publish("site/scan", "BEFORE-FULL")?;
    wait_for("the first reading stored", DEADLINE, || {
        (agent.status().ok()?["backlog"] == 1).then_some(())
    })?;

    let filler = disk_dir.path().join("filler");
    fill(&filler)?;
    for i in 0..N {
        device.publish("site/scan", format!("LPN{i:06}"))?;
    }
    let st = wait_for("the storage error in status", DEADLINE, || {
        let s = agent.status().ok()?;
        s["storage"]["error"].as_str().is_some().then_some(s)
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log()))?;
    let err = st["storage"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(
        err.contains("df") || err.contains("space"),
        "the error says what to check: {err}"
    );

    // The operator frees space: the agent recovers by itself.
    std::fs::remove_file(&filler)?;
    wait_for("every reading stored", Duration::from_secs(60), || {
        let s = agent.status().ok()?;
        (s["backlog"].as_u64()? > N as u64 && s["storage"]["error"].is_null()).then_some(())
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log()))?;
    central.restart()?;
    let events = sink.wait_events(N + 1, Duration::from_secs(60))?;
    let distinct: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["body"]["code"].as_str())
        .collect();
    ensure!(distinct.len() == N + 1, "{} of {}", distinct.len(), N + 1);
    Ok(())
}

#[test]
fn the_retained_status_says_online_and_the_last_will_says_offline_after_kill_9() -> Result<()> {
    let central = Broker::start()?;
    let site = Broker::start()?;
    let status_sink = Collector::subscribe(central.port, "edge/dc-test-02/status")?;
    let mut agent = Agent::start(&config(&central, &site))?;
    agent.wait_source("scanner-mqtt", "open")?;
    let online = wait_for("a retained online status", DEADLINE, || {
        status_sink
            .all()
            .into_iter()
            .map(|r| r.json())
            .find(|v| v["state"] == "online" && v["sources"]["scanner-mqtt"]["state"] == "open")
    })?;
    for key in [
        "backlog",
        "oldest_pending_s",
        "dropped",
        "config_version",
        "drain_rate",
    ] {
        ensure!(online.get(key).is_some(), "status lacks {key}: {online}");
    }
    let status = agent.signal(nix::sys::signal::Signal::SIGKILL)?;
    ensure!(status.code().is_none(), "{status:?}");
    wait_for("the last will", DEADLINE, || {
        status_sink
            .all()
            .into_iter()
            .any(|r| r.json() == serde_json::json!({"state": "offline"}))
            .then_some(())
    })?;
    // A late subscriber sees the retained offline state.
    let late = Collector::subscribe(central.port, "edge/dc-test-02/status")?;
    wait_for("the retained offline status", DEADLINE, || {
        late.all()
            .into_iter()
            .any(|r| r.json()["state"] == "offline")
            .then_some(())
    })?;
    Ok(())
}

#[test]
fn a_row_that_cannot_be_read_back_is_set_aside_reported_and_delivery_goes_on() -> Result<()> {
    use redb::{ReadableDatabase, ReadableTable};
    const EVENTS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");
    let mut central = Broker::start()?;
    let site = Broker::start()?;
    let device = Collector::subscribe(site.port, "unused/#")?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    central.stop();
    let mut agent = Agent::start(&config(&central, &site))?;
    agent.wait_source("scanner-mqtt", "open")?;
    for code in ["LPN-A", "LPN-B", "LPN-C"] {
        device.publish("site/scan", code)?;
    }
    wait_for("three readings stored", DEADLINE, || {
        (agent.status().ok()?["backlog"] == 3).then_some(())
    })?;
    ensure!(agent.signal(nix::sys::signal::Signal::SIGTERM)?.success());

    // The middle row's envelope is damaged (as a bug or a bad sector would leave it).
    let damaged = {
        let db = redb::Database::create(&agent.storage)?;
        let txn = db.begin_write()?;
        let seq;
        {
            let mut ev = txn.open_table(EVENTS)?;
            let seqs: Vec<u64> = ev
                .iter()?
                .filter_map(|r| r.ok().map(|(k, _)| k.value()))
                .collect();
            ensure!(seqs.len() == 3, "{seqs:?}");
            seq = seqs[1];
            let mut value = ev
                .get(seq)?
                .map(|v| v.value()[..8].to_vec())
                .unwrap_or_default();
            value.extend_from_slice(&[0xbf, 0x63, 0x62, 0x61, 0x64, 0xff, 0x00]);
            ev.insert(seq, value.as_slice())?;
        }
        txn.commit()?;
        drop(db.begin_read()?);
        seq
    };

    central.restart()?;
    agent.restart()?;
    let events = wait_for("A, C and the report of B", DEADLINE, || {
        let e = sink.events();
        let set_aside = e.iter().any(|e| {
            e["kind"] == "exception"
                && e["source"] == "edge-agent"
                && e["body"]["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains("cannot be read back")
        });
        (codes(&e).contains(&"LPN-C".to_string()) && set_aside).then_some(e)
    })
    .map_err(|e| anyhow::anyhow!("{e}; {:?}\n{}", sink.events(), agent.log()))?;
    let got = codes(&events);
    ensure!(
        got.contains(&"LPN-A".to_string()) && !got.contains(&"LPN-B".to_string()),
        "{got:?}"
    );
    let report = events
        .iter()
        .find(|e| e["kind"] == "exception")
        .cloned()
        .unwrap_or_default();
    ensure!(report["body"]["reason"] == "undecodable", "{report}");
    ensure!(
        report["body"]["detail"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("row {damaged}")),
        "{report}"
    );
    ensure!(
        report["raw"].as_str().is_some_and(|r| !r.is_empty()),
        "{report}"
    );
    wait_for("one row set aside and none pending", DEADLINE, || {
        let s = agent.status().ok()?;
        (s["storage"]["set_aside"] == 1 && s["backlog"] == 0).then_some(())
    })
    .map_err(|e| anyhow::anyhow!("{e}: {:?}", agent.status().ok()))?;

    ensure!(agent.signal(nix::sys::signal::Signal::SIGTERM)?.success());
    let (code, out, err) = edge_tests::run_cli(
        &["inspect", "--storage", &agent.storage.to_string_lossy()],
        &[],
    )?;
    ensure!(code == 0, "{err}");
    ensure!(
        out.contains("set aside:    1 events") && out.contains(&format!("seq {damaged}")),
        "{out}"
    );
    Ok(())
}

#[test]
fn the_largest_frame_a_source_allows_is_delivered_and_the_next_reading_follows() -> Result<()> {
    let central = Broker::start()?;
    let site = Broker::start()?;
    let device = Collector::subscribe(site.port, "unused/#")?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    let text = config(&central, &site).replace(
        "receive_maximum = 10",
        "receive_maximum = 10\nmax_frame = 1048576",
    );
    let agent = Agent::start(&text)?;
    agent.wait_source("scanner-mqtt", "open")?;
    let big = vec![b'A'; 1 << 20];
    device.publish("site/scan", big.clone())?;
    device.publish("site/scan", "LPN-NEXT")?;
    let events = wait_for("the 1 MiB reading and the next one", DEADLINE, || {
        let e = sink.events();
        codes(&e).contains(&"LPN-NEXT".to_string()).then_some(e)
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log()))?;
    use base64::Engine as _;
    let raw = events
        .iter()
        .filter_map(|e| e["raw"].as_str())
        .find(|r| r.len() > 1000)
        .map(|r| base64::engine::general_purpose::STANDARD.decode(r))
        .transpose()?;
    ensure!(
        raw.as_deref() == Some(big.as_slice()),
        "the 1 MiB reading did not arrive whole"
    );
    Ok(())
}

/// A site broker that drops messages it queued for the agent (mosquitto beyond its
/// `max_queued_messages`) skips their packet ids, which shows with the next message it does
/// send. The agent says so once in its log, however often it happens, and in the source's
/// status with a count, naming the setting to raise, and goes on storing what arrives.
#[test]
fn a_site_broker_dropping_queued_messages_is_named_once_with_the_setting_to_raise() -> Result<()> {
    const N: usize = 400;
    let central = Broker::start()?;
    // After the test brokers' own max_queued_messages: this one wins.
    let site = Broker::start_with("max_queued_messages 5\n")?;
    let device = Collector::subscribe(site.port, "unused/#")?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    // One message at a time, each waiting for its commit: a burst queues at the broker.
    let text = config(&central, &site).replace("receive_maximum = 10", "receive_maximum = 1");
    let agent = Agent::start(&text)?;
    agent.wait_source("scanner-mqtt", "open")?;
    let arrived = |code: &str| codes(&sink.events()).iter().any(|c| c == code);
    for round in 1..=2 {
        for i in 0..N {
            device.publish("site/scan", format!("LPN{round}{i:05}"))?;
        }
        // A message after the burst, sent again (as a new one) until the broker kept one.
        let trailer = format!("TRAILER{round}");
        wait_for(&format!("{trailer} at central"), DEADLINE, || {
            if arrived(&trailer) {
                return Some(());
            }
            device.publish("site/scan", trailer.clone()).ok()?;
            wait_for(&trailer, Duration::from_millis(300), || {
                arrived(&trailer).then_some(())
            })
            .ok()
        })
        .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log()))?;
    }
    let s = agent.status()?;
    let detail = s["sources"]["scanner-mqtt"]["detail"]
        .as_str()
        .unwrap_or_default();
    ensure!(
        detail.contains("ids were skipped")
            && detail.contains("max_queued_messages")
            && detail.contains("(2 times since start)"),
        "the status names the skipped ids, the setting and the count: {s}"
    );
    let stored = s["storage"]["stored"].as_u64().unwrap_or(0);
    ensure!(
        stored > 2 && stored < 2 * N as u64,
        "the broker dropped some readings and the agent stored the rest: {stored} of {}",
        2 * N
    );
    let log = agent.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("does not give out packet identifiers in sequence"))
        .count();
    ensure!(warnings == 1, "one warning, not {warnings}:\n{log}");
    // Published order: each round's LPNs ascending, then its trailer.
    let mut got = codes(&sink.events());
    // A trailer may have been kept more than once (sent again while the first was on its way).
    got.dedup_by(|a, b| a == b && a.starts_with("TRAILER"));
    let key = |c: &String| {
        let round = c.chars().find(|ch| ch.is_ascii_digit());
        (round, c.starts_with("TRAILER"), c.clone())
    };
    let mut sorted = got.clone();
    sorted.sort_by_key(key);
    sorted.dedup();
    ensure!(
        got == sorted,
        "what arrived came once each, in order: {got:?}"
    );
    Ok(())
}
