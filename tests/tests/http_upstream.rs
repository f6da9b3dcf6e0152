//! The HTTP upstream end to end: the built binary POSTing to a real HTTP server process on
//! loopback (`tests/http-endpoint/endpoint.py`, Python's standard library: plain or TLS, with a
//! client certificate required or not), readings from a serial pty, a real redb file. The
//! endpoint logs every request (headers, body, answer, time) and answers as a script file
//! says; each test rewrites that script.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use edge_tests::endpoint::{
    agent_config, check_scans, codes, lpn, make_pki, serial_source, write_scans, Endpoint, Request,
    Tls,
};
use edge_tests::{
    check_event_message, read_with_cloudevents_sdk, run_cli, wait_for, Agent, Broker, Collector,
    Pty, DEADLINE,
};
use serde_json::{json, Value};

/// The Idempotency-Key the contract gives for `ids`, computed with the openssl CLI.
fn expected_key(ids: &[String]) -> Result<String> {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-r"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running openssl (tests/run installs it)")?;
    {
        let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        for id in ids {
            writeln!(stdin, "{id}")?;
        }
    }
    let out = child.wait_with_output()?;
    let hex = String::from_utf8_lossy(&out.stdout);
    Ok(hex.get(..32).unwrap_or("").to_string())
}

#[test]
fn a_thousand_events_arrive_once_each_in_order_over_mutual_tls_with_a_bearer_token() -> Result<()> {
    let pki = tempfile::tempdir()?;
    make_pki(pki.path())?;
    let p = |n: &str| pki.path().join(n);
    let mut endpoint = Endpoint::new(Some(Tls {
        cert: p("server.crt"),
        key: p("server.key"),
        client_ca: Some(p("ca.crt")),
    }))?;
    endpoint.set_script(&json!({"token": "s3cret-token"}))?;
    endpoint.start()?;
    std::fs::write(p("token"), "s3cret-token\n")?;
    std::fs::set_permissions(
        p("token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let mut pty = Pty::open()?;
    let upstream = format!(
        "url = \"{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\ntoken_file = \"{}\"\nreplay_rate = 100000",
        endpoint.url(),
        p("ca.crt").display(),
        p("client.crt").display(),
        p("client.key").display(),
        p("token").display()
    );
    let agent = Agent::start(&agent_config(&upstream, &serial_source(&pty), ""))?;
    agent.wait_source("scanner-pack-01", "open")?;
    for chunk in (0..1000).step_by(100) {
        write_scans(&mut pty, chunk..chunk + 100)?;
    }
    let events = endpoint.wait_delivered(1000, &agent)?;
    check_scans(&events, 1000)?;
    let requests = endpoint.requests();
    for r in &requests {
        ensure!(r.delivered(), "answered {}: {}", r.status, agent.log());
        ensure!(r.ids.len() <= 100, "{} events in one request", r.ids.len());
        ensure!(
            r.header("content-type") == "application/json",
            "Content-Type {:?}",
            r.header("content-type")
        );
        ensure!(
            r.header("authorization") == "Bearer s3cret-token",
            "{:?}",
            r.headers
        );
        ensure!(
            r.client_cert.as_deref() == Some("edge-agent-dc-test-01"),
            "client certificate {:?}",
            r.client_cert
        );
        check_event_message(&r.body).map_err(|e| anyhow!("{e}"))?;
    }
    let first = &requests[0];
    ensure!(
        first.header("idempotency-key") == expected_key(&first.ids)?,
        "Idempotency-Key {:?} is not the first 32 hex digits of SHA-256 over the ids",
        first.header("idempotency-key")
    );
    let status = agent.status()?;
    ensure!(status["upstream"]["connected"] == true, "{status}");
    ensure!(status["upstream"]["delivered"] == 1000, "{status}");
    wait_for("the backlog to empty", DEADLINE, || {
        (agent.status().ok()?["backlog"] == 0).then_some(())
    })?;
    Ok(())
}

#[test]
fn an_endpoint_that_is_down_then_up_gets_every_buffered_event_in_order() -> Result<()> {
    let mut endpoint = Endpoint::new(None)?;
    let mut pty = Pty::open()?;
    let upstream = format!("url = \"{}\"\nbatch = 20", endpoint.url());
    let agent = Agent::start(&agent_config(&upstream, &serial_source(&pty), ""))?;
    agent.wait_source("scanner-pack-01", "open")?;
    write_scans(&mut pty, 0..50)?;
    let status = wait_for(
        "50 events buffered, the endpoint named as down",
        DEADLINE,
        || {
            let s = agent.status().ok()?;
            (s["backlog"] == 50 && s["upstream"]["connected"] == false).then_some(s)
        },
    )?;
    let detail = status["upstream"]["detail"].as_str().unwrap_or("");
    ensure!(
        detail.contains(&endpoint.url()) && detail.contains("refused"),
        "status names the endpoint and the cause: {detail}"
    );
    endpoint.start()?;
    let events = endpoint.wait_delivered(50, &agent)?;
    check_scans(&events, 50)?;
    ensure!(
        endpoint.requests().iter().all(|r| r.ids.len() <= 20),
        "a request above upstream.batch"
    );
    wait_for("upstream connected", DEADLINE, || {
        (agent.status().ok()?["upstream"]["connected"] == true).then_some(())
    })?;
    Ok(())
}

#[test]
fn a_503_with_retry_after_is_waited_out_and_the_same_batch_sent_again() -> Result<()> {
    let mut endpoint = Endpoint::new(None)?;
    endpoint.set_script(
        &json!({"respond": [{"status": 503, "retry_after": "2", "body": "maintenance"}]}),
    )?;
    endpoint.start()?;
    let mut pty = Pty::open()?;
    let agent = Agent::start(&agent_config(
        &format!("url = \"{}\"", endpoint.url()),
        &serial_source(&pty),
        "",
    ))?;
    agent.wait_source("scanner-pack-01", "open")?;
    write_scans(&mut pty, 0..10)?;
    let events = endpoint.wait_delivered(10, &agent)?;
    check_scans(&events, 10)?;
    let requests = endpoint.requests();
    ensure!(
        requests[0].status == 503,
        "first answer {}",
        requests[0].status
    );
    let refused_at = requests[0]
        .answered
        .ok_or_else(|| anyhow!("the 503 has no answer time"))?;
    let again = &requests[1];
    ensure!(
        again.time - refused_at >= 2.0,
        "the next request came {:.3} s after a Retry-After of 2 s",
        again.time - refused_at
    );
    // A 503 says the endpoint did not take the batch: the retry carries the same events
    // first, and those pending since may join it (up to upstream.batch); the same events give
    // the same key.
    ensure!(
        again.ids.starts_with(&requests[0].ids),
        "the retry does not start with the refused batch: {:?} then {:?}",
        requests[0].ids,
        again.ids
    );
    ensure!(
        (again.ids == requests[0].ids)
            == (again.header("idempotency-key") == requests[0].header("idempotency-key")),
        "the key changes exactly when the events do"
    );
    ensure!(
        agent
            .log()
            .contains("HTTP 503 Service Unavailable: maintenance"),
        "the answer is logged:\n{}",
        agent.log()
    );
    Ok(())
}

#[test]
fn an_event_refused_with_400_is_set_aside_and_every_other_one_delivered_in_order() -> Result<()> {
    let mut endpoint = Endpoint::new(None)?;
    endpoint.set_script(&json!({"reject_codes": [lpn(13)], "reject_status": 400}))?;
    let mut pty = Pty::open()?;
    let mut agent = Agent::start(&agent_config(
        &format!("url = \"{}\"", endpoint.url()),
        &serial_source(&pty),
        "",
    ))?;
    agent.wait_source("scanner-pack-01", "open")?;
    // Buffered while the endpoint is down, so that they go in one batch of 30.
    write_scans(&mut pty, 0..30)?;
    wait_for("30 events buffered", DEADLINE, || {
        (agent.status().ok()?["backlog"] == 30).then_some(())
    })?;
    endpoint.start()?;
    let events = endpoint.wait_delivered(29, &agent)?;
    let want: Vec<String> = (0..30).filter(|i| *i != 13).map(lpn).collect();
    ensure!(codes(&events) == want, "delivered {:?}", codes(&events));
    let status = wait_for("the backlog to empty", DEADLINE, || {
        let s = agent.status().ok()?;
        (s["backlog"] == 0).then_some(s)
    })?;
    ensure!(status["upstream"]["rejected"] == 1, "{status}");
    ensure!(status["storage"]["set_aside"] == 1, "{status}");
    let requests = endpoint.requests();
    ensure!(
        requests
            .first()
            .is_some_and(|r| r.ids.len() == 30 && r.status == 400),
        "the first request is the whole batch, refused"
    );
    let refused: Vec<&Request> = requests.iter().filter(|r| r.status == 400).collect();
    ensure!(
        refused.last().is_some_and(|r| r.ids.len() == 1),
        "halving ends with the refused event alone: {:?}",
        refused.iter().map(|r| r.ids.len()).collect::<Vec<_>>()
    );
    ensure!(
        refused.len() <= 6,
        "{} refused requests to isolate one event of 30",
        refused.len()
    );
    agent.signal(nix::sys::signal::Signal::SIGTERM)?;
    let (code, out, err) = run_cli(
        &["inspect", "--storage", &agent.storage.display().to_string()],
        &[],
    )?;
    ensure!(code == 0, "inspect: {err}");
    ensure!(
        out.contains(&format!(
            "refused by {}: HTTP 400 Bad Request",
            endpoint.url()
        )),
        "inspect lists the set-aside event with the answer:\n{out}"
    );
    Ok(())
}

#[test]
fn after_kill_9_mid_batch_the_retry_carries_the_same_idempotency_key_and_ids() -> Result<()> {
    let mut endpoint = Endpoint::new(None)?;
    let mut pty = Pty::open()?;
    let upstream = format!("url = \"{}\"\nbatch = 100", endpoint.url());
    let mut agent = Agent::start(&agent_config(&upstream, &serial_source(&pty), ""))?;
    agent.wait_source("scanner-pack-01", "open")?;
    // 250 buffered while the endpoint is down: the first batch is the oldest 100.
    write_scans(&mut pty, 0..250)?;
    wait_for("250 events buffered", DEADLINE, || {
        (agent.status().ok()?["backlog"] == 250).then_some(())
    })?;
    endpoint.set_script(&json!({"hang": true}))?;
    endpoint.start()?;
    let hung = wait_for(
        "a request the endpoint holds",
        Duration::from_secs(60),
        || endpoint.requests().into_iter().find(|r| r.status == "hung"),
    )?;
    ensure!(
        hung.ids.len() == 100,
        "{} events in the held batch",
        hung.ids.len()
    );
    agent.signal(nix::sys::signal::Signal::SIGKILL)?;
    endpoint.set_script(&json!({}))?;
    agent.restart()?;
    let events = endpoint.wait_delivered(250, &agent)?;
    check_scans(&events, 250)?;
    let requests = endpoint.requests();
    let retry = requests
        .iter()
        .find(|r| r.delivered())
        .ok_or_else(|| anyhow!("nothing delivered"))?;
    ensure!(
        retry.ids == hung.ids,
        "the first request after the restart is not the held batch"
    );
    ensure!(
        retry.header("idempotency-key") == hung.header("idempotency-key"),
        "Idempotency-Key {:?} after the restart, {:?} before",
        retry.header("idempotency-key"),
        hung.header("idempotency-key")
    );
    Ok(())
}

#[test]
fn cloudevents_go_as_a_batch_the_sdk_reads_with_status_and_replay_over_the_control_broker(
) -> Result<()> {
    let broker = Broker::start()?;
    let status_sink = Collector::subscribe(broker.port, "edge/dc-test-01/status")?;
    let mut endpoint = Endpoint::new(None)?;
    endpoint.start()?;
    let mut pty = Pty::open()?;
    let upstream = format!("url = \"{}\"\nformat = \"cloudevents\"", endpoint.url());
    let agent = Agent::start(&agent_config(
        &upstream,
        &serial_source(&pty),
        &format!("broker = \"{}\"", broker.url()),
    ))?;
    agent.wait_source("scanner-pack-01", "open")?;
    write_scans(&mut pty, 0..5)?;
    wait_for("5 events delivered", Duration::from_secs(60), || {
        let n: usize = endpoint
            .requests()
            .iter()
            .filter(|r| r.delivered())
            .map(|r| r.ids.len())
            .sum();
        (n >= 5).then_some(())
    })?;
    let requests = endpoint.requests();
    let mut lines = Vec::new();
    for r in &requests {
        ensure!(
            r.header("content-type") == "application/cloudevents-batch+json",
            "Content-Type {:?}",
            r.header("content-type")
        );
        check_event_message(&r.body).map_err(|e| anyhow!("{e}"))?;
        for e in r.body.as_array().cloned().unwrap_or_default() {
            lines.push(e.to_string());
        }
    }
    let read = read_with_cloudevents_sdk(
        &lines
            .iter()
            .map(|l| l.as_bytes().to_vec())
            .collect::<Vec<_>>(),
    )?;
    ensure!(read.len() == 5, "the SDK read {} events", read.len());
    for (ev, line) in read.iter().zip(&lines) {
        let sent: Value = serde_json::from_str(line)?;
        ensure!(
            ev["id"] == sent["id"] && ev["type"] == sent["type"],
            "{ev} vs {sent}"
        );
    }

    // The control channels ride control.broker: the retained status, and a replay request.
    wait_for("the status on the control broker", DEADLINE, || {
        status_sink
            .all()
            .iter()
            .any(|m| m.json()["sources"]["scanner-pack-01"]["state"] == "open")
            .then_some(())
    })?;
    status_sink.publish(
        "edge/dc-test-01/cmd/replay",
        json!({"since": "2020-01-01T00:00:00Z"}).to_string(),
    )?;
    let replayed = wait_for("the replayed batch", Duration::from_secs(60), || {
        endpoint.requests().into_iter().find(|r| {
            r.body
                .as_array()
                .is_some_and(|a| a.iter().any(|e| e["data"]["replayed"] == true))
        })
    })?;
    ensure!(
        replayed.ids.len() == 5,
        "{} events replayed",
        replayed.ids.len()
    );
    ensure!(
        replayed.header("idempotency-key") != requests[0].header("idempotency-key"),
        "a replay must not carry the original batch's key"
    );
    Ok(())
}

#[test]
fn check_config_refuses_plain_http_beyond_loopback_and_cbor_over_http() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for (upstream, want) in [
        (
            "url = \"http://10.0.0.5/events\"",
            "upstream.url: \"http://10.0.0.5/events\": http:// would send events unencrypted",
        ),
        (
            "url = \"http://127.0.0.1:8080/events\"\nformat = \"cbor\"",
            "upstream.format: cbor is for MQTT",
        ),
        (
            "url = \"https://erp.example.com/events\"",
            "upstream.ca_file:",
        ),
    ] {
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            agent_config(upstream, "", "").replace("{dir}", &dir.path().display().to_string()),
        )?;
        let (code, out, err) = run_cli(
            &["check-config", "--config", &path.display().to_string()],
            &[],
        )?;
        ensure!(code == 2, "exit {code} for {upstream}: {out}{err}");
        ensure!(err.contains(want), "{upstream}: wanted {want:?} in:\n{err}");
    }
    let path = dir.path().join("ok.toml");
    std::fs::write(
        &path,
        agent_config("url = \"http://127.0.0.1:8080/events\"", "", "")
            .replace("{dir}", &dir.path().display().to_string()),
    )?;
    let (code, out, err) = run_cli(
        &["check-config", "--config", &path.display().to_string()],
        &[],
    )?;
    ensure!(code == 0, "plain http to loopback refused: {out}{err}");
    Ok(())
}

