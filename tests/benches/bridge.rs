//! Side by side (issue 11): the agent against what a site would run instead, a local Mosquitto
//! bridging to central with persistence. Prints a table per side.
//!
//! cargo build --release -p edge-agent && cargo bench -p edge-tests --bench bridge
//!
//! Needs mosquitto and the stock clients (`apt-get install -y mosquitto mosquitto-clients`).
//! `N=30000` readings per phase, `ROUNDS=2` rounds (bridge, agent, bridge, agent, ...; the best
//! round per side and phase is reported), `RECEIVE_MAXIMUM=n` sets the agent's MQTT source
//! window (default: the agent's), `BATCH=n` sets the agent's `upstream.batch` (central then
//! gets JSON arrays; every event in them is counted), `EDGE_AGENT_BIN` the agent binary (default: the release build
//! next to this bench), `SIDES=agent` (or `bridge`) runs one side only, for profiling it
//! (`perf record -a` around the run); no ratios are printed then. `RATE=n` paces the live
//! phase at n readings/s, as a site's devices send (the flood is far above any site's rate):
//! the device is then one MQTT client (rumqttc) publishing reading `i` at `i / n` s, and each
//! side gets its latency from publish to central (median, 99th percentile, worst) and its CPU
//! per reading; the live time ratio means nothing then (both take N / n s). E.g.
//! `RATE=1000 N=10000 ROUNDS=1`.
//!
//! - bridge: device → site mosquitto (persistence, a bridge `connection` to central with
//!   `cleansession false`, `topic bench/scan out 1`, `max_queued_messages 1000000`) → central.
//! - agent: device → site mosquitto → edge-agent (`sources.mqtt`, decoder barcode, format json,
//!   `max_inflight` 200, `replay_rate` 1000000) → central. The agent runs with its systemd
//!   unit's environment (`MALLOC_ARENA_MAX=2`; set it in the bench's environment to override).
//! - every broker: `max_inflight_messages 200` (see `INFLIGHT`).
//!
//! The device is `mosquitto_pub -q 1 -l` (one GS1 SSCC barcode per line, runs of 30,000 lines
//! one after the other, see `FLOOD_CHUNK`), central's consumer
//! `mosquitto_sub -q 1 -c` (a persistent session). Two phases per round, each with a fresh
//! setup per round:
//! - live: the subscriber waits at central; time from the first publish to the last reading
//!   received;
//! - backlog: central is stopped (SIGTERM, it keeps the subscriber's session), N readings are
//!   flooded into the site and wait there (agent: its status shows the backlog; bridge:
//!   mosquitto_pub finished and the site's `$SYS` store count holds them); then central starts
//!   again on its port and the subscriber reconnects. Reported: the time from central's start
//!   to the last reading received, and the drain alone (first to last reading received; the
//!   difference is the reconnect: the bridge retries about every 2 s, the agent backs off
//!   0.5-30 s with jitter).
//!
//! CPU is the whole machine's busy time during the phase (`/proc/stat`: every process and the
//! kernel, both cores), the same window as the time; per round also the agent's own (or the
//! bridging site mosquitto's) from `/proc/PID/stat`. Central's output is only timestamped while
//! the phase runs and parsed after it, so the measuring does not take CPU from what it measures.
//!
//! Peak RSS is VmHWM of the agent process, and of the site mosquitto for the bridge side (the
//! worst round). Duplicates: readings received more than once at central (agent: also how many
//! of them carried an `id` already seen, i.e. upstream resent them).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use edge_tests::{agent_bin, machine_busy_secs, process_cpu_secs, wait_for, Broker, DEADLINE};

const TOPIC: &str = "bench/scan";
const PROBE_TOPIC: &str = "bench/probe";
const PROBE: &str = "__probe__";
const AGENT_EVENTS: &str = "edge/+/events/#";

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Bridge,
    Agent,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Bridge => "bridge",
            Side::Agent => "agent",
        }
    }
}

