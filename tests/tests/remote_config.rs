//! Remote configuration (docs/remote-config.md) end to end: keys, signing and pushing through the
//! real CLI, a real central broker carrying `config/set` and `config/status`, the real agent
//! switching its sources without a restart, and every way a push is refused or rolled back.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Result};
use edge_tests::{
    config_keygen, config_sign, run_cli, wait_for, Agent, Broker, Collector, DEADLINE,
};
use serde_json::Value;

const SITE: &str = "dc-remote-01";

/// `config sign` then `config push` to central.
fn push(dir: &Path, key: &Path, version: u64, toml: &str, central: &Broker) -> Result<()> {
    let (_, signed) = config_sign(dir, key, version, toml)?;
    push_raw(dir, version, &signed, central)
}

fn push_raw(dir: &Path, version: u64, signed: &str, central: &Broker) -> Result<()> {
    let file = dir.join(format!("v{version}.signed.json"));
    std::fs::write(&file, signed)?;
    let (code, out, err) = run_cli(
        &[
            "config",
            "push",
            "--url",
            &central.url(),
            "--topic-prefix",
            "edge",
            "--site",
            SITE,
            &file.to_string_lossy(),
        ],
        &[],
    )?;
    ensure!(code == 0, "push: {err}{out}");
    Ok(())
}

fn agent_config(central: &Broker, site: &Broker, trusted: &str) -> String {
    agent_config_with(central, site, trusted, "", "3s")
}

/// The agent's file with `more` sources and a `confirm_timeout`.
fn agent_config_with(
    central: &Broker,
    site: &Broker,
    trusted: &str,
    more: &str,
    confirm: &str,
) -> String {
    format!(
        r#"
[site]
id = "{SITE}"
[storage]
path = "{{dir}}/buffer.redb"
[upstream]
url = "{}"
format = "json"
[[stations]]
id = "pack-01"
role = "packing"
[[sources.mqtt]]
id = "scanner-a"
url = "{}"
topics = ["site/a"]
decoder = "barcode"
station = "pack-01"
{more}
[control]
socket = "{{dir}}/control.sock"
trusted_keys = ["{trusted}"]
confirm_timeout = "{confirm}"
"#,
        central.url(),
        site.url()
    )
}

/// The operational part of a pushed document: scanner-a kept, scanner-b added.
fn two_scanners(site: &Broker) -> String {
    format!(
        r#"
[upstream]
replay_rate = 1500
[[stations]]
id = "pack-01"
role = "packing"
[[stations]]
id = "recv-01"
role = "receiving"
[[sources.mqtt]]
id = "scanner-a"
url = "{url}"
topics = ["site/a"]
decoder = "barcode"
station = "pack-01"
[[sources.mqtt]]
id = "scanner-b"
url = "{url}"
topics = ["site/b"]
decoder = "barcode"
station = "recv-01"
"#,
        url = site.url()
    )
}

/// Waits for `{prefix}/{site}/config/status` to say `state` for `version`.
fn wait_config_status(statuses: &Collector, version: u64, state: &str) -> Result<Value> {
    wait_for(
        &format!("config/status {state} for version {version}"),
        Duration::from_secs(30),
        || {
            statuses
                .all()
                .into_iter()
                .filter(|r| r.topic.ends_with("/config/status"))
                .map(|r| r.json())
                .find(|v| v["version"] == version && v["state"] == state)
        },
    )
    .map_err(|e| {
        let seen: Vec<Value> = statuses.all().iter().map(|r| r.json()).collect();
        anyhow::anyhow!("{e}; config/status so far: {seen:?}")
    })
}

