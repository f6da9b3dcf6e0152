//! The test HTTP endpoint (`tests/http-endpoint/endpoint.py`, a real server process on
//! loopback, plain or TLS) for the HTTP upstream's tests and bench, and certificates for it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::{check_event_message, free_port, openssl, wait_for, Agent, Pty, DEADLINE};

/// The test endpoint: one Python process, its request log and its script.
pub struct Endpoint {
    dir: tempfile::TempDir,
    pub port: u16,
    tls: Option<Tls>,
    child: Option<Child>,
    /// Log only ids and two headers (`--lean`, for the bench).
    pub lean: bool,
}

/// The endpoint's certificate and, for mutual TLS, the CA its clients' certificates chain to.
#[derive(Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// One request as the endpoint logged it.
pub struct Request {
    pub time: f64,
    pub answered: Option<f64>,
    pub headers: Value,
    pub body: Value,
    pub ids: Vec<String>,
    /// The status it answered, or "hung" / "closed".
    pub status: Value,
    pub client_cert: Option<String>,
}

impl Request {
    pub fn header(&self, name: &str) -> &str {
        self.headers[name].as_str().unwrap_or("")
    }
    pub fn delivered(&self) -> bool {
        self.status
            .as_u64()
            .is_some_and(|s| (200..300).contains(&s) || s == 409)
    }
}

impl Endpoint {
    pub fn script_path(&self) -> PathBuf {
        self.dir.path().join("script.json")
    }

    /// An endpoint on a free port, not started yet (so that a test can begin with it down).
    pub fn new(tls: Option<Tls>) -> Result<Endpoint> {
        let e = Endpoint {
            dir: tempfile::tempdir()?,
            port: free_port(),
            tls,
            child: None,
            lean: false,
        };
        e.set_script(&json!({}))?;
        Ok(e)
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/edge/events", self.port)
    }

