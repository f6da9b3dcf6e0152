//! The local HTTP server of the built binary: `/metrics` read by the Prometheus project's own
//! parser (Python `prometheus_client`), `/healthz` following the upstream broker, the bearer
//! token, check-config's refusal of an open address without one, a taken port, and the status
//! page in a real headless Chromium.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use edge_tests::{free_port, run_cli, wait_for, Agent, Broker, Collector, Pty, DEADLINE};
use serde_json::Value;

fn config(central: &Broker, sources: &str, control: &str) -> String {
    format!(
        r#"
[site]
id = "dc-http-01"
[storage]
path = "{{dir}}/buffer.redb"
[upstream]
url = "{}"
format = "json"
[[stations]]
id = "pack-01"
role = "packing"
{sources}
[control]
socket = "{{dir}}/control.sock"
{control}
"#,
        central.url()
    )
}

fn serial_source(id: &str, path: &Path) -> String {
    format!(
        "[[sources.serial]]\nid = \"{id}\"\npath = \"{}\"\nbaud = 9600\ndecoder = \"barcode\"\nstation = \"pack-01\"\n",
        path.display()
    )
}

/// An agent whose HTTP server listens on `port` (the test helper turns it off otherwise).
fn start(config: &str, port: u16) -> Result<Agent> {
    let addr = format!("127.0.0.1:{port}");
    Agent::start_with_env(config, &[("EDGE_AGENT__CONTROL__HTTP", addr.as_str())])
}

/// An HTTP answer: status code, headers (names in lower case) and body.
struct Answer {
    code: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {}", self.body))
    }
}

/// `GET path` over HTTP/1.1 with `Connection: close`, with extra header lines.
fn get(port: u16, path: &str, headers: &[&str]) -> Result<Answer> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers in {text:?}"))?;
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok(Answer {
        code,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s
            .split_once("\r\n")
            .ok_or_else(|| anyhow!("bad chunk in {s:?}"))?;
        let n = usize::from_str_radix(size.trim(), 16)?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..n).ok_or_else(|| anyhow!("short chunk"))?);
        s = rest.get(n + 2..).unwrap_or("");
    }
}

/// Waits until the agent answers on `port`.
fn wait_http(agent: &Agent, port: u16) -> Result<()> {
    wait_for("the agent's HTTP server", DEADLINE, || {
        get(port, "/healthz", &[]).ok().map(|_| ())
    })
    .map_err(|e| anyhow!("{e}\nagent log:\n{}", agent.log()))
}

/// The Prometheus text parsed by `prometheus_client` (the Python reference client): each
/// family as `{"name", "type", "samples": [{"name", "labels", "value"}]}`.
fn prometheus_parse(text: &str, open_metrics: bool) -> Result<Vec<Value>> {
    let parser = if open_metrics {
        "prometheus_client.openmetrics.parser"
    } else {
        "prometheus_client.parser"
    };
    let script = format!(
        "import sys, json, math\n\
         from {parser} import text_string_to_metric_families\n\
         out = []\n\
         for f in text_string_to_metric_families(sys.stdin.read()):\n\
         \x20   out.append({{'name': f.name, 'type': f.type, 'samples': [{{'name': s.name, 'labels': s.labels, 'value': (s.value if math.isfinite(s.value) else str(s.value))}} for s in f.samples]}})\n\
         print(json.dumps(out))\n"
    );
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("python3 is needed for the Prometheus parser; run tests/run, which installs it")?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin"))?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "the Prometheus parser refused /metrics (pip install prometheus_client, or run tests/run): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(families: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families
        .iter()
        .flat_map(|f| f["samples"].as_array().into_iter().flatten())
        .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][k] == *v))
        .and_then(|s| s["value"].as_f64())
}

fn family_type<'a>(families: &'a [Value], name: &str) -> Option<&'a str> {
    families
        .iter()
        .find(|f| f["name"] == name)
        .and_then(|f| f["type"].as_str())
}