fn codes_from(events: &[Value], source: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["source"] == source)
        .map(|e| e["body"]["code"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn a_signed_push_switches_the_sources_without_a_restart_or_a_lost_reading_and_survives_one(
) -> Result<()> {
    let keys = tempfile::tempdir()?;
    let (secret, public) = config_keygen(keys.path(), "central.key")?;
    let central = Broker::start()?;
    let site = Broker::start()?;
    let device = Collector::subscribe(site.port, "unused/#")?;
    let sink = Collector::subscribe(central.port, &format!("edge/{SITE}/events/#"))?;
    let statuses = Collector::subscribe(central.port, &format!("edge/{SITE}/config/status"))?;
    let mut agent = Agent::start(&agent_config(&central, &site, &public))?;
    agent.wait_source("scanner-a", "open")?;
    // What a restart of any kind would change: the process exits, or it runs its start again
    // (exec'd or in-process: one "edge-agent running" line per start) and reconnects upstream.
    let starts = |log: &str| log.matches("edge-agent running:").count();
    let upstream_connections = |log: &str| log.matches("connected to upstream broker").count();
    let log = wait_for("the upstream connection", DEADLINE, || {
        let log = agent.log();
        (upstream_connections(&log) > 0).then_some(log)
    })?;
    ensure!(starts(&log) == 1, "{log}");
    let connections = upstream_connections(&log);

    // A device keeps scanning on scanner-a, one reading a millisecond, from before the push
    // until AFTER more readings once the test saw it applied (`applied` is also how the test
    // stops it when something failed first).
    const AFTER: usize = 50;
    let published = Arc::new(AtomicUsize::new(0));
    let applied = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (published, applied) = (published.clone(), applied.clone());
        std::thread::spawn(move || -> Result<(Collector, usize)> {
            let mut i = 0;
            let mut after = None;
            while after.is_none_or(|a| i < a) {
                device.publish("site/a", format!("LPN{i:06}"))?;
                i += 1;
                published.store(i, Ordering::SeqCst);
                if after.is_none() && applied.load(Ordering::SeqCst) {
                    after = Some(i + AFTER);
                }
                // Pacing the device, not waiting for anything.
                std::thread::sleep(Duration::from_millis(1));
                ensure!(i < 100_000, "the push was never applied");
            }
            Ok((device, i))
        })
    };
    let stop_publisher = |applied: &AtomicBool| applied.store(true, Ordering::SeqCst);
    // Before: readings already reach central.
    let flowing = wait_for("readings flowing before the push", DEADLINE, || {
        (codes_from(&sink.events(), "scanner-a").len() >= 20).then_some(())
    });
    if let Err(e) = flowing {
        stop_publisher(&applied);
        let _ = publisher.join();
        return Err(e);
    }
    let pushed = push(keys.path(), &secret, 1, &two_scanners(&site), &central);
    let at_sent = published.load(Ordering::SeqCst);
    let confirmed = pushed.and_then(|()| wait_config_status(&statuses, 1, "applied"));
    let at_applied = published.load(Ordering::SeqCst);
    stop_publisher(&applied);
    let (device, n) = publisher
        .join()
        .map_err(|_| anyhow::anyhow!("publisher panicked"))??;
    confirmed?;
    // During and after: readings were published after the push was sent and before the test
    // saw it applied, and after that.
    ensure!(
        at_sent < at_applied && at_applied < n,
        "readings published: {at_sent} when the push was sent, {at_applied} when it was \
         applied, {n} in all"
    );

    ensure!(
        agent.exited().is_none(),
        "the agent exited: {}",
        agent.log()
    );
    let log = agent.log();
    ensure!(starts(&log) == 1, "the agent was restarted:\n{log}");
    ensure!(
        upstream_connections(&log) == connections,
        "the upstream connection was not kept:\n{log}"
    );
    // scanner-a and its station are the same in the document: it was never stopped.
    ensure!(
        log.contains("sources switched; started: scanner-b\n"),
        "{log}"
    );
    let status = agent.wait_source("scanner-b", "open")?;
    ensure!(
        status["sources"]["scanner-a"]["state"] == "open",
        "{status}"
    );
    device.publish("site/b", "LPN900001")?;

    let events = wait_for("every reading from both scanners", DEADLINE, || {
        let e = sink.events();
        let a: BTreeSet<String> = codes_from(&e, "scanner-a").into_iter().collect();
        (a.len() == n && codes_from(&e, "scanner-b").len() == 1).then_some(e)
    })
    .map_err(|e| anyhow::anyhow!("{e}; {} events\n{}", sink.events().len(), agent.log()))?;
    let b = events.iter().find(|e| e["source"] == "scanner-b");
    ensure!(
        b.is_some_and(|e| e["station"] == "recv-01" && e["kind"] == "inventory.scan"),
        "scanner-b's reading belongs to the pushed receiving station: {b:?}"
    );
    let a = codes_from(&events, "scanner-a");
    let want: BTreeSet<String> = (0..n).map(|i| format!("LPN{i:06}")).collect();
    ensure!(
        a.iter().cloned().collect::<BTreeSet<_>>() == want,
        "scanner-a's readings are not exactly the {n} published"
    );
    let mut seen = BTreeSet::new();
    let firsts: Vec<&String> = a.iter().filter(|c| seen.insert(*c)).collect();
    ensure!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "scanner-a's readings out of order across the switch"
    );

    // The pushed configuration wins over the file's after a restart.
    let stopped = agent.signal(nix::sys::signal::Signal::SIGTERM)?;
    ensure!(stopped.success(), "SIGTERM: {stopped:?}");
    agent.restart()?;
    let status = agent.wait_source("scanner-b", "open")?;
    ensure!(status["config_version"] == 1, "{status}");
    // The check above sees a restart.
    ensure!(starts(&agent.log()) == 2, "{}", agent.log());
    ensure!(
        agent
            .log()
            .contains("running pushed configuration version 1"),
        "{}",
        agent.log()
    );
    Ok(())
}

