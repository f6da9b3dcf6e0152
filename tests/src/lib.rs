//! Helpers for the end-to-end tests: the built `edge-agent` binary, a real mosquitto broker on
//! a loopback port, real pseudo-terminals, and an MQTT client that collects what central sees.
//!
//! Every wait polls a condition with a deadline; nothing sleeps for a fixed time to "let things
//! settle".

use std::fs::File;
use std::io::Write;
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
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

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// A mosquitto process on a loopback port; killed on drop.
pub struct Broker {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// More listeners and their settings (see [`Broker::start_with`]).
    extra: String,
}

impl Broker {
    pub fn start() -> Result<Broker> {
        Broker::start_with("")
    }

    /// A broker with more configuration after its plain anonymous listener on `port`, e.g. a
    /// TLS listener: `"listener 18883 127.0.0.1\ncafile ...\n"`. Settings are per listener
    /// (`per_listener_settings true`), so each extra listener states its own
    /// `allow_anonymous` / `password_file`. The broker counts as started once every
    /// `listener` port accepts connections.
    pub fn start_with(extra: &str) -> Result<Broker> {
        let mut b = Broker {
            port: free_port(),
            dir: tempfile::tempdir()?,
            child: None,
            extra: extra.to_string(),
        };
        b.restart()?;
        Ok(b)
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port.
    pub fn restart(&mut self) -> Result<()> {
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
        let log = File::create(self.dir.path().join("mosquitto.log"))?;
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context(
                "starting mosquitto; install it (apt-get install -y mosquitto) or run tests/run",
            )?;
        self.child = Some(child);
        let extra_ports = self.extra.lines().filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("listener"))
                .then(|| words.next()?.parse::<u16>().ok())
                .flatten()
        });
        for port in std::iter::once(self.port).chain(extra_ports) {
            wait_for(&format!("mosquitto to listen on {port}"), DEADLINE, || {
                TcpStream::connect(("127.0.0.1", port)).ok()
            })
            .map_err(|e| anyhow!("{e}; mosquitto log:\n{}", self.log()))?;
        }
        Ok(())
    }

    /// What mosquitto wrote so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
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
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }
}

/// An MQTT client subscribed to a filter (QoS 1) with a persistent session, collecting every
/// message on its own thread; it reconnects by itself when its broker comes back.
pub struct Collector {
    got: Arc<Mutex<Vec<Received>>>,
    client: rumqttc::Client,
}

impl Collector {
    pub fn subscribe(port: u16, filter: &str) -> Result<Collector> {
        let id = format!("collector-{}-{}", std::process::id(), free_port());
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
        Ok(Collector { got, client })
    }

    pub fn all(&self) -> Vec<Received> {
        self.got.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Messages whose topic contains `/events/`.
    pub fn events(&self) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|r| r.topic.contains("/events/"))
            .map(|r| r.json())
            .collect()
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