#[test]
fn metrics_count_each_reading_and_parse_with_the_prometheus_reference_parser() -> Result<()> {
    let central = Broker::start()?;
    let sink = Collector::subscribe(central.port, "edge/#")?;
    let mut pty = Pty::open()?;
    let port = free_port();
    let agent = start(
        &config(&central, &serial_source("scanner-pack-01", &pty.path), ""),
        port,
    )?;
    agent.wait_source("scanner-pack-01", "open")?;
    for i in 0..5 {
        pty.write(format!("00106141412345{i:04}\r\n").as_bytes())?;
    }
    pty.write(b"NOREAD\r\nNOREAD\r\n")?;
    sink.wait_events(7, DEADLINE)?;
    wait_http(&agent, port)?;
    // Delivered counts PUBACKs, which may trail what central already has by a moment.
    let families = wait_for("edge_agent_delivered_total 7", DEADLINE, || {
        let a = get(port, "/metrics", &[]).ok()?;
        let f = prometheus_parse(&a.body, false).ok()?;
        (sample(&f, "edge_agent_delivered_total", &[]) == Some(7.0)).then_some(f)
    })?;
    let scans = sample(
        &families,
        "edge_agent_readings_total",
        &[("source", "scanner-pack-01"), ("kind", "shipment.scan")],
    );
    let exceptions = sample(
        &families,
        "edge_agent_readings_total",
        &[("source", "scanner-pack-01"), ("kind", "exception")],
    );
    ensure!(
        scans == Some(5.0) && exceptions == Some(2.0),
        "{families:#?}"
    );
    let src = [("source", "scanner-pack-01")];
    ensure!(
        sample(
            &families,
            "edge_agent_exceptions_total",
            &[("source", "scanner-pack-01"), ("reason", "no_read")]
        ) == Some(2.0)
    );
    for (name, want) in [
        ("edge_agent_dropped_total", 0.0),
        ("edge_agent_backlog_events", 0.0),
        ("edge_agent_oldest_pending_seconds", 0.0),
        ("edge_agent_upstream_up", 1.0),
        ("edge_agent_config_version", 0.0),
    ] {
        ensure!(
            sample(&families, name, &[]) == Some(want),
            "{name} is {:?}, expected {want}",
            sample(&families, name, &[])
        );
    }
    ensure!(sample(&families, "edge_agent_source_up", &src) == Some(1.0));
    let commits = sample(&families, "edge_agent_commit_duration_seconds_count", &[]);
    ensure!(commits.is_some_and(|n| n >= 1.0), "commits: {commits:?}");
    // The parser names a counter's family without its `_total` suffix.
    for (name, ty) in [
        ("edge_agent_readings", "counter"),
        ("edge_agent_exceptions", "counter"),
        ("edge_agent_delivered", "counter"),
        ("edge_agent_dropped", "counter"),
        ("edge_agent_backlog_events", "gauge"),
        ("edge_agent_commit_duration_seconds", "histogram"),
    ] {
        ensure!(
            family_type(&families, name) == Some(ty),
            "{name}: type {:?}, expected {ty}",
            family_type(&families, name)
        );
    }
    let a = get(port, "/metrics", &[])?;
    ensure!(
        a.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        a.headers
    );
    // A scraper that asks for OpenMetrics gets it, and the strict parser takes it.
    let om = get(
        port,
        "/metrics",
        &["Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5"],
    )?;
    ensure!(om
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/openmetrics-text")));
    let families = prometheus_parse(&om.body, true)?;
    ensure!(
        sample(
            &families,
            "edge_agent_readings_total",
            &[("source", "scanner-pack-01"), ("kind", "shipment.scan")]
        ) == Some(5.0),
        "{families:#?}"
    );
    Ok(())
}

#[test]
fn healthz_says_ok_then_503_naming_upstream_once_central_stays_down_past_the_grace() -> Result<()> {
    let mut central = Broker::start()?;
    let port = free_port();
    let agent = start(&config(&central, "", "health_grace = \"2s\""), port)?;
    wait_http(&agent, port)?;
    wait_for("healthz ok", DEADLINE, || {
        let a = get(port, "/healthz", &[]).ok()?;
        (a.code == 200).then_some(a.json().ok()?)
    })
    .and_then(|v| {
        ensure!(v == serde_json::json!({"status": "ok"}), "{v}");
        Ok(())
    })
    .map_err(|e| anyhow!("{e}\nagent log:\n{}", agent.log()))?;
    central.stop();
    let v = wait_for("healthz 503", DEADLINE, || {
        let a = get(port, "/healthz", &[]).ok()?;
        (a.code == 503).then_some(a.json().ok()?)
    })?;
    ensure!(v["status"] == "unhealthy", "{v}");
    let reasons = v["reasons"].as_array().cloned().unwrap_or_default();
    ensure!(
        reasons.len() == 1
            && reasons[0]
                .as_str()
                .is_some_and(|r| r.starts_with("upstream: not connected for") && r.contains("2s")),
        "{v}"
    );
    // Back within the grace once central returns.
    central.restart()?;
    wait_for("healthz ok again", DEADLINE, || {
        (get(port, "/healthz", &[]).ok()?.code == 200).then_some(())
    })?;
    Ok(())
}

#[test]
fn with_a_token_file_every_request_without_the_bearer_token_gets_401() -> Result<()> {
    let central = Broker::start()?;
    let port = free_port();
    let dir = tempfile::tempdir()?;
    let token = dir.path().join("http.token");
    std::fs::write(&token, "t0ken-of-the-site\n")?;
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let agent = start(
        &config(
            &central,
            "",
            &format!("http_token_file = \"{}\"", token.display()),
        ),
        port,
    )?;
    wait_http(&agent, port)?;
    for path in ["/", "/metrics", "/healthz", "/status.json", "/nowhere"] {
        let a = get(port, path, &[])?;
        ensure!(a.code == 401, "{path} without a token: {}", a.code);
        ensure!(
            a.header("www-authenticate") == Some("Bearer"),
            "{:?}",
            a.headers
        );
        let a = get(port, path, &["Authorization: Bearer not-the-token"])?;
        ensure!(a.code == 401, "{path} with a wrong token: {}", a.code);
    }
    let ok = get(
        port,
        "/status.json",
        &["Authorization: Bearer t0ken-of-the-site"],
    )?;
    ensure!(ok.code == 200, "{}: {}", ok.code, ok.body);
    ensure!(ok.json()?["http"]["listening"] == true, "{}", ok.body);
    let m = get(
        port,
        "/metrics",
        &["Authorization: Bearer t0ken-of-the-site"],
    )?;
    ensure!(m.code == 200 && m.body.contains("edge_agent_upstream_up"));
    Ok(())
}

#[test]
fn check_config_refuses_an_open_address_without_a_token_file_naming_the_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "[site]\nid = \"dc-1\"\n[upstream]\nurl = \"mqtt://127.0.0.1:1883\"\n[control]\nhttp = \"0.0.0.0:9180\"\n",
    )?;
    let (code, out, err) = run_cli(&["check-config", "--config", &path.to_string_lossy()], &[])?;
    let all = format!("{out}{err}");
    ensure!(code == 2, "exit {code}: {all}");
    ensure!(
        all.contains("control.http: 0.0.0.0:9180 is not a loopback address")
            && all.contains("control.http_token_file"),
        "{all}"
    );
    // With a token file it passes.
    let token = dir.path().join("token");
    std::fs::write(&token, "secret\n")?;
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    std::fs::write(
        &path,
        format!(
            "[site]\nid = \"dc-1\"\n[upstream]\nurl = \"mqtt://127.0.0.1:1883\"\n[control]\nhttp = \"0.0.0.0:9180\"\nhttp_token_file = \"{}\"\n",
            token.display()
        ),
    )?;
    let (code, out, err) = run_cli(&["check-config", "--config", &path.to_string_lossy()], &[])?;
    ensure!(code == 0, "exit {code}: {out}{err}");
    Ok(())
}

