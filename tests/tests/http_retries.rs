//! The HTTP upstream's retries end to end, beyond tests/tests/http_upstream.rs: a Retry-After
//! given as an HTTP-date; a 401 (retried whole, never split, named in status; a fixed token
//! file used without a restart); a connection closed without an answer, 429, 408 and 500,
//! with one request at a time. The built binary against the test endpoint process
//! (`tests/http-endpoint/endpoint.py`), readings from a serial pty.

use std::os::unix::fs::PermissionsExt;

use anyhow::{anyhow, ensure, Result};
use edge_tests::endpoint::{
    agent_config, check_scans, serial_source, write_scans, Endpoint, Request,
};
use edge_tests::{wait_for, Agent, Pty, DEADLINE};
use serde_json::{json, Value};

/// `n` readings buffered while the endpoint is down: they go out as one batch once it starts.
fn buffered(endpoint: &Endpoint, n: usize, more: &str) -> Result<(Agent, Pty)> {
    let mut pty = Pty::open()?;
    let agent = Agent::start(&agent_config(
        &format!("url = \"{}\"\nreplay_rate = 100000\n{more}", endpoint.url()),
        &serial_source(&pty),
        "",
    ))?;
    agent.wait_source("scanner-pack-01", "open")?;
    write_scans(&mut pty, 0..n)?;
    wait_for(&format!("{n} events buffered"), DEADLINE, || {
        (agent.status().ok()?["backlog"] == n as u64).then_some(())
    })
    .map_err(|e| anyhow!("{e}\n{}", agent.log()))?;
    Ok((agent, pty))
}

/// What the endpoint answered, for failure messages.
fn answers(requests: &[Request]) -> Vec<String> {
    requests
        .iter()
        .map(|r| format!("{} ({} events)", r.status, r.ids.len()))
        .collect()
}

#[test]
fn a_retry_after_given_as_an_http_date_holds_the_next_request_back_until_that_time() -> Result<()> {
    let mut endpoint = Endpoint::new(None)?;
    // Retry-After: an HTTP-date 3 s after the next whole second.
    endpoint.set_script(&json!({"respond": [{"status": 429, "retry_after_date": 3}]}))?;
    let (agent, _pty) = buffered(&endpoint, 20, "")?;
    endpoint.start()?;
    let events = endpoint.wait_delivered(20, &agent)?;
    check_scans(&events, 20)?;
    let requests = endpoint.requests();
    ensure!(
        requests.first().is_some_and(|r| r.status == 429),
        "answers: {:?}",
        answers(&requests)
    );
    let answered = requests[0]
        .answered
        .ok_or_else(|| anyhow!("the 429 has no answer time"))?;
    // The date is at least floor(answered) + 3 (seconds resolution): no earlier request.
    let until = answered.floor() + 3.0;
    let again = &requests[1];
    ensure!(
        again.time >= until,
        "the next request came at {:.3}, {:.3} s before the Retry-After date {until}",
        again.time,
        until - again.time
    );
    ensure!(
        again.ids.starts_with(&requests[0].ids),
        "the retry does not start with the refused batch"
    );
    Ok(())
}

/// An agent whose token file holds a token the endpoint does not take (it wants
/// `the-right-one`), with 20 readings buffered and the endpoint started; returns once it
/// answered 401 three times.
fn refused_with_401(
    endpoint: &mut Endpoint,
) -> Result<(Agent, Pty, tempfile::TempDir, Vec<Request>)> {
    endpoint.set_script(&json!({"token": "the-right-one"}))?;
    let secrets = tempfile::tempdir()?;
    let token = secrets.path().join("token");
    std::fs::write(&token, "a-stale-one\n")?;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))?;
    let (agent, pty) = buffered(
        endpoint,
        20,
        &format!("token_file = \"{}\"", token.display()),
    )?;
    endpoint.start()?;
    let refused = wait_for("three 401s", DEADLINE, || {
        let r = endpoint.requests();
        (r.len() >= 3).then_some(r)
    })
    .map_err(|e| anyhow!("{e}\n{}", agent.log()))?;
    Ok((agent, pty, secrets, refused))
}

