//! Helpers for the end-to-end tests: the built `edge-agent` binary, a real mosquitto broker on
//! a loopback port, real pseudo-terminals, and an MQTT client that collects what central sees.
//!
//! Every wait polls a condition with a deadline; nothing sleeps for a fixed time to "let things
//! settle".

pub mod endpoint;

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// How long any single condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `cond` until it returns Some, or fails after `deadline` with `what`.
pub fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut cond: impl FnMut() -> Option<T>,
) -> Result<T> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = cond() {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The `Environment=` settings of `systemd/edge-agent.service` (today `MALLOC_ARENA_MAX=2`), so
/// that a bench runs the agent as a site's systemd does; a variable already set in the bench's
/// own environment is left to that value. Empty if the unit file cannot be read.
pub fn unit_environment() -> Vec<(String, String)> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/edge-agent.service");
    std::fs::read_to_string(unit)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Environment="))
        .flat_map(str::split_whitespace)
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| std::env::var_os(k).is_none())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The `edge-agent` binary under test: `$EDGE_AGENT_BIN`, else the one cargo built next to
/// this test executable.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("EDGE_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/deps/e2e-xxxx → target/debug/edge-agent
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    let bin = dir.join("edge-agent");
    assert!(
        bin.exists(),
        "{} is missing; build it first: cargo build -p edge-agent (tests/run does)",
        bin.display()
    );
    bin
}

/// A TCP port for a listener on 127.0.0.1 that the test starts (a broker, an extra listener).
///
/// Never the same port twice in one test process (the tests of a file run in parallel threads),
/// and outside the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), so that no
/// client connection of this or another process is given it meanwhile. Each test process starts
/// at its own place in the range. Still, another program may bind it before the listener does:
/// whatever binds it later must notice a failed bind and take another port
/// ([`Broker::start_with_ports`] and [`serve_in_process`] do).
pub fn free_port() -> u16 {
    static NEXT: OnceLock<(u32, u32, AtomicU32)> = OnceLock::new();
    let (low, span, next) = NEXT.get_or_init(|| {
        let (low, high) = port_pool();
        let span = high - low;
        let start = std::process::id().wrapping_mul(2_654_435_761) % span;
        (low, span, AtomicU32::new(start))
    });
    let first = next.load(Ordering::Relaxed);
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        assert!(
            n.wrapping_sub(first) < *span,
            "free_port: every port of {low}..{} was handed out",
            low + span
        );
        let port = (low + n % span) as u16;
        // Taken by a running program (a listener, or a socket bound to it): skip it.
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `[low, high)`: the ports below the ephemeral range (from 10000), or above it.
fn port_pool() -> (u32, u32) {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|w| w.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    if ephemeral.0 >= 10_000 + 2_000 {
        (10_000, ephemeral.0)
    } else if ephemeral.1 + 2_000 < 65_536 {
        (ephemeral.1 + 1, 65_536)
    } else {
        (1024, 65_536)
    }
}

/// Whether process `pid` holds a socket listening on TCP `port` (Linux: `/proc/net/tcp` and
/// `/proc/PID/fd`). Unlike a connection attempt, this tells our listener from another
/// program's on the same port.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // st 0A: LISTEN
            if local_port == Some(port) && f.get(3) == Some(&"0A") {
                if let Some(inode) = f.get(9) {
                    inodes.insert(format!("socket:[{inode}]"));
                }
            }
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.contains(target.to_string_lossy().as_ref()))
    })
}

/// Starts a server on this process's threads on a port from [`free_port`]: `start(port)` spawns
/// the thread that binds and serves, and that thread ends if the bind fails (the port was taken
/// meanwhile), in which case it is started again on another port. Returns the port once this
/// process listens on it.
pub fn serve_in_process(start: impl FnMut(u16) -> std::thread::JoinHandle<()>) -> Result<u16> {
    serve_in_process_from(free_port, start)
}

fn serve_in_process_from(
    mut next_port: impl FnMut() -> u16,
    mut start: impl FnMut(u16) -> std::thread::JoinHandle<()>,
) -> Result<u16> {
    let deadline = Instant::now() + DEADLINE;
    let me = std::process::id();
    loop {
        let port = next_port();
        let server = start(port);
        let up = wait_for(&format!("a server to listen on {port}"), DEADLINE, || {
            if server.is_finished() {
                Some(false)
            } else {
                listens_on(me, port).then_some(true)
            }
        })?;
        if up {
            return Ok(port);
        }
        if Instant::now() > deadline {
            bail!("no port could be bound within {DEADLINE:?} (the last tried: {port})");
        }
    }
}