#[test]
fn a_taken_port_is_logged_once_shown_in_status_and_retried_while_the_agent_delivers() -> Result<()>
{
    let central = Broker::start()?;
    let sink = Collector::subscribe(central.port, "edge/#")?;
    let mut pty = Pty::open()?;
    let port = free_port();
    let holder = std::net::TcpListener::bind(("127.0.0.1", port))?;
    let agent = start(
        &config(&central, &serial_source("scanner-pack-01", &pty.path), ""),
        port,
    )?;
    let s = wait_for(
        "status to show the HTTP server not listening",
        DEADLINE,
        || {
            let s = agent.status().ok()?;
            (s["http"]["listening"] == false).then_some(s)
        },
    )
    .map_err(|e| anyhow!("{e}\nagent log:\n{}", agent.log()))?;
    let error = s["http"]["error"].as_str().unwrap_or("");
    ensure!(
        error.contains(&format!("control.http 127.0.0.1:{port}: cannot listen"))
            && error.contains("set control.http to another port"),
        "{s}"
    );
    agent.wait_source("scanner-pack-01", "open")?;
    pty.write(b"001061414123450001\r\n")?;
    let events = sink.wait_events(1, DEADLINE)?;
    ensure!(events[0]["source"] == "scanner-pack-01", "{}", events[0]);
    // Retried meanwhile (1 s, then 2 s, ...), logged once.
    let logged = agent.log().matches("cannot listen").count();
    ensure!(logged == 1, "logged {logged} times:\n{}", agent.log());
    // Once the port is free, the next try takes it.
    drop(holder);
    wait_http(&agent, port)?;
    let s = agent.status()?;
    ensure!(
        s["http"]["listening"] == true && s["http"]["error"].is_null(),
        "{s}"
    );
    Ok(())
}