/// One phase of one round.
#[derive(Clone, Copy, Default)]
struct Phase {
    /// From the first publish (live) or central's start (backlog) to the last reading received.
    secs: f64,
    /// From the first reading received to the last.
    drain_secs: f64,
    /// How long mosquitto_pub took to hand all N to the site broker.
    publish_secs: f64,
    /// VmHWM after the phase, KiB.
    peak_kib: u64,
    /// CPU seconds the whole machine spent in the phase (every process, kernel included).
    machine_cpu: f64,
    /// CPU seconds of the agent (agent side) or the bridging site mosquitto (bridge side).
    own_cpu: f64,
    dupes: u64,
    dupe_ids: u64,
    /// With `RATE` (a paced live phase): each reading's time from its publish at the device to
    /// its arrival at central, ms: median, 99th percentile, worst. Zero otherwise.
    latency_ms: [f64; 3],
}

fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v} is not a number")),
        Err(_) => Ok(default),
    }
}

/// `RECEIVE_MAXIMUM` from the environment, if set.
fn receive_maximum() -> Option<u16> {
    std::env::var("RECEIVE_MAXIMUM").ok()?.parse().ok()
}

/// A GS1-128 SSCC as a scanner sends it: `]C1`, AI `00`, 17 digits and the check digit.
fn sscc(tag: u32, i: usize) -> String {
    let digits = format!("01061414{tag}{i:08}");
    debug_assert_eq!(digits.len(), 17);
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(k, d)| u32::from(d - b'0') * if k % 2 == 0 { 3 } else { 1 })
        .sum();
    format!("]C100{digits}{}", (10 - sum % 10) % 10)
}

/// What every reading of a phase starts with.
fn prefix(tag: u32) -> String {
    format!("]C10001061414{tag}")
}

/// A child process killed on drop.
struct Guard(Option<Child>, &'static str);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_client(cmd: &mut Command, what: &'static str) -> Result<Child> {
    cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!("{what} is missing: apt-get install -y mosquitto-clients")
        } else {
            anyhow!("starting {what}: {e}")
        }
    })
}

/// What central's subscriber saw. The reader thread only keeps each line with its arrival
/// time and counts events cheaply; lines are parsed once the count says all may be there, so
/// that parsing the agent's JSON events does not take CPU from the processes being measured
/// (the bridge side's lines are the bare readings).
#[derive(Default)]
struct Seen {
    lines: Vec<(Instant, String)>,
    /// Events in `lines` (an array counts each of its events), duplicates included.
    arrived: usize,
    /// `lines[..parsed]` are in the fields below.
    parsed: usize,
    readings: HashSet<String>,
    ids: HashSet<String>,
    total: u64,
    dupes: u64,
    dupe_ids: u64,
    /// Messages that are not this phase's readings (a resend from an earlier phase, another
    /// kind of event); should stay 0.
    strays: u64,
    probes: u64,
    first: Option<Instant>,
    last_new: Option<Instant>,
    /// Each reading's first arrival.
    arrivals: HashMap<String, Instant>,
}

impl Seen {
    /// Events in one line: one per `"kind":` of an agent event (or array of them), one per
    /// bridge line.
    fn count(side: Side, line: &str) -> usize {
        match side {
            Side::Bridge => 1,
            Side::Agent => line.matches("\"kind\":").count().max(1),
        }
    }

    /// Parses the lines that arrived since the last call.
    fn digest(&mut self, side: Side, want: &str) {
        let lines = std::mem::take(&mut self.lines);
        for (at, line) in &lines[self.parsed..] {
            self.take(side, want, *at, line);
        }
        self.parsed = lines.len();
        self.lines = lines;
    }

    fn take(&mut self, side: Side, want: &str, now: Instant, line: &str) {
        // One message: a reading (bridge), an event, or an array of events (`upstream.batch`).
        let found: Vec<(Option<String>, Option<String>)> = match side {
            Side::Bridge => vec![(Some(line.to_string()), None)],
            Side::Agent => {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or(serde_json::Value::Null);
                let events = match v {
                    serde_json::Value::Array(a) => a,
                    one => vec![one],
                };
                events
                    .iter()
                    .map(|v| {
                        let raw = v["raw"]
                            .as_str()
                            .and_then(|r| base64::engine::general_purpose::STANDARD.decode(r).ok());
                        let ok = v["kind"] == "shipment.scan";
                        (
                            raw.filter(|_| ok)
                                .map(|r| String::from_utf8_lossy(&r).into_owned()),
                            v["id"].as_str().map(str::to_string),
                        )
                    })
                    .collect()
            }
        };
        for (reading, id) in found {
            self.total += 1;
            match reading {
                Some(r) if r.starts_with(want) => {
                    self.first.get_or_insert(now);
                    if self.readings.insert(r.clone()) {
                        self.arrivals.insert(r, now);
                        self.last_new = Some(now);
                    } else {
                        self.dupes += 1;
                    }
                    if let Some(id) = id {
                        if !self.ids.insert(id) {
                            self.dupe_ids += 1;
                        }
                    }
                }
                _ => self.strays += 1,
            }
        }
    }
}