#[test]
fn pushes_that_are_unsigned_forged_stale_local_or_invalid_are_rejected_and_change_nothing(
) -> Result<()> {
    let keys = tempfile::tempdir()?;
    let (secret, public) = config_keygen(keys.path(), "central.key")?;
    let (stranger, _) = config_keygen(keys.path(), "stranger.key")?;
    let central = Broker::start()?;
    let site = Broker::start()?;
    let statuses = Collector::subscribe(central.port, &format!("edge/{SITE}/config/status"))?;
    let agent = Agent::start(&agent_config(&central, &site, &public))?;
    agent.wait_source("scanner-a", "open")?;
    let dir = keys.path();

    // Signed by a key the site does not trust.
    push(dir, &stranger, 5, &two_scanners(&site), &central)?;
    let s = wait_config_status(&statuses, 5, "rejected")?;
    ensure!(
        s["reason"]
            .as_str()
            .unwrap_or("")
            .contains("not in control.trusted_keys"),
        "{s}"
    );

    // Altered after signing.
    let (_, signed) = config_sign(dir, &secret, 6, &two_scanners(&site))?;
    let mut doc: Value = serde_json::from_str(&signed)?;
    doc["toml"] = Value::String(
        doc["toml"]
            .as_str()
            .unwrap_or("")
            .replace("site/b", "site/#"),
    );
    push_raw(dir, 6, &doc.to_string(), &central)?;
    let s = wait_config_status(&statuses, 6, "rejected")?;
    ensure!(
        s["reason"]
            .as_str()
            .unwrap_or("")
            .contains("does not match"),
        "{s}"
    );

    // Touches what stays local.
    push(
        dir,
        &secret,
        7,
        "[site]\nid = \"elsewhere\"\n[upstream]\nurl = \"mqtt://evil:1883\"\n",
        &central,
    )?;
    let s = wait_config_status(&statuses, 7, "rejected")?;
    let reason = s["reason"].as_str().unwrap_or("");
    ensure!(
        reason.contains("site") && reason.contains("upstream.url") && reason.contains("stay local"),
        "{s}"
    );

    // Invalid: the same complete report as check-config.
    push(
        dir,
        &secret,
        8,
        "[[sources.mqtt]]\nid = \"x\"\nurl = \"ftp://nope\"\ntopics = [\"t\"]\ndecoder = \"barcode\"\nstation = \"nowhere\"\n",
        &central,
    )?;
    let s = wait_config_status(&statuses, 8, "rejected")?;
    let reason = s["reason"].as_str().unwrap_or("");
    ensure!(
        reason.contains("sources.mqtt[0].url") && reason.contains("sources.mqtt[0].station"),
        "{s}"
    );

    // A good one, then an older version.
    push(dir, &secret, 9, &two_scanners(&site), &central)?;
    wait_config_status(&statuses, 9, "applied")?;
    push(dir, &secret, 3, "", &central)?;
    let s = wait_config_status(&statuses, 3, "rejected")?;
    ensure!(
        s["reason"].as_str().unwrap_or("").contains("not above 9"),
        "{s}"
    );

    let status = agent.status()?;
    let ids: BTreeSet<&str> = status["sources"]
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    ensure!(
        ids == BTreeSet::from(["scanner-a", "scanner-b"]),
        "version 9's sources stay: {ids:?}"
    );
    Ok(())
}