/// Debian's `chromium`, headless, with a profile of its own in `profile`.
fn chromium(profile: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .context("running chromium (apt-get install chromium, or run tests/run)")?;
    ensure!(
        out.status.success(),
        "chromium {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where the screenshot is left for a person to look at.
fn screenshot_path() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("http-status-page.png")
}

#[test]
fn the_status_page_in_a_headless_browser_shows_a_retrying_port_with_its_fix_and_a_delivered_readings_source(
) -> Result<()> {
    let central = Broker::start()?;
    let sink = Collector::subscribe(central.port, "edge/#")?;
    let mut pty = Pty::open()?;
    let port = free_port();
    let missing = Path::new("/dev/serial/by-id/usb-missing-scanner-if00");
    let sources = format!(
        "{}{}",
        serial_source("scanner-pack-01", &pty.path),
        serial_source("scanner-dock-03", missing)
    );
    let agent = start(&config(&central, &sources, ""), port)?;
    agent.wait_source("scanner-pack-01", "open")?;
    agent.wait_source("scanner-dock-03", "retrying")?;
    pty.write(b"001061414123450001\r\nNOREAD\r\n")?;
    sink.wait_events(2, DEADLINE)?;
    wait_http(&agent, port)?;
    let url = format!("http://127.0.0.1:{port}/");
    let profile = tempfile::tempdir()?;
    let dom = chromium(profile.path(), &["--dump-dom", &url])?;
    for want in [
        "Site dc-http-01",
        "scanner-dock-03",
        "RETRYING",
        "What to do: check the cable and the path",
        "scanner-pack-01",
        "OPEN",
        "no read",
        "NOREAD",
        "local file",
    ] {
        ensure!(dom.contains(want), "the page has no {want:?}:\n{dom}");
    }
    // The delivered reading's time is on its device's row.
    let status = agent.status()?;
    let last = status["sources"]["scanner-pack-01"]["last_reading_at"]
        .as_str()
        .ok_or_else(|| anyhow!("no last reading in {status}"))?;
    ensure!(
        dom.contains(last),
        "the page lacks the last reading {last}:\n{dom}"
    );
    let shot = screenshot_path();
    if let Some(dir) = shot.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&shot);
    chromium(
        profile.path(),
        &[
            "--window-size=1280,900",
            "--hide-scrollbars",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
    )?;
    let png =
        std::fs::read(&shot).with_context(|| format!("no screenshot at {}", shot.display()))?;
    if !png.starts_with(b"\x89PNG") || png.len() < 10_000 {
        bail!(
            "{} is not a page screenshot ({} bytes)",
            shot.display(),
            png.len()
        );
    }
    eprintln!("status page screenshot: {}", shot.display());
    Ok(())
}