    /// Starts (or starts again) the server on its port and waits until it listens.
    pub fn start(&mut self) -> Result<()> {
        let port_file = self.dir.path().join("port");
        let _ = std::fs::remove_file(&port_file);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("http-endpoint/endpoint.py");
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .args(["--port", &self.port.to_string()])
            .arg("--port-file")
            .arg(&port_file)
            .arg("--log")
            .arg(self.dir.path().join("log.jsonl"))
            .arg("--script")
            .arg(self.script_path())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join("endpoint.err"))?,
            ));
        if self.lean {
            cmd.arg("--lean");
        }
        if let Some(tls) = &self.tls {
            cmd.arg("--cert").arg(&tls.cert).arg("--key").arg(&tls.key);
            if let Some(ca) = &tls.client_ca {
                cmd.arg("--client-ca").arg(ca);
            }
        }
        let mut child = cmd.spawn().context(
            "starting python3 tests/http-endpoint/endpoint.py (tests/run installs python3)",
        )?;
        let waited = wait_for("the endpoint to listen", DEADLINE, || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(anyhow!("the endpoint exited: {status}")));
            }
            port_file.exists().then_some(Ok(()))
        });
        self.child = Some(child);
        waited.and_then(|r| r).map_err(|e| {
            anyhow!(
                "{e}; its stderr: {}",
                std::fs::read_to_string(self.dir.path().join("endpoint.err")).unwrap_or_default()
            )
        })
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Replaces the script at once (written aside, then renamed).
    pub fn set_script(&self, script: &Value) -> Result<()> {
        let tmp = self.dir.path().join("script.json.tmp");
        std::fs::write(&tmp, script.to_string())?;
        std::fs::rename(&tmp, self.script_path())?;
        Ok(())
    }

    pub fn requests(&self) -> Vec<Request> {
        let text = std::fs::read_to_string(self.dir.path().join("log.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| Request {
                time: v["time"].as_f64().unwrap_or(0.0),
                answered: v["answered"].as_f64(),
                headers: v["headers"].clone(),
                body: v["body"].clone(),
                ids: v["ids"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|i| i.as_str().unwrap_or("").to_string())
                            .collect()
                    })
                    .unwrap_or_default(),
                status: v["status"].clone(),
                client_cert: v["client_cert"].as_str().map(str::to_string),
            })
            .collect()
    }

    /// The events of every delivered request, in the order they were delivered.
    pub fn delivered_events(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(Request::delivered)
            .flat_map(|r| r.body.as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits until `n` events were delivered; returns them in delivery order.
    pub fn wait_delivered(&self, n: usize, agent: &Agent) -> Result<Vec<Value>> {
        wait_for(
            &format!("{n} events delivered"),
            Duration::from_secs(90),
            || {
                let events = self.delivered_events();
                (events.len() >= n).then_some(events)
            },
        )
        .map_err(|e| anyhow!("{e}\nagent log:\n{}", agent.log()))
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`.
pub fn make_pki(dir: &Path) -> Result<()> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=edge test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca)?;
    for (name, cn, ext, serial) in [
        (
            "server",
            "localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            "1",
        ),
        (
            "client",
            "edge-agent-dc-test-01",
            "extendedKeyUsage=clientAuth\n",
            "2",
        ),
    ] {
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{ext}"),
        )?;
        let (key, csr, crt, extfile, subj) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
            format!("/CN={cn}"),
        );
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &req)?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                serial,
                "-days",
                "2",
                "-extfile",
                &extfile,
                "-out",
                &crt,
            ],
        )?;
        std::fs::set_permissions(
            dir.join(&key),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
    }
    Ok(())
}

/// An agent configuration for the HTTP upstream tests: site `dc-test-01`, station `pack-01`,
/// `upstream` and `control` keys as given, and `sources` (see [`serial_source`]).
pub fn agent_config(upstream: &str, sources: &str, control: &str) -> String {
    format!(
        r#"
[site]
id = "dc-test-01"
[storage]
path = "{{dir}}/buffer.redb"
[upstream]
{upstream}
[[stations]]
id = "pack-01"
role = "packing"
{sources}
[control]
socket = "{{dir}}/control.sock"
{control}
"#
    )
}

/// A barcode scanner `scanner-pack-01` on `pty`.
pub fn serial_source(pty: &Pty) -> String {
    format!(
        "[[sources.serial]]\nid = \"scanner-pack-01\"\npath = \"{}\"\nbaud = 9600\ndecoder = \"barcode\"\nstation = \"pack-01\"\n",
        pty.path.display()
    )
}

/// The code of scan `i`.
pub fn lpn(i: usize) -> String {
    format!("LPN{i:06}")
}

/// Writes scans `range` to the scanner in one go.
pub fn write_scans(pty: &mut Pty, range: std::ops::Range<usize>) -> Result<()> {
    let text: String = range.map(|i| format!("{}\r\n", lpn(i))).collect();
    pty.write(text.as_bytes())
}

/// The scan codes of `events` in order.
pub fn codes(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["body"]["code"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Checks that `events` are the scans `0..want`, each once (distinct ids), in order (seq
/// increasing), each valid against the edge.v1 schema.
pub fn check_scans(events: &[Value], want: usize) -> Result<()> {
    for e in events {
        check_event_message(e).map_err(|why| anyhow!("{why}: {e}"))?;
    }
    let got = codes(events);
    let expected: Vec<String> = (0..want).map(lpn).collect();
    if got != expected {
        bail!(
            "not every scan once in order: {} events, first differences {:?}",
            got.len(),
            got.iter()
                .zip(&expected)
                .filter(|(a, b)| a != b)
                .take(5)
                .collect::<Vec<_>>()
        );
    }
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    if seqs.len() != want || !seqs.windows(2).all(|w| w[0] < w[1]) {
        bail!("seq does not increase: {seqs:?}");
    }
    let ids: std::collections::HashSet<&str> =
        events.iter().filter_map(|e| e["id"].as_str()).collect();
    if ids.len() != want {
        bail!("{} distinct ids for {want} events", ids.len());
    }
    Ok(())
}