#[test]
fn a_push_whose_new_source_does_not_open_is_rolled_back_to_the_last_good_one() -> Result<()> {
    let keys = tempfile::tempdir()?;
    let (secret, public) = config_keygen(keys.path(), "central.key")?;
    let central = Broker::start()?;
    let site = Broker::start()?;
    let device = Collector::subscribe(site.port, "unused/#")?;
    let sink = Collector::subscribe(central.port, &format!("edge/{SITE}/events/#"))?;
    let statuses = Collector::subscribe(central.port, &format!("edge/{SITE}/config/status"))?;
    let agent = Agent::start(&agent_config(&central, &site, &public))?;
    agent.wait_source("scanner-a", "open")?;

    let broken = format!(
        "{}\n[[sources.serial]]\nid = \"scale-missing\"\npath = \"/dev/serial/by-id/usb-nothing-here\"\nbaud = 9600\ndecoder = \"barcode\"\nstation = \"pack-01\"\n",
        two_scanners(&site)
    );
    push(keys.path(), &secret, 1, &broken, &central)?;
    let s = wait_config_status(&statuses, 1, "rolled_back")?;
    let reason = s["reason"].as_str().unwrap_or("");
    ensure!(
        reason.contains("scale-missing")
            && reason.contains("confirm_timeout")
            && reason.contains("the configuration file"),
        "{s}"
    );
    let status = wait_for("the file's sources back", DEADLINE, || {
        let s = agent.status().ok()?;
        let ids: Vec<String> = s["sources"].as_object()?.keys().cloned().collect();
        (ids == ["scanner-a"] && s["sources"]["scanner-a"]["state"] == "open").then_some(s)
    })?;
    drop(status);
    device.publish("site/a", "LPN000777")?;
    let events = sink.wait_events(1, DEADLINE)?;
    ensure!(
        codes_from(&events, "scanner-a") == ["LPN000777"],
        "{events:?}"
    );
    Ok(())
}

/// A serial scanner on a port that is not there: it stays retrying.
const MISSING_SERIAL: &str = "[[sources.serial]]\nid = \"scanner-unplugged\"\npath = \"/dev/serial/by-id/usb-unplugged\"\nbaud = 9600\ndecoder = \"barcode\"\nstation = \"pack-01\"\n";

#[test]
fn a_push_is_confirmed_by_the_sources_it_starts_not_by_an_untouched_one_that_is_down() -> Result<()>
{
    let keys = tempfile::tempdir()?;
    let (secret, public) = config_keygen(keys.path(), "central.key")?;
    let central = Broker::start()?;
    let site = Broker::start()?;
    let statuses = Collector::subscribe(central.port, &format!("edge/{SITE}/config/status"))?;
    let agent = Agent::start(&agent_config_with(
        &central,
        &site,
        &public,
        MISSING_SERIAL,
        "3s",
    ))?;
    agent.wait_source("scanner-a", "open")?;
    agent.wait_source("scanner-unplugged", "retrying")?;
    // The same unplugged scanner, and a new one.
    let doc = format!("{}\n{MISSING_SERIAL}", two_scanners(&site));
    push(keys.path(), &secret, 1, &doc, &central)?;
    let s = wait_config_status(&statuses, 1, "applied")?;
    ensure!(s["reason"] == "", "{s}");
    let status = agent.wait_source("scanner-b", "open")?;
    ensure!(
        status["sources"]["scanner-unplugged"]["state"] == "retrying",
        "{status}"
    );
    Ok(())
}