#[test]
fn a_401_is_retried_whole_never_split_and_named_in_status() -> Result<()> {
    let mut endpoint = Endpoint::new(None)?;
    let (agent, _pty, _secrets, refused) = refused_with_401(&mut endpoint)?;
    for r in &refused {
        ensure!(
            r.status == 401 && r.header("authorization") == "Bearer a-stale-one",
            "answers: {:?}",
            answers(&refused)
        );
        ensure!(
            r.ids == refused[0].ids && r.ids.len() == 20,
            "a 401 split or changed the batch: {:?}",
            answers(&refused)
        );
    }
    let status = wait_for("status to name the 401", DEADLINE, || {
        let s = agent.status().ok()?;
        let detail = s["upstream"]["detail"].as_str()?;
        (s["upstream"]["connected"] == false && detail.contains("401")).then_some(s)
    })
    .map_err(|e| anyhow!("{e}; status {:?}", agent.status().ok()))?;
    let detail = status["upstream"]["detail"].as_str().unwrap_or("");
    ensure!(
        detail.contains(&endpoint.url()) && detail.contains("upstream.token_file"),
        "status names the endpoint and what to check: {detail}"
    );
    ensure!(
        status["upstream"]["rejected"] == 0
            && status["storage"]["set_aside"] == 0
            && status["backlog"] == 20,
        "a 401 sets nothing aside: {status}"
    );
    Ok(())
}

/// Failed against the agent of "Upstream over HTTP" (6c7f1e3): the token file is read when a
/// connection opens, and the endpoint keeps the connection open after a 401 (as HTTP/1.1
/// servers do), so the agent sent the stale token until it restarted. The agent now closes
/// the connection after a 401, 403 or 407.
#[test]
fn a_token_file_fixed_after_a_401_is_used_by_the_next_attempt() -> Result<()> {
    let mut endpoint = Endpoint::new(None)?;
    let (agent, _pty, secrets, refused) = refused_with_401(&mut endpoint)?;
    // The operator fixes the token file, and does not restart the agent.
    std::fs::write(secrets.path().join("token"), "the-right-one\n")?;
    let events = endpoint.wait_delivered(20, &agent).map_err(|e| {
        let requests = endpoint.requests();
        let last: Vec<String> = requests
            .iter()
            .rev()
            .take(3)
            .map(|r| format!("{} with {:?}", r.status, r.header("authorization")))
            .collect();
        anyhow!(
            "{e}\n{} requests after the token file was fixed, the last ones answered {last:?}",
            requests.len() - refused.len()
        )
    })?;
    check_scans(&events, 20)?;
    Ok(())
}

#[test]
fn a_dropped_connection_429_408_and_500_are_retried_one_request_at_a_time_and_lose_nothing(
) -> Result<()> {
    const N: usize = 300;
    let mut endpoint = Endpoint::new(None)?;
    endpoint.set_script(&json!({"respond": [
        {"close": true}, {"status": 429}, {"status": 408}, {"status": 500}
    ]}))?;
    let (agent, mut pty) = buffered(&endpoint, 150, "")?;
    endpoint.start()?;
    // More arrive while the retries go on.
    write_scans(&mut pty, 150..N)?;
    let events = endpoint.wait_delivered(N, &agent)?;
    check_scans(&events, N)?;
    let requests = endpoint.requests();
    let statuses: Vec<&Value> = requests.iter().take(4).map(|r| &r.status).collect();
    ensure!(
        statuses == [&json!("closed"), &json!(429), &json!(408), &json!(500)],
        "answers: {:?}",
        answers(&requests)
    );
    for w in requests.windows(2).take(4) {
        ensure!(
            w[1].ids.starts_with(&w[0].ids),
            "a retry does not start with the batch that was not taken: {:?} then {:?}",
            w[0].ids,
            w[1].ids
        );
    }
    ensure!(
        requests.iter().all(|r| r.ids.len() <= 100),
        "a request above the default batch of 100: {:?}",
        answers(&requests)
    );
    // One request at a time: none starts before the previous one was answered.
    for w in requests.windows(2) {
        if let Some(answered) = w[0].answered {
            ensure!(
                w[1].time >= answered,
                "a request at {} while the one before waited for its answer (until {answered})",
                w[1].time
            );
        }
    }
    Ok(())
}