/// A mosquitto process on a loopback port; killed on drop.
pub struct Broker {
    pub port: u16,
    /// The ports of the listeners [`Broker::start_with_ports`] added, in order.
    pub ports: Vec<u16>,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// More listeners and their settings (see [`Broker::start_with`]).
    extra: String,
}

/// How one start of mosquitto went.
enum Launch {
    Up,
    /// It exited: "Address already in use".
    PortTaken,
}

impl Broker {
    pub fn start() -> Result<Broker> {
        Broker::start_with("")
    }

    /// A broker with more configuration after its plain anonymous listener on `port`, e.g.
    /// `"max_packet_size 1000\n"`. Settings are per listener (`per_listener_settings true`),
    /// so each extra listener states its own `allow_anonymous` / `password_file`. A `listener`
    /// here keeps its port even if another program took it: give listeners with
    /// [`Broker::start_with_ports`], which picks their ports again when one is taken.
    pub fn start_with(extra: &str) -> Result<Broker> {
        Broker::start_with_ports(0, |_| extra.to_string())
    }

    /// A broker with `n` more listeners: `extra(ports)` is the configuration after the plain
    /// listener, with the `n` ports (from [`free_port`]) to give them, e.g. a TLS listener:
    /// `|p| format!("listener {} 127.0.0.1\ncafile ...\n", p[0])`. They end up in
    /// [`Broker::ports`]. If mosquitto cannot bind one of its ports (another program took it
    /// after `free_port` looked), it is started again on new ones. The broker counts as
    /// started once mosquitto itself listens on every `listener` port.
    pub fn start_with_ports(n: usize, extra: impl Fn(&[u16]) -> String) -> Result<Broker> {
        Broker::start_from(free_port, n, extra)
    }

    fn start_from(
        mut next_port: impl FnMut() -> u16,
        n: usize,
        extra: impl Fn(&[u16]) -> String,
    ) -> Result<Broker> {
        let mut b = Broker {
            port: 0,
            ports: Vec::new(),
            dir: tempfile::tempdir()?,
            child: None,
            extra: String::new(),
        };
        let deadline = Instant::now() + DEADLINE;
        loop {
            b.port = next_port();
            b.ports = (0..n).map(|_| next_port()).collect();
            b.extra = extra(&b.ports);
            match b.launch()? {
                Launch::Up => return Ok(b),
                Launch::PortTaken if Instant::now() < deadline => {}
                Launch::PortTaken => bail!(
                    "mosquitto found its ports taken for {DEADLINE:?}; its log:\n{}",
                    b.log()
                ),
            }
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same ports: clients expect it where it was. If one is taken
    /// meanwhile, it tries again (for up to [`DEADLINE`]) until it is free.
    pub fn restart(&mut self) -> Result<()> {
        let deadline = Instant::now() + DEADLINE;
        let mut pause = Duration::from_millis(20);
        loop {
            match self.launch()? {
                Launch::Up => return Ok(()),
                Launch::PortTaken if Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Launch::PortTaken => bail!(
                    "port {} (or one of {:?}) stayed taken for {DEADLINE:?}; mosquitto log:\n{}",
                    self.port,
                    self.ports,
                    self.log()
                ),
            }
        }
    }

    /// Starts mosquitto once and waits until it listens on every port, or exits.
    fn launch(&mut self) -> Result<Launch> {
        let conf = self.dir.path().join("mosquitto.conf");
        let per_listener = if self.extra.is_empty() {
            ""
        } else {
            "per_listener_settings true\n"
        };
        std::fs::write(
            &conf,
            format!(
                "{per_listener}listener {} 127.0.0.1\nallow_anonymous true\nuser root\npersistence true\npersistence_location {}/\nmax_queued_messages 1000000\nmax_inflight_messages 20\n{}",
                self.port,
                self.dir.path().display(),
                self.extra
            ),
        )?;
        // Appended: the log keeps every start, this one's begins at `from`.
        let path = self.log_path();
        let from = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) as usize;
        let log = File::options().create(true).append(true).open(&path)?;
        let mut child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context(
                "starting mosquitto; install it (apt-get install -y mosquitto) or run tests/run",
            )?;
        let extra_ports = self.extra.lines().filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("listener"))
                .then(|| words.next()?.parse::<u16>().ok())
                .flatten()
        });
        let ports: Vec<u16> = std::iter::once(self.port).chain(extra_ports).collect();
        let pid = child.id();
        // Its own listeners, not just something answering on the ports: another program's
        // listener there would accept a connection while this mosquitto exits.
        let outcome = wait_for(
            &format!("mosquitto to listen on {ports:?}"),
            DEADLINE,
            || match child.try_wait() {
                Ok(Some(exit)) => Some(Err(exit)),
                _ => ports.iter().all(|p| listens_on(pid, *p)).then_some(Ok(())),
            },
        );
        match outcome {
            Ok(Ok(())) => {
                self.child = Some(child);
                Ok(Launch::Up)
            }
            Ok(Err(exit)) => {
                let log = self.log();
                if log
                    .get(from..)
                    .unwrap_or("")
                    .contains("Address already in use")
                {
                    Ok(Launch::PortTaken)
                } else {
                    bail!("mosquitto exited ({exit}); its log:\n{log}")
                }
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{e}; mosquitto log:\n{}", self.log())
            }
        }
    }

    /// The pid of the running mosquitto.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Where mosquitto logs (every start, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// What mosquitto wrote so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops it (the uplink goes down). SIGTERM, so that it saves its sessions: a
    /// collector's persistent session gets what was published while it was away, as a real
    /// central consumer would.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if wait_for("mosquitto to stop", DEADLINE, || {
                c.try_wait().ok().flatten()
            })
            .is_err()
            {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn mosquitto_bin() -> PathBuf {
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("mosquitto")
}

/// One message as central received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Received {
    /// The payload as JSON; a CBOR payload (`format = "cbor"`) decoded to the same JSON that
    /// `format = "json"` sends (byte strings as standard base64); Null when it is neither.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload)
            .ok()
            .or_else(|| cbor_to_json(&self.payload))
            .unwrap_or(Value::Null)
    }

    fn is_event(&self) -> bool {
        self.topic.contains("/events/")
    }
}