/// `mosquitto_sub -q 1 -c` at central, counting this phase's readings.
struct Sub {
    seen: Arc<Mutex<Seen>>,
    child: Guard,
    stderr: PathBuf,
    side: Side,
    tag: u32,
    want: String,
}

impl Sub {
    fn start(port: u16, side: Side, client_id: &str, tag: u32, dir: &Path) -> Result<Sub> {
        let topic = match side {
            Side::Bridge => TOPIC,
            Side::Agent => AGENT_EVENTS,
        };
        let stderr = dir.join(format!("{client_id}.sub.err"));
        let mut child = spawn_client(
            Command::new("mosquitto_sub")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-c"])
                .args(["-i", client_id, "-t", topic, "-t", PROBE_TOPIC])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&stderr)?),
            "mosquitto_sub",
        )?;
        let out = child.stdout.take().context("mosquitto_sub's stdout")?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let now = Instant::now();
                let Ok(mut g) = s.lock() else { break };
                if line == PROBE {
                    g.probes += 1;
                    continue;
                }
                g.arrived += Seen::count(side, &line);
                g.lines.push((now, line));
            }
        });
        Ok(Sub {
            seen,
            child: Guard(Some(child), "mosquitto_sub"),
            stderr,
            side,
            tag,
            want: prefix(tag),
        })
    }

    /// Publishes probes on central until the subscriber prints one: it is subscribed.
    fn wait_subscribed(&self, port: u16) -> Result<()> {
        let start = Instant::now();
        loop {
            let out = Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
                .args(["-t", PROBE_TOPIC, "-m", PROBE])
                .output()
                .map_err(|e| anyhow!("mosquitto_pub: {e}; apt-get install -y mosquitto-clients"))?;
            if !out.status.success() {
                bail!(
                    "mosquitto_pub of a probe to central failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let seen = wait_for("a probe", Duration::from_millis(500), || {
                (self.seen.lock().ok()?.probes > 0).then_some(())
            });
            if seen.is_ok() {
                return Ok(());
            }
            if start.elapsed() > DEADLINE {
                bail!(
                    "central's mosquitto_sub did not subscribe within {DEADLINE:?}: {}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
        }
    }

    /// Waits until all `n` readings arrived (failing if none came for 60 s), then a moment
    /// more for late duplicates. Returns (first, last new) arrival, and the CPU counters read
    /// as soon as every reading had arrived (before parsing them).
    fn wait_all(&self, n: usize, what: &str, pid: u32) -> Result<(Instant, Instant, Cpu)> {
        let mut count = 0;
        let mut progress = Instant::now();
        let cpu = loop {
            {
                let mut g = self.seen.lock().map_err(|_| anyhow!("poisoned"))?;
                if g.arrived >= n {
                    let cpu = Cpu::now(pid);
                    g.digest(self.side, &self.want);
                    if g.readings.len() >= n {
                        break cpu;
                    }
                }
                if g.arrived > count {
                    count = g.arrived;
                    progress = Instant::now();
                }
            }
            if progress.elapsed() > Duration::from_secs(60) {
                let mut g = self.seen.lock().map_err(|_| anyhow!("poisoned"))?;
                g.digest(self.side, &self.want);
                bail!(
                    "{what}: central received {} of {n} readings ({} messages, {} strays) and nothing new for 60 s; mosquitto_sub: {}",
                    g.readings.len(),
                    g.total,
                    g.strays,
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        std::thread::sleep(Duration::from_millis(500));
        let mut g = self.seen.lock().map_err(|_| anyhow!("poisoned"))?;
        g.digest(self.side, &self.want);
        if g.strays > 0 {
            eprintln!(
                "  {what}: {} messages at central were not this phase's readings",
                g.strays
            );
        }
        Ok((
            g.first.context("no first arrival")?,
            g.last_new.context("no last arrival")?,
            cpu,
        ))
    }

    fn counts(&self) -> (u64, u64) {
        self.seen
            .lock()
            .map(|g| (g.dupes, g.dupe_ids))
            .unwrap_or_default()
    }

    /// Waits for all `n` readings and measures the phase that started at `t0` (with the CPU
    /// counters `cpu0` read then); stops.
    fn finish(
        self,
        n: usize,
        what: &str,
        (t0, cpu0): (Instant, Cpu),
        device: Device,
        pid: u32,
    ) -> Result<Phase> {
        let (first, last, cpu) = self.wait_all(n, what, pid)?;
        let (dupes, dupe_ids) = self.counts();
        let latency_ms = match &device.sent {
            Some(sent) => self.latency_ms(sent)?,
            None => [0.0; 3],
        };
        let publish_secs = device.secs;
        let phase = Phase {
            secs: (last - t0).as_secs_f64(),
            drain_secs: (last - first).as_secs_f64(),
            publish_secs,
            peak_kib: hwm_kib(pid),
            machine_cpu: cpu.machine - cpu0.machine,
            own_cpu: cpu.own - cpu0.own,
            dupes,
            dupe_ids,
            latency_ms,
        };
        self.stop();
        Ok(phase)
    }

    /// Median, 99th percentile and worst of each reading's time from `sent[i]` (reading `i`
    /// published) to its first arrival here, ms.
    fn latency_ms(&self, sent: &[Instant]) -> Result<[f64; 3]> {
        let g = self.seen.lock().map_err(|_| anyhow!("poisoned"))?;
        let mut ms = Vec::with_capacity(sent.len());
        for (i, t) in sent.iter().enumerate() {
            let at = g
                .arrivals
                .get(&sscc(self.tag, i))
                .with_context(|| format!("reading {i} never arrived"))?;
            ms.push(at.saturating_duration_since(*t).as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: usize| ms.get((ms.len() * q / 100).min(ms.len().saturating_sub(1)));
        Ok([
            at(50).copied().unwrap_or(0.0),
            at(99).copied().unwrap_or(0.0),
            ms.last().copied().unwrap_or(0.0),
        ])
    }

    fn stop(self) {
        drop(self.child);
    }
}

/// `edge-agent run` with its own temp dir and control socket; killed on drop. (Not the
/// library's `Agent`: that one passes settings only newer binaries know, and this bench also
/// measures binaries built from older commits.)
struct AgentProc {
    dir: tempfile::TempDir,
    child: Guard,
}

impl AgentProc {
    fn start(config: &str) -> Result<AgentProc> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            config.replace("{dir}", &dir.path().display().to_string()),
        )?;
        let child = Command::new(agent_bin())
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .envs(edge_tests::unit_environment())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("agent.log"))?)
            .spawn()
            .with_context(|| format!("starting {}", agent_bin().display()))?;
        Ok(AgentProc {
            dir,
            child: Guard(Some(child), "edge-agent"),
        })
    }

    fn pid(&self) -> u32 {
        self.child.0.as_ref().map_or(0, |c| c.id())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// `{"cmd":"status"}` over the control socket.
    fn status(&self) -> Result<serde_json::Value> {
        let mut s = std::os::unix::net::UnixStream::connect(self.dir.path().join("control.sock"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"{\"cmd\":\"status\"}\n")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(serde_json::from_str(&line)?)
    }

    /// Waits for the status to satisfy `cond`, failing with the agent's log.
    fn wait(
        &mut self,
        what: &str,
        deadline: Duration,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<()> {
        let mut last = None;
        let r = wait_for(what, deadline, || {
            if let Some(c) = self.child.0.as_mut() {
                if let Ok(Some(exit)) = c.try_wait() {
                    return Some(Err(anyhow!("edge-agent exited ({exit})")));
                }
            }
            let s = self.status().ok()?;
            let ok = cond(&s);
            last = Some(s);
            ok.then_some(Ok(()))
        });
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) | Err(e) => bail!(
                "{what}: {e}\nlast status: {}\nagent log:\n{}",
                last.map(|s| s.to_string()).unwrap_or_default(),
                self.log()
            ),
        }
    }
}

/// Lines per `mosquitto_pub -l` run. mosquitto_pub 2.0.11 publishes QoS 1 lines without waiting
/// for their PUBACKs; past about 65,000 in flight it runs out of packet identifiers and the
/// broker drops it ("disconnected due to out of memory" after 34,000-odd of 100,000), so a
/// larger N is published by several runs one after the other.
const FLOOD_CHUNK: usize = 30_000;

/// Writes N readings, one per line, for `mosquitto_pub -l`: one file per `FLOOD_CHUNK`.
fn readings_files(dir: &Path, n: usize, tag: u32) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for (k, start) in (0..n).step_by(FLOOD_CHUNK).enumerate() {
        let path = dir.join(format!("readings-{tag}-{k}.txt"));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        for i in start..(start + FLOOD_CHUNK).min(n) {
            writeln!(f, "{}", sscc(tag, i))?;
        }
        f.flush()?;
        files.push(path);
    }
    Ok(files)
}

/// How a phase's readings were published.
struct Device {
    /// How long the device took to hand all N to the site broker (each acknowledged).
    secs: f64,
    /// Paced (`RATE`): when each reading was published.
    sent: Option<Vec<Instant>>,
}

/// The device flooding: `mosquitto_pub -q 1 -l` fed each file in turn. Returns once it has
/// published every line (each acknowledged by the site broker).
fn flood(site: u16, files: &[PathBuf], dir: &Path) -> Result<Device> {
    let start = Instant::now();
    for file in files {
        publish_file(site, file, dir)?;
    }
    Ok(Device {
        secs: start.elapsed().as_secs_f64(),
        sent: None,
    })
}

/// The device at a site's pace: reading `i` of `tag` published (QoS 1) `i / rate` seconds after
/// the start, by one MQTT client, noting when; returns once the site acknowledged them all.
fn paced(site: u16, n: usize, tag: u32, rate: usize) -> Result<Device> {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    let mut opts = rumqttc::MqttOptions::new("bench-device", "127.0.0.1", site);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut conn) = rumqttc::Client::new(opts, 1000);
    let acked = Arc::new(AtomicUsize::new(0));
    let driver = {
        let acked = acked.clone();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        acked.fetch_add(1, Relaxed);
                    }
                    Ok(_) => {}
                    // Disconnected: at the end, or the bench fails on the count below.
                    Err(_) => break,
                }
            }
        })
    };
    let start = Instant::now();
    let mut sent = Vec::with_capacity(n);
    for i in 0..n {
        let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        sent.push(Instant::now());
        client.publish(TOPIC, rumqttc::QoS::AtLeastOnce, false, sscc(tag, i))?;
    }
    let mut last = 0;
    wait_for(
        "the site to acknowledge every paced reading",
        DEADLINE,
        || {
            last = acked.load(Relaxed);
            (last >= n).then_some(())
        },
    )
    .map_err(|e| anyhow!("{e}: {last} of {n}"))?;
    let secs = start.elapsed().as_secs_f64();
    let _ = client.disconnect();
    let _ = driver.join();
    Ok(Device {
        secs,
        sent: Some(sent),
    })
}