#[test]
fn a_full_disk_while_delivering_over_http_is_reported_and_every_reading_arrives_once_in_order(
) -> Result<()> {
    const N: usize = 300;
    let mut endpoint = Endpoint::new(None)?;
    endpoint.start()?;
    let disk_dir = tempfile::tempdir()?;
    let _disk = edge_tests::SmallDisk::mount(disk_dir.path(), "4m")?;
    let buffer = disk_dir.path().join("buffer.redb");
    let mut pty = Pty::open()?;
    let text = agent_config(
        &format!("url = \"{}\"", endpoint.url()),
        &serial_source(&pty),
        "",
    )
    .replace("{dir}/buffer.redb", &buffer.display().to_string());
    let agent = Agent::start(&text)?;
    agent.wait_source("scanner-pack-01", "open")?;
    write_scans(&mut pty, 0..1)?;
    endpoint.wait_delivered(1, &agent)?;

    let filler = disk_dir.path().join("filler");
    edge_tests::fill(&filler)?;
    write_scans(&mut pty, 1..N + 1)?;
    let status = wait_for("the storage error in status", DEADLINE, || {
        let s = agent.status().ok()?;
        s["storage"]["error"].as_str().is_some().then_some(s)
    })
    .map_err(|e| anyhow!("{e}\n{}", agent.log()))?;
    let err = status["storage"]["error"].as_str().unwrap_or_default();
    ensure!(
        err.contains("df") || err.contains("space"),
        "the error says what to check: {err}"
    );

    // The operator frees space: the agent stores what it held and delivers it.
    std::fs::remove_file(&filler)?;
    let events = endpoint.wait_delivered(N + 1, &agent)?;
    check_scans(&events, N + 1)?;
    wait_for(
        "the backlog to empty and the error to clear",
        DEADLINE,
        || {
            let s = agent.status().ok()?;
            (s["backlog"] == 0 && s["storage"]["error"].is_null()).then_some(())
        },
    )
    .map_err(|e| anyhow!("{e}\n{}", agent.log()))?;
    Ok(())
}

/// A backlog of 1 MiB frames (`max_frame` allows them) with the default `upstream.batch` of
/// 100: each request carries at most 4 MiB of stored events plus the one that reaches it
/// (here 4 events), never the whole backlog in one body, and every
/// event arrives once, in order.
#[test]
fn a_backlog_of_1_mib_frames_goes_in_requests_of_about_4_mib_once_each_in_order() -> Result<()> {
    const N: u64 = 24;
    let mut endpoint = Endpoint::new(None)?;
    endpoint.start()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("buffer.redb");
    edge_tests::write_backlog_padded(&path, N, 1 << 20)?;
    let text = agent_config(&format!("url = \"{}\"", endpoint.url()), "", "")
        .replace("{dir}/buffer.redb", &path.to_string_lossy());
    let agent = Agent::start(&text)?;
    let events = endpoint.wait_delivered(N as usize, &agent)?;
    edge_tests::check_padded_backlog(&events, N)?;
    let sizes: Vec<usize> = endpoint.requests().iter().map(|r| r.ids.len()).collect();
    ensure!(
        sizes.iter().all(|&n| n <= 4),
        "events per request, with 4 MiB of stored events at most plus the one reaching it: {sizes:?}"
    );
    Ok(())
}