/// docs/schema/edge.v1.schema.json: every event a [`Collector`] receives is checked against it.
pub const EVENT_SCHEMA: &str = include_str!("../../docs/schema/edge.v1.schema.json");

fn event_validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let schema: Value = serde_json::from_str(EVENT_SCHEMA).unwrap_or(Value::Null);
        match jsonschema::draft202012::new(&schema) {
            Ok(v) => v,
            Err(e) => panic!(
                "docs/schema/edge.v1.schema.json does not compile as JSON Schema 2020-12: {e}; \
                 regenerate it with cargo run -p edge-protocol --example schema"
            ),
        }
    })
}

/// Checks one message of an events topic, decoded to JSON, against the edge.v1 schema: an
/// event, a batch (an array of events), or a CloudEvents document whose `data` is the event.
/// The error names the place in the event and what is wrong.
pub fn check_event_message(message: &Value) -> std::result::Result<(), String> {
    let events: Vec<&Value> = match message {
        Value::Array(batch) => batch.iter().collect(),
        one => vec![one],
    };
    for (i, event) in events.into_iter().enumerate() {
        let event = match event.get("specversion") {
            Some(_) => event.get("data").unwrap_or(&Value::Null),
            None => event,
        };
        let problems: Vec<String> = event_validator()
            .iter_errors(event)
            .map(|e| format!("at {:?}: {e}", e.instance_path().to_string()))
            .collect();
        if !problems.is_empty() {
            return Err(format!("event {i} of the message: {}", problems.join("; ")));
        }
    }
    Ok(())
}

/// A CBOR document as JSON, byte strings as standard base64 (as `format = "json"` has `raw`).
fn cbor_to_json(bytes: &[u8]) -> Option<Value> {
    fn convert(v: ciborium::Value) -> Option<Value> {
        use base64::Engine as _;
        Some(match v {
            ciborium::Value::Null => Value::Null,
            ciborium::Value::Bool(b) => Value::Bool(b),
            ciborium::Value::Integer(i) => {
                let i = i128::from(i);
                match u64::try_from(i) {
                    Ok(u) => Value::from(u),
                    Err(_) => Value::from(i64::try_from(i).ok()?),
                }
            }
            ciborium::Value::Float(f) => Value::from(f),
            ciborium::Value::Text(t) => Value::String(t),
            ciborium::Value::Bytes(b) => {
                Value::String(base64::engine::general_purpose::STANDARD.encode(b))
            }
            ciborium::Value::Array(a) => {
                Value::Array(a.into_iter().map(convert).collect::<Option<_>>()?)
            }
            ciborium::Value::Map(m) => {
                let mut out = serde_json::Map::new();
                for (k, v) in m {
                    out.insert(k.into_text().ok()?, convert(v)?);
                }
                Value::Object(out)
            }
            ciborium::Value::Tag(_, inner) => convert(*inner)?,
            _ => return None,
        })
    }
    let v: ciborium::Value = ciborium::from_reader(bytes).ok()?;
    convert(v)
}