/// One `mosquitto_pub -q 1 -l` run over one file, to its end.
fn publish_file(site: u16, file: &Path, dir: &Path) -> Result<()> {
    let err = dir.join("pub.err");
    let mut child = Guard(
        Some(spawn_client(
            Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &site.to_string(), "-q", "1"])
                .args(["-i", "bench-device", "-t", TOPIC, "-l"])
                .stdin(std::fs::File::open(file)?)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&err)?),
            "mosquitto_pub",
        )?),
        "mosquitto_pub",
    );
    let c = child.0.as_mut().context("mosquitto_pub")?;
    let status = wait_for("mosquitto_pub to finish", Duration::from_secs(600), || {
        c.try_wait().ok().flatten()
    })?;
    if !status.success() {
        bail!(
            "{}: mosquitto_pub exited {status}: {}",
            child.1,
            std::fs::read_to_string(&err).unwrap_or_default()
        );
    }
    Ok(())
}

/// Peak resident set size (VmHWM) of a process in KiB.
fn hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU counters: the whole machine's busy time and one process's, in seconds.
#[derive(Clone, Copy, Default)]
struct Cpu {
    machine: f64,
    own: f64,
}

impl Cpu {
    fn now(pid: u32) -> Cpu {
        Cpu {
            machine: machine_busy_secs(),
            own: process_cpu_secs(pid),
        }
    }
}