#[test]
fn a_push_that_stops_the_agent_twice_while_confirming_is_given_up() -> Result<()> {
    let keys = tempfile::tempdir()?;
    let (secret, public) = config_keygen(keys.path(), "central.key")?;
    let central = Broker::start()?;
    let site = Broker::start()?;
    let statuses = Collector::subscribe(central.port, &format!("edge/{SITE}/config/status"))?;
    // A long confirmation, so that the kills land inside it.
    let mut agent = Agent::start(&agent_config_with(&central, &site, &public, "", "60s"))?;
    agent.wait_source("scanner-a", "open")?;
    let doc = format!("{}\n{MISSING_SERIAL}", two_scanners(&site));
    push(keys.path(), &secret, 1, &doc, &central)?;
    for round in 1..=2 {
        wait_for(&format!("confirmation {round} under way"), DEADLINE, || {
            let s = agent.status().ok()?;
            (s["sources"]["scanner-unplugged"]["state"] == "retrying").then_some(())
        })
        .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log()))?;
        let killed = agent.signal(nix::sys::signal::Signal::SIGKILL)?;
        ensure!(killed.code().is_none(), "{killed:?}");
        agent.restart()?;
    }
    // Third start: the document is given up, the file's configuration runs.
    let s = wait_config_status(&statuses, 1, "rolled_back")?;
    ensure!(
        s["reason"].as_str().unwrap_or("").contains("stopped twice"),
        "{s}"
    );
    let status = agent.wait_source("scanner-a", "open")?;
    ensure!(
        status["sources"].get("scanner-unplugged").is_none(),
        "{status}"
    );
    ensure!(status["config_version"].is_null(), "{status}");
    Ok(())
}

#[test]
fn config_push_names_its_flags_when_tls_settings_are_missing_or_half_given() -> Result<()> {
    let keys = tempfile::tempdir()?;
    let (secret, _) = config_keygen(keys.path(), "central.key")?;
    let (doc, _) = config_sign(keys.path(), &secret, 1, "")?;
    let doc = doc.to_string_lossy().to_string();
    let push = |extra: &[&str]| -> Result<(i32, String)> {
        let mut args = vec![
            "config",
            "push",
            "--url",
            "mqtts://127.0.0.1:1",
            "--site",
            SITE,
        ];
        args.extend_from_slice(extra);
        args.push(&doc);
        let (code, _, err) = run_cli(&args, &[])?;
        Ok((code, err))
    };
    let (code, err) = push(&[])?;
    ensure!(
        code == 1 && err.contains("--ca-file: required for mqtts://"),
        "{code} {err}"
    );
    let cert = secret.to_string_lossy().to_string();
    let (code, err) = push(&["--ca-file", &cert, "--cert-file", &cert])?;
    ensure!(
        code == 1 && err.contains("--cert-file") && err.contains("--key-file"),
        "{code} {err}"
    );
    Ok(())
}

#[test]
fn publishing_the_applied_version_again_is_rejected_but_its_retained_copy_is_not() -> Result<()> {
    let keys = tempfile::tempdir()?;
    let (secret, public) = config_keygen(keys.path(), "central.key")?;
    let central = Broker::start()?;
    let site = Broker::start()?;
    let statuses = Collector::subscribe(central.port, &format!("edge/{SITE}/config/status"))?;
    let mut agent = Agent::start(&agent_config(&central, &site, &public))?;
    agent.wait_source("scanner-a", "open")?;
    let (_, signed) = config_sign(keys.path(), &secret, 3, &two_scanners(&site))?;
    push_raw(keys.path(), 3, &signed, &central)?;
    wait_config_status(&statuses, 3, "applied")?;

    // The same document published again: a new publication, answered.
    push_raw(keys.path(), 3, &signed, &central)?;
    let s = wait_config_status(&statuses, 3, "rejected")?;
    ensure!(
        s["reason"]
            .as_str()
            .unwrap_or("")
            .contains("already applied and stays in effect"),
        "{s}"
    );
    let status = agent.status()?;
    ensure!(status["config_version"] == 3, "{status}");

    // The retained copy the broker sends at every new connection is not a new publication.
    let stopped = agent.signal(nix::sys::signal::Signal::SIGTERM)?;
    ensure!(stopped.success(), "SIGTERM: {stopped:?}");
    agent.restart()?;
    agent.wait_source("scanner-b", "open")?;
    // Wait until the agent has read the retained copy, then look at what it said about it.
    wait_for("the retained copy read after the restart", DEADLINE, || {
        agent
            .log()
            .contains("version 3: retained copy already handled")
            .then_some(())
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log()))?;
    let log = agent.log();
    let rejections = log
        .matches("pushed configuration version 3 rejected")
        .count();
    ensure!(rejections == 1, "rejected {rejections} times:\n{log}");
    Ok(())
}