/// What a collector has checked so far: the messages up to `upto`, the events among them as
/// JSON, and the first one that failed the schema.
#[derive(Default)]
struct Checked {
    upto: usize,
    events: Vec<Value>,
    failure: Option<String>,
}

/// An MQTT client subscribed to a filter (QoS 1) with a persistent session, collecting every
/// message on its own thread; it reconnects by itself when its broker comes back.
pub struct Collector {
    got: Arc<Mutex<Vec<Received>>>,
    client: rumqttc::Client,
    checked: Mutex<Checked>,
}

impl Collector {
    pub fn subscribe(port: u16, filter: &str) -> Result<Collector> {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let id = format!("collector-{}-{n}", std::process::id());
        let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_session(false);
        opts.set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut conn) = rumqttc::Client::new(opts, 1000);
        client.subscribe(filter, rumqttc::QoS::AtLeastOnce)?;
        let got = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(Mutex::new(false));
        {
            let got = got.clone();
            let subscribed = subscribed.clone();
            std::thread::spawn(move || {
                for ev in conn.iter() {
                    match ev {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                            if let Ok(mut g) = got.lock() {
                                g.push(Received {
                                    topic: p.topic.clone(),
                                    payload: p.payload.to_vec(),
                                });
                            }
                        }
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                            if let Ok(mut s) = subscribed.lock() {
                                *s = true;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            });
        }
        wait_for("the collector's SUBACK", DEADLINE, || {
            subscribed.lock().ok().filter(|s| **s).map(|_| ())
        })?;
        Ok(Collector {
            got,
            client,
            checked: Mutex::new(Checked::default()),
        })
    }

    /// Every message received so far. Panics if an event among them does not match the
    /// edge.v1 schema (see [`Collector::events`]).
    pub fn all(&self) -> Vec<Received> {
        let all = self.got.lock().map(|g| g.clone()).unwrap_or_default();
        self.fail_on_invalid_events();
        all
    }

    /// Messages whose topic contains `/events/`, as JSON ([`Received::json`]; a batch is one
    /// array). Each is checked once against docs/schema/edge.v1.schema.json; an event that
    /// does not match fails the test here, with the schema's reason.
    pub fn events(&self) -> Vec<Value> {
        self.fail_on_invalid_events();
        self.checked
            .lock()
            .map(|c| c.events.clone())
            .unwrap_or_default()
    }

    /// Checks the messages that arrived since the last call; panics naming the first event
    /// that does not match the schema.
    fn fail_on_invalid_events(&self) {
        let failure = {
            let Ok(mut checked) = self.checked.lock() else {
                return;
            };
            let fresh: Vec<Received> = self
                .got
                .lock()
                .map(|g| g.get(checked.upto..).map(<[_]>::to_vec).unwrap_or_default())
                .unwrap_or_default();
            checked.upto += fresh.len();
            for r in fresh.into_iter().filter(Received::is_event) {
                let json = r.json();
                if checked.failure.is_none() {
                    if let Err(why) = check_event_message(&json) {
                        checked.failure = Some(format!(
                            "central received an event on {} that does not match \
                             docs/schema/edge.v1.schema.json: {why}\nthe message: {}",
                            r.topic,
                            String::from_utf8_lossy(&r.payload)
                        ));
                    }
                }
                checked.events.push(json);
            }
            checked.failure.clone()
        };
        if let Some(failure) = failure {
            panic!("{failure}");
        }
    }

    /// Waits until at least `n` events arrived.
    pub fn wait_events(&self, n: usize, deadline: Duration) -> Result<Vec<Value>> {
        wait_for(&format!("{n} events upstream"), deadline, || {
            let e = self.events();
            (e.len() >= n).then_some(e)
        })
        .map_err(|e| anyhow!("{e}; got {} events", self.events().len()))
    }

    /// Publishes a retained message (a device's last value).
    pub fn client_publish_retained(&self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<()> {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, true, payload.into())?;
        Ok(())
    }

    /// Publishes a message (a device on the site broker).
    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<()> {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.into())?;
        Ok(())
    }
}