/// The site mosquitto's `$SYS/broker/store/messages/count` (published every second).
fn store_count(port: u16) -> Option<u64> {
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-C",
            "1",
            "-W",
            "3",
        ])
        .args(["-t", "$SYS/broker/store/messages/count"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn agent_config(site: &Broker, central: &Broker) -> String {
    format!(
        r#"
[site]
id = "dc-bench"
[storage]
path = "{{dir}}/buffer.redb"
[upstream]
url = "{}"
format = "json"
max_inflight = 200
replay_rate = 1000000
{batch}
[[stations]]
id = "pack-01"
role = "packing"
[[sources.mqtt]]
id = "scanner"
url = "{}"
topics = ["{TOPIC}"]
decoder = "barcode"
station = "pack-01"
{window}
[control]
socket = "{{dir}}/control.sock"
"#,
        central.url(),
        site.url(),
        batch = std::env::var("BATCH")
            .ok()
            .and_then(|b| b.parse::<u16>().ok())
            .map(|b| format!("batch = {b}"))
            .unwrap_or_default(),
        window = receive_maximum()
            .map(|n| format!("receive_maximum = {n}"))
            .unwrap_or_default()
    )
}

/// Every broker of both sides takes and sends 200 QoS 1 messages unacknowledged (the test
/// brokers' 20 would cap the bridge at 20 in flight to central, and the agent at 18: it keeps
/// below central's Receive Maximum), as `max_inflight` 200 does for the agent.
const INFLIGHT: &str = "max_inflight_messages 200\n";

/// The site broker of the bridge side: a bridge to central, everything queued while it is away.
/// `restart_timeout 1 1`: it tries central again about every 2 s (mosquitto 2.0.11 with a single
/// value, or its default backoff, waits 7-30 s).
fn bridge_config(central: u16, round: usize) -> String {
    format!(
        "{INFLIGHT}sys_interval 1\n\
         connection central\n\
         address 127.0.0.1:{central}\n\
         clientid site-bridge-{round}\n\
         cleansession false\n\
         topic {TOPIC} out 1\n\
         restart_timeout 1 1\n"
    )
}

/// One round of one side: (live, backlog).
fn round(side: Side, round: usize, n: usize, rate: usize) -> Result<(Phase, Phase)> {
    let dir = tempfile::tempdir()?;
    let live_tag = (round * 2 % 10) as u32;
    let backlog_tag = ((round * 2 + 1) % 10) as u32;
    let live_files = readings_files(dir.path(), n, live_tag)?;
    let backlog_files = readings_files(dir.path(), n, backlog_tag)?;

    let mut central = Broker::start_with(INFLIGHT).context("starting central's mosquitto")?;
    let site = match side {
        Side::Bridge => Broker::start_with(&bridge_config(central.port, round)),
        Side::Agent => Broker::start_with(INFLIGHT),
    }
    .context("starting the site's mosquitto")?;
    let mut agent = match side {
        Side::Agent => {
            let mut a = AgentProc::start(&agent_config(&site, &central))?;
            a.wait("the agent's source and uplink", DEADLINE, |s| {
                s["sources"]["scanner"]["state"] == "open" && s["upstream"]["connected"] == true
            })?;
            Some(a)
        }
        Side::Bridge => {
            wait_for("the bridge to connect to central", DEADLINE, || {
                std::fs::read_to_string(central.log_path())
                    .ok()?
                    .contains(&format!("site-bridge-{round}"))
                    .then_some(())
            })
            .map_err(|e| anyhow!("{e}\nsite log:\n{}", site.log()))?;
            None
        }
    };
    let pid = match &agent {
        Some(a) => a.pid(),
        None => site.pid().unwrap_or(0),
    };
    let sub_id = format!("central-consumer-{}-{round}", side.name());
    let what = |phase: &str| format!("{} round {} {phase}", side.name(), round + 1);

    // Live.
    let sub = Sub::start(central.port, side, &sub_id, live_tag, dir.path())?;
    sub.wait_subscribed(central.port)?;
    let t0 = (Instant::now(), Cpu::now(pid));
    let device = match rate {
        0 => flood(site.port, &live_files, dir.path())?,
        r => paced(site.port, n, live_tag, r)?,
    };
    let live = sub.finish(n, &what("live"), t0, device, pid)?;
    if let Some(a) = agent.as_mut() {
        a.wait("the live backlog to clear", DEADLINE, |s| s["backlog"] == 0)?;
    }

    // Backlog: central away while N readings arrive at the site.
    central.stop();
    let device = flood(site.port, &backlog_files, dir.path())?;
    match agent.as_mut() {
        Some(a) => a.wait(
            "the agent to store the backlog",
            Duration::from_secs(600),
            |s| s["backlog"].as_u64().is_some_and(|b| b >= n as u64),
        )?,
        None => {
            // mosquitto_pub finished: the site acknowledged every reading, each queued for the
            // bridge. $SYS confirms it (every second).
            let mut last = None;
            wait_for("the site's $SYS store count to reach N", DEADLINE, || {
                last = store_count(site.port);
                (last? >= n as u64).then_some(())
            })
            .map_err(|e| anyhow!("{e}; last count {last:?}"))?;
        }
    }
    let t0 = (Instant::now(), Cpu::now(pid));
    central.restart().context("restarting central")?;
    let sub = Sub::start(central.port, side, &sub_id, backlog_tag, dir.path())?;
    let backlog = sub.finish(n, &what("backlog"), t0, device, pid)?;
    Ok((live, backlog))
}

fn print_round(side: Side, r: usize, n: usize, live: &Phase, backlog: &Phase) {
    for (name, p) in [("live", live), ("backlog", backlog)] {
        println!(
            "  round {} {:<6} {:<7} {:>7.2} s  {:>7.0} events/s  drain {:>6.2} s ({:>6.0}/s)  publish {:>5.2} s  CPU {:>5.2} s ({} {:>4.2} s)  peak RSS {:>5.1} MiB  dupes {}",
            r + 1,
            side.name(),
            name,
            p.secs,
            n as f64 / p.secs,
            p.drain_secs,
            n as f64 / p.drain_secs,
            p.publish_secs,
            p.machine_cpu,
            own_name(side),
            p.own_cpu,
            p.peak_kib as f64 / 1024.0,
            p.dupes
        );
        if p.latency_ms[2] > 0.0 {
            let [p50, p99, max] = p.latency_ms;
            println!("           latency p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms");
        }
    }
}

/// Whose CPU the "own" figure is.
fn own_name(side: Side) -> &'static str {
    match side {
        Side::Bridge => "site",
        Side::Agent => "agent",
    }
}

/// The best round's time per phase, the worst peak RSS, all duplicates.
fn best(rounds: &[(Phase, Phase)]) -> (Phase, Phase) {
    let pick = |f: fn(&(Phase, Phase)) -> Phase| {
        let phases: Vec<Phase> = rounds.iter().map(f).collect();
        Phase {
            secs: phases.iter().map(|p| p.secs).fold(f64::MAX, f64::min),
            drain_secs: phases.iter().map(|p| p.drain_secs).fold(f64::MAX, f64::min),
            publish_secs: phases
                .iter()
                .map(|p| p.publish_secs)
                .fold(f64::MAX, f64::min),
            peak_kib: phases.iter().map(|p| p.peak_kib).max().unwrap_or(0),
            machine_cpu: phases
                .iter()
                .map(|p| p.machine_cpu)
                .fold(f64::MAX, f64::min),
            own_cpu: phases.iter().map(|p| p.own_cpu).fold(f64::MAX, f64::min),
            dupes: phases.iter().map(|p| p.dupes).sum(),
            dupe_ids: phases.iter().map(|p| p.dupe_ids).sum(),
            latency_ms: std::array::from_fn(|k| {
                phases
                    .iter()
                    .map(|p| p.latency_ms[k])
                    .fold(f64::MAX, f64::min)
            }),
        }
    };
    (pick(|r| r.0), pick(|r| r.1))
}

fn main() -> Result<()> {
    let n = env_usize("N", 30_000)?;
    let rounds = env_usize("ROUNDS", 2)?.max(1);
    let rate = env_usize("RATE", 0)?;
    let bin = agent_bin();
    if !bin.exists() {
        bail!(
            "{} is missing: cargo build --release -p edge-agent",
            bin.display()
        );
    }
    for tool in ["mosquitto_pub", "mosquitto_sub"] {
        spawn_client(
            Command::new(tool)
                .arg("--help")
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            tool,
        )?
        .wait()?;
    }
    println!(
        "agent vs mosquitto bridge: {n} readings per phase, {rounds} round(s), QoS 1, agent receive_maximum {}, agent {} with {:?} (its systemd unit's environment)",
        receive_maximum().map_or("default".into(), |n| n.to_string()),
        bin.display(),
        edge_tests::unit_environment()
    );
    let sides = std::env::var("SIDES").unwrap_or_else(|_| "bridge,agent".into());
    let mut results: Vec<(Side, Vec<(Phase, Phase)>)> = [Side::Bridge, Side::Agent]
        .into_iter()
        .filter(|s| sides.split(',').any(|n| n.trim() == s.name()))
        .map(|s| (s, Vec::new()))
        .collect();
    if results.is_empty() {
        bail!("SIDES={sides}: name bridge, agent or both (comma-separated)");
    }
    for r in 0..rounds {
        for (side, got) in results.iter_mut() {
            let (live, backlog) = round(*side, r, n, rate)
                .with_context(|| format!("{} side, round {}", side.name(), r + 1))?;
            print_round(*side, r, n, &live, &backlog);
            got.push((live, backlog));
        }
    }

    println!();
    println!(
        "best of {rounds} round(s), {n} readings; backlog: from central's restart (drain: from the first reading received)"
    );
    println!(
        "{:<7} {:<8} {:>9} {:>10} {:>9} {:>10} {:>9} {:>10} {:>13} {:>7}",
        "side",
        "phase",
        "seconds",
        "events/s",
        "drain s",
        "drain ev/s",
        "CPU s",
        "CPU us/ev",
        "peak RSS MiB",
        "dupes"
    );
    let mut best_of = Vec::new();
    for (side, got) in &results {
        let (live, backlog) = best(got);
        for (name, p) in [("live", &live), ("backlog", &backlog)] {
            println!(
                "{:<7} {:<8} {:>9.2} {:>10.0} {:>9.2} {:>10.0} {:>9.2} {:>10.1} {:>13.1} {:>7}",
                side.name(),
                name,
                p.secs,
                n as f64 / p.secs,
                p.drain_secs,
                n as f64 / p.drain_secs,
                p.machine_cpu,
                p.machine_cpu * 1e6 / n as f64,
                p.peak_kib as f64 / 1024.0,
                if *side == Side::Agent {
                    format!("{} ({} same id)", p.dupes, p.dupe_ids)
                } else {
                    p.dupes.to_string()
                }
            );
        }
        best_of.push((live, backlog));
    }
    if rate > 0 {
        println!("live phase paced at {rate} readings/s: latency from the device's publish to central's subscriber (best round)");
        for ((side, _), (live, _)) in results.iter().zip(&best_of) {
            let [p50, p99, max] = live.latency_ms;
            println!(
                "{:<7} p50 {p50:>7.2} ms   p99 {p99:>7.2} ms   max {max:>7.2} ms   CPU per reading: machine {:>5.1} us, {} {:>5.1} us",
                side.name(),
                live.machine_cpu * 1e6 / n as f64,
                own_name(*side),
                live.own_cpu * 1e6 / n as f64
            );
        }
    }
    let [b, a] = best_of.as_slice() else {
        return Ok(());
    };
    println!(
        "time ratio agent/bridge: live {:.2}, backlog {:.2} (drain alone {:.2})",
        a.0.secs / b.0.secs,
        a.1.secs / b.1.secs,
        a.1.drain_secs / b.1.drain_secs
    );
    println!(
        "CPU (whole machine) ratio agent/bridge: live {:.2}, backlog {:.2}; the agent's own CPU per reading: live {:.1} us, backlog {:.1} us",
        a.0.machine_cpu / b.0.machine_cpu,
        a.1.machine_cpu / b.1.machine_cpu,
        a.0.own_cpu * 1e6 / n as f64,
        a.1.own_cpu * 1e6 / n as f64
    );
    Ok(())
}