#[test]
fn an_oversized_document_is_refused_by_push_and_rejected_by_the_agent_whose_uplink_stays_up(
) -> Result<()> {
    let keys = tempfile::tempdir()?;
    let (secret, public) = config_keygen(keys.path(), "central.key")?;
    let central = Broker::start()?;
    let site = Broker::start()?;
    let device = Collector::subscribe(site.port, "unused/#")?;
    let sink = Collector::subscribe(central.port, &format!("edge/{SITE}/events/#"))?;
    let statuses = Collector::subscribe(central.port, &format!("edge/{SITE}/config/status"))?;
    let agent = Agent::start(&agent_config(&central, &site, &public))?;
    agent.wait_source("scanner-a", "open")?;

    // `config push` refuses a document the agent would not read.
    let padding = format!("# {}\n", "x".repeat(2 << 20));
    let (_, big) = config_sign(
        keys.path(),
        &secret,
        4,
        &format!("{padding}{}", two_scanners(&site)),
    )?;
    let file = keys.path().join("big.signed.json");
    std::fs::write(&file, &big)?;
    let (code, _, err) = run_cli(
        &[
            "config",
            "push",
            "--url",
            &central.url(),
            "--site",
            SITE,
            &file.to_string_lossy(),
        ],
        &[],
    )?;
    ensure!(
        code != 0 && err.contains("bytes an agent accepts"),
        "{code}: {err}"
    );

    // Published retained anyway (by another client): rejected with the reason, and events
    // keep flowing over the same uplink.
    let publisher = Collector::subscribe(central.port, "unused/#")?;
    publisher.client_publish_retained(&format!("edge/{SITE}/config/set"), big.clone())?;
    let s = wait_for(
        "a rejection of the oversized document",
        Duration::from_secs(30),
        || {
            statuses
                .all()
                .into_iter()
                .map(|r| r.json())
                .find(|v| v["state"] == "rejected")
        },
    )?;
    ensure!(
        s["reason"]
            .as_str()
            .unwrap_or("")
            .contains("bytes a pushed configuration may have"),
        "{s}"
    );
    device.publish("site/a", "LPN000001")?;
    sink.wait_events(1, DEADLINE)?;

    // Above even what the agent reads at all: the uplink drops once, the retained document
    // is cleared, the rejection is published, and the uplink stays up from then on.
    let huge = vec![b'x'; 5 << 20];
    publisher.client_publish_retained(&format!("edge/{SITE}/config/set"), huge)?;
    wait_for(
        "the clearing of the huge document",
        Duration::from_secs(60),
        || {
            statuses.all().into_iter().map(|r| r.json()).find(|v| {
                v["state"] == "rejected"
                    && v["reason"]
                        .as_str()
                        .unwrap_or("")
                        .contains("retained document was removed")
            })
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log()))?;
    device.publish("site/a", "LPN000002")?;
    wait_for(
        "the reading after the huge document",
        Duration::from_secs(30),
        || {
            codes_from(&sink.events(), "scanner-a")
                .contains(&"LPN000002".to_string())
                .then_some(())
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log()))?;
    let drops = agent.log().matches("retrying").count();
    ensure!(drops <= 2, "the uplink kept dropping:\n{}", agent.log());
    Ok(())
}