/// The events that arrived after the test last looked are checked too.
impl Drop for Collector {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.fail_on_invalid_events();
        }
    }
}

/// A pseudo-terminal: the test writes to the master, the agent opens `path` as its serial port.
pub struct Pty {
    master: File,
    _slave: OwnedFd,
    pub path: PathBuf,
}

impl Pty {
    pub fn open() -> Result<Pty> {
        let r = nix::pty::openpty(None, None)?;
        // openpty does not set close-on-exec: without it every agent the tests spawn would
        // inherit the master, and closing ours would no longer unplug the device.
        for fd in [&r.master, &r.slave] {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )?;
        }
        let path = nix::unistd::ttyname(&r.slave)?;
        Ok(Pty {
            master: File::from(r.master),
            _slave: r.slave,
            path,
        })
    }

    /// Writes bytes as the device would send them.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.master.write_all(bytes)?;
        self.master.flush()?;
        Ok(())
    }

    /// Unplugs the device: closes the master side.
    pub fn unplug(self) {}

    /// A second handle on the master, to read what the agent writes to the device.
    pub fn reader(&self) -> Result<File> {
        Ok(self.master.try_clone()?)
    }
}

/// A running `edge-agent run` with its own temp dir, config, buffer and control socket.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub storage: PathBuf,
    child: Option<Child>,
    /// Runs as this uid and gid (no supplementary groups) instead of the test's user.
    run_as: Option<u32>,
    /// Environment variables the agent gets besides the test's.
    env: Vec<(String, String)>,
}

impl Agent {
    /// Like [`Agent::start`], but the agent runs as user and group `id` with no supplementary
    /// groups (a service user outside dialout), its directory handed to that user. Needs root
    /// and setpriv (util-linux), as CI has.
    pub fn start_as(config: &str, id: u32) -> Result<Agent> {
        let mut a = Agent::prepare(config)?;
        for path in [a.dir.path(), a.config.as_path()] {
            std::os::unix::fs::chown(path, Some(id), Some(id))
                .context("handing the agent's directory to another user needs root, as CI has")?;
        }
        // A copy the user can run wherever the checkout is (/root is not open to others).
        std::fs::copy(agent_bin(), a.dir.path().join("edge-agent"))?;
        a.run_as = Some(id);
        a.restart()?;
        Ok(a)
    }

    /// Writes `config` (with `{dir}` replaced by the temp dir) and starts the agent.
    pub fn start(config: &str) -> Result<Agent> {
        Agent::start_with_env(config, &[])
    }

    /// Like [`Agent::start`], with these environment variables set for the agent.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Result<Agent> {
        let mut a = Agent::prepare(config)?;
        a.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        a.restart()?;
        Ok(a)
    }

    fn prepare(config: &str) -> Result<Agent> {
        let dir = tempfile::tempdir()?;
        let d = dir.path().display().to_string();
        let text = config.replace("{dir}", &d);
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text)?;
        Ok(Agent {
            socket: dir.path().join("control.sock"),
            storage: dir.path().join("buffer.redb"),
            config: path,
            dir,
            child: None,
            run_as: None,
            env: Vec::new(),
        })
    }

    /// Starts the agent (again) with the same files.
    pub fn restart(&mut self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))?;
        let mut command = match self.run_as {
            None => Command::new(agent_bin()),
            Some(id) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={id}"))
                    .arg(format!("--regid={id}"))
                    .arg("--clear-groups")
                    .arg(self.dir.path().join("edge-agent"));
                c
            }
        };
        let child = command
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            // Many agents run at once: none listens on the default HTTP port unless its test
            // gives it one (tests/tests/http.rs).
            .env("EDGE_AGENT__CONTROL__HTTP", "")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// How the agent exited, if it did (None while it runs, or if it was never started).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The agent's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// `{"cmd":"status"}` over the control socket.
    pub fn status(&self) -> Result<Value> {
        use std::io::{BufRead, BufReader};
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"{\"cmd\":\"status\"}\n")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(serde_json::from_str(&line)?)
    }

    /// Waits until the source reports `state`.
    pub fn wait_source(&self, id: &str, state: &str) -> Result<Value> {
        wait_for(&format!("source {id} to be {state}"), DEADLINE, || {
            let s = self.status().ok()?;
            (s["sources"][id]["state"] == state).then_some(s)
        })
        .map_err(|e| anyhow!("{e}\nagent log:\n{}", self.log()))
    }

    /// Sends a signal and waits for the exit status.
    pub fn signal(&mut self, sig: nix::sys::signal::Signal) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("agent not running"))?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, sig)?;
        let status = wait_for("the agent to exit", DEADLINE, || {
            child.try_wait().ok().flatten()
        });
        if status.is_err() {
            let _ = child.kill();
        }
        status
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the binary with arguments and returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> Result<(i32, String, String)> {
    let out = Command::new(agent_bin())
        .args(args)
        .envs(env.iter().copied())
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `/proc` counts CPU time in USER_HZ ticks, 100 per second on Linux whatever the kernel's HZ.
const USER_HZ: f64 = 100.0;

/// Busy CPU seconds of all CPUs since boot: `/proc/stat`'s `cpu` line less idle and iowait.
pub fn machine_busy_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|t| t.parse().ok())
        .collect();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (ticks.iter().sum::<u64>() - idle) as f64 / USER_HZ
}

/// User and system CPU seconds of a process (all its threads), from `/proc/PID/stat`.
pub fn process_cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // After the command name in parentheses: fields 3.. ; utime and stime are 14 and 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
    (tick(11) + tick(12)) as f64 / USER_HZ
}

/// Resident set size of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
}

/// A signing key made by `edge-agent config keygen` in `dir`: (secret key path, public key).
pub fn config_keygen(dir: &Path, name: &str) -> Result<(PathBuf, String)> {
    let path = dir.join(name);
    let (code, _, err) = run_cli(&["config", "keygen", "--out", &path.to_string_lossy()], &[])?;
    if code != 0 {
        bail!("config keygen: {err}");
    }
    let public = std::fs::read_to_string(dir.join(format!("{name}.pub")))?;
    Ok((path, public.trim().to_string()))
}

/// `toml` signed as `version` by `edge-agent config sign` with the key at `key`: the signed
/// document, written to `dir/v{version}.signed.json` (returned) and as text.
pub fn config_sign(dir: &Path, key: &Path, version: u64, toml: &str) -> Result<(PathBuf, String)> {
    let file = dir.join(format!("v{version}.toml"));
    std::fs::write(&file, toml)?;
    let (code, signed, err) = run_cli(
        &[
            "config",
            "sign",
            "--key",
            &key.to_string_lossy(),
            "--version",
            &version.to_string(),
            &file.to_string_lossy(),
        ],
        &[],
    )?;
    if code != 0 {
        bail!("config sign: {err}");
    }
    let signed = signed.trim().to_string();
    let out = dir.join(format!("v{version}.signed.json"));
    std::fs::write(&out, &signed)?;
    Ok((out, signed))
}

/// A small tmpfs, unmounted on drop: a disk that can really fill up.
pub struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    pub fn mount(dir: &std::path::Path, size: &str) -> Result<SmallDisk> {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "mounting a {size} tmpfs for the disk-full test failed (it needs root, as CI has): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system holding `path` until it has no space left.
pub fn fill(path: &std::path::Path) -> Result<u64> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0u8; 4096];
    let mut written = 0u64;
    loop {
        match f.write_all(&chunk).and_then(|_| f.sync_data()) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) if e.raw_os_error() == Some(28) => return Ok(written),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The Python interpreter that has the `cloudevents` package: `$EDGE_TESTS_PYTHON` (tests/run
/// makes a virtual environment and sets it), else `python3`.
fn python() -> String {
    std::env::var("EDGE_TESTS_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Reads one structured-mode JSON CloudEvent per input line with the SDK's own JSON format
/// (cloudevents 2.x, `cloudevents.core`) and prints what it read as JSON.
const READ_WITH_SDK: &str = r#"
import json, sys
from cloudevents.core.formats.json import JSONFormat
fmt = JSONFormat()
for line in sys.stdin:
    if not line.strip():
        continue
    ev = fmt.read(None, line.encode("utf-8"))
    t = ev.get_time()
    print(json.dumps({
        "specversion": ev.get_specversion(),
        "id": ev.get_id(),
        "source": ev.get_source(),
        "type": ev.get_type(),
        "time": None if t is None else t.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "subject": ev.get_subject(),
        "datacontenttype": ev.get_datacontenttype(),
        "data": ev.get_data(),
        "extensions": sorted(k for k in ev.get_attributes() if k not in (
            "specversion", "id", "source", "type", "time", "subject", "datacontenttype")),
    }))
"#;

/// What the CloudEvents reference SDK for Python read from each message (one structured-mode
/// JSON CloudEvent each), in order; an error when it refuses one.
pub fn read_with_cloudevents_sdk(messages: &[Vec<u8>]) -> Result<Vec<Value>> {
    let python = python();
    let mut child = Command::new(&python)
        .args(["-c", READ_WITH_SDK])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {python}; run tests/run, which installs the CloudEvents SDK (or set EDGE_TESTS_PYTHON)"))?;
    {
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("no stdin for {python}"))?;
        for m in messages {
            stdin.write_all(m)?;
            stdin.write_all(b"\n")?;
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the CloudEvents SDK ({python}) refused a message or is not installed ({}): {}\n\
             run tests/run, which installs it into target/py-cloudevents (pip install cloudevents)",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("SDK output {l:?}")))
        .collect()
}

/// Runs the `openssl` CLI in `dir` (the TLS tests make their certificates with it).
pub fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl; install it (apt-get install -y openssl) or run tests/run")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Fills a buffer file at `path` with `n` pending scans (seq 1..=n), as a stopped agent with
/// that backlog would have left it (valid SSCC scans, GS1 check digit included): for the
/// backlog benches and tests.
pub fn write_backlog(path: &Path, n: u64) -> Result<()> {
    write_backlog_padded(path, n, 0)
}

/// Events delivered from a backlog of [`write_backlog_padded`] with `raw_len` 1 MiB: seq 1 to
/// `n`, once each, in order, each with its whole frame.
pub fn check_padded_backlog(events: &[Value], n: u64) -> Result<()> {
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    anyhow::ensure!(
        seqs == (1..=n).collect::<Vec<_>>(),
        "once each, in order: {seqs:?}"
    );
    anyhow::ensure!(
        events
            .iter()
            .all(|e| e["raw"].as_str().is_some_and(|r| r.len() > 1_000_000)),
        "every event carries its whole frame"
    );
    Ok(())
}

/// [`write_backlog`] with each reading's `raw` padded to at least `raw_len` bytes (large
/// frames), committed in groups of at most 64 MiB.
pub fn write_backlog_padded(path: &Path, n: u64, raw_len: usize) -> Result<()> {
    use edge_agent::buffer::{Capacity, NewRow, Store};
    use edge_protocol::event::{Body, Envelope, ShipmentScan};
    let envelope = |seq: u64| {
        // An SSCC: extension digit 1, GS1 company prefix 0614141, the seq as serial reference,
        // and its check digit (weights 3 and 1 from the right).
        let digits = format!("10614141{seq:09}");
        let sum: u32 = digits
            .bytes()
            .rev()
            .enumerate()
            .map(|(i, d)| u32::from(d - b'0') * if i % 2 == 0 { 3 } else { 1 })
            .sum();
        let code = format!("]C100{digits}{}", (10 - sum % 10) % 10);
        Envelope {
            id: format!("01a21ca0-81f7-73e6-b850-{seq:012}"),
            site: "dc-bench".into(),
            seq,
            source: "scanner-pack-01".into(),
            station: Some("pack-01".into()),
            role: Some(edge_protocol::Role::Packing),
            observed_at: "2026-11-27T10:00:00.123Z".into(),
            body: Body::ShipmentScan(ShipmentScan {
                code: code[3..].into(),
                symbology: "gs1-128".into(),
                sscc: Some(code[5..].into()),
                gs1: Default::default(),
            }),
            raw: {
                let mut raw = code.into_bytes();
                raw.resize(raw.len().max(raw_len), b' ');
                raw
            },
            replayed: false,
        }
        .to_cbor()
    };
    let store = Store::open(path)?;
    let group = (64 << 20) / raw_len.max(6400) as u64;
    let mut seq = 1;
    while seq <= n {
        let rows: Vec<NewRow> = (seq..(seq + group).min(n + 1))
            .map(|s| NewRow {
                seq: s,
                observed_ms: 1_795_773_600_000 + s,
                cbor: envelope(s),
                count_if_rejected: true,
            })
            .collect();
        seq += rows.len() as u64;
        store.commit(&rows, &[], seq, Capacity::unlimited())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_never_hands_out_a_port_twice_and_stays_out_of_the_ephemeral_range() {
        let (low, high) = port_pool();
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..200).map(|_| free_port()).collect::<Vec<_>>()))
            .collect();
        let ports: Vec<u16> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("a thread panicked"))
            .collect();
        let unique: std::collections::HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len(), "a port was handed out twice");
        let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .expect("ip_local_port_range");
        let e: Vec<u32> = ephemeral
            .split_whitespace()
            .map(|w| w.parse().expect("a port"))
            .collect();
        for p in ports {
            let p = u32::from(p);
            assert!(p >= low && p < high, "{p} not in {low}..{high}");
            assert!(
                !(e[0]..=e[1]).contains(&p),
                "{p} is in the ephemeral range {ephemeral}"
            );
        }
    }

    /// A port some other program holds, and the ones after it from `free_port`.
    fn taken_first(taken: u16) -> impl FnMut() -> u16 {
        let mut first = Some(taken);
        move || first.take().unwrap_or_else(free_port)
    }

    #[test]
    fn a_broker_whose_port_was_taken_meanwhile_starts_on_another_one() -> Result<()> {
        let taken = free_port();
        let holder = std::net::TcpListener::bind(("127.0.0.1", taken))?;
        let b = Broker::start_from(taken_first(taken), 0, |_| String::new())?;
        assert_ne!(b.port, taken, "it reported the taken port as its own");
        let pid = b.pid().expect("running");
        assert!(
            listens_on(pid, b.port),
            "mosquitto does not listen on {}",
            b.port
        );
        assert!(
            b.log().contains("Address already in use"),
            "the first try did not meet the taken port:\n{}",
            b.log()
        );
        drop(holder);
        Ok(())
    }

    #[test]
    fn a_broker_whose_extra_listener_port_was_taken_picks_new_ports() -> Result<()> {
        let taken = free_port();
        let holder = std::net::TcpListener::bind(("127.0.0.1", taken))?;
        // The plain listener gets a free port, the extra one the taken port.
        let plain = free_port();
        let mut order = vec![plain, taken].into_iter();
        let b = Broker::start_from(
            move || order.next().unwrap_or_else(free_port),
            1,
            |p| format!("listener {} 127.0.0.1\nallow_anonymous true\n", p[0]),
        )?;
        assert_ne!(b.ports[0], taken);
        let pid = b.pid().expect("running");
        assert!(
            listens_on(pid, b.port) && listens_on(pid, b.ports[0]),
            "{:?}",
            b.ports
        );
        drop(holder);
        Ok(())
    }

    #[test]
    fn a_restarted_broker_waits_for_its_port_and_comes_back_on_it() -> Result<()> {
        let mut b = Broker::start()?;
        let port = b.port;
        b.stop();
        let holder = std::net::TcpListener::bind(("127.0.0.1", port))?;
        let log = b.log_path();
        let before = b.log().matches("Address already in use").count();
        // Held until mosquitto has failed on it at least once, then given back.
        let release = std::thread::spawn(move || {
            let met = wait_for("mosquitto to meet the taken port", DEADLINE, || {
                let text = std::fs::read_to_string(&log).ok()?;
                (text.matches("Address already in use").count() > before).then_some(())
            });
            drop(holder);
            met
        });
        b.restart()?;
        release.join().expect("release thread")?;
        assert_eq!(b.port, port);
        let pid = b.pid().expect("running");
        assert!(listens_on(pid, port), "mosquitto is not back on {port}");
        Ok(())
    }

    #[test]
    fn an_in_process_server_whose_port_was_taken_meanwhile_moves_to_another() -> Result<()> {
        // Another program (a mosquitto) holds the first port.
        let other = Broker::start()?;
        let mut tries = vec![];
        let port = serve_in_process_from(taken_first(other.port), |port| {
            tries.push(port);
            std::thread::spawn(move || {
                if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                    for conn in l.incoming() {
                        drop(conn);
                    }
                }
            })
        })?;
        assert_ne!(port, other.port);
        assert_eq!(tries, [other.port, port]);
        assert!(listens_on(std::process::id(), port));
        Ok(())
    }

    #[test]
    fn listens_on_tells_this_process_s_listener_from_another_s() -> Result<()> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        assert!(listens_on(std::process::id(), port));
        let other = Broker::start()?;
        assert!(!listens_on(std::process::id(), other.port));
        assert!(listens_on(other.pid().expect("running"), other.port));
        drop(l);
        assert!(!listens_on(std::process::id(), port));
        Ok(())
    }
}
