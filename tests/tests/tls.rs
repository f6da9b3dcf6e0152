//! TLS and credentials end to end: the built binary against a real mosquitto with a TLS
//! listener, using certificates each test makes with the `openssl` CLI (a CA, a server
//! certificate for localhost / 127.0.0.1, a client certificate, and an unrelated CA).
//!
//! The broker has two listeners: a plain one where the test's devices publish and its
//! collector (central) subscribes, and the one under test, which the agent uses.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use edge_tests::{
    config_keygen, config_sign, run_cli, wait_for, Agent, Broker, Collector, DEADLINE,
};
use serde_json::Value;

/// Certificates made for one test.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn make() -> Result<Pki> {
        let pki = Pki {
            dir: tempfile::tempdir()?,
        };
        pki.ca("ca", "edge test CA")?;
        pki.ca("other-ca", "some other CA")?;
        pki.leaf(
            "server",
            "localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            1,
        )?;
        pki.leaf(
            "client",
            "edge-agent-dc-test-01",
            "extendedKeyUsage=clientAuth\n",
            2,
        )?;
        Ok(pki)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn openssl(&self, args: &[&str]) -> Result<()> {
        edge_tests::openssl(self.dir.path(), args)
    }

    fn ca(&self, name: &str, cn: &str) -> Result<()> {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])
    }

    fn leaf(&self, name: &str, cn: &str, ext: &str, serial: u32) -> Result<()> {
        std::fs::write(
            self.path(&format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{ext}"),
        )?;
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ])?;
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial.to_string(),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ])?;
        chmod(&self.path(&format!("{name}.key")), 0o600)
    }

    /// A client certificate made exactly as mosquitto's TLS manual (mosquitto-tls(7)) makes
    /// one: a key, a CSR, and `openssl x509 -req ... -CAcreateserial` with no extension file,
    /// which gives an X.509 version 1 certificate. The key is RSA 2048 as in the manual
    /// (`genrsa`, PKCS#8) or EC P-256 (`ecparam -genkey`, SEC1 "EC PRIVATE KEY").
    fn manual_client(&self, name: &str, cn: &str, key: ManualKey) -> Result<()> {
        let key_file = format!("{name}.key");
        match key {
            ManualKey::Rsa => self.openssl(&["genrsa", "-out", &key_file, "2048"])?,
            ManualKey::Ec => self.openssl(&[
                "ecparam",
                "-genkey",
                "-name",
                "prime256v1",
                "-noout",
                "-out",
                &key_file,
            ])?,
        }
        self.openssl(&[
            "req",
            "-out",
            &format!("{name}.csr"),
            "-key",
            &key_file,
            "-new",
            "-subj",
            &format!("/CN={cn}"),
        ])?;
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "365",
        ])?;
        chmod(&self.path(&key_file), 0o600)?;
        let text =
            self.openssl_text(&["x509", "-in", &format!("{name}.crt"), "-noout", "-text"])?;
        ensure!(
            text.contains("Version: 1 (0x0)"),
            "openssl made no version 1 certificate:\n{text}"
        );
        Ok(())
    }

    /// Like [`Pki::openssl`], and returns what it printed.
    fn openssl_text(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .context("running openssl; install it (apt-get install -y openssl) or run tests/run")?;
        ensure!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// mosquitto listener lines for a TLS listener on `port` with the server certificate.
    fn listener(&self, port: u16, more: &str) -> String {
        format!(
            "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n{more}",
            self.path("ca.crt").display(),
            self.path("server.crt").display(),
            self.path("server.key").display(),
        )
    }
}

/// The key type of [`Pki::manual_client`].
#[derive(Clone, Copy)]
enum ManualKey {
    Rsa,
    Ec,
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// An agent config: `upstream` holds the whole `[upstream]` body, `sources` the sources.
fn config(upstream: &str, sources: &str) -> String {
    format!(
        r#"
[site]
id = "dc-test-01"
[storage]
path = "{{dir}}/buffer.redb"
[upstream]
format = "json"
{upstream}
[[stations]]
id = "pack-01"
role = "packing"
{sources}
[control]
socket = "{{dir}}/control.sock"
"#
    )
}

/// A barcode scanner publishing to `url` on `site/scan`.
fn mqtt_source(id: &str, url: &str, more: &str) -> String {
    format!(
        "[[sources.mqtt]]\nid = \"{id}\"\nurl = \"{url}\"\ntopics = [\"site/{id}\"]\ndecoder = \"barcode\"\nstation = \"pack-01\"\n{more}\n"
    )
}

/// Waits until the upstream status satisfies `ok`.
fn wait_upstream(agent: &Agent, what: &str, ok: impl Fn(&Value) -> bool) -> Result<Value> {
    wait_for(what, DEADLINE, || {
        let s = agent.status().ok()?;
        ok(&s["upstream"]).then_some(s)
    })
    .with_context(|| {
        format!(
            "status: {}\nagent log:\n{}",
            agent.status().map(|s| s.to_string()).unwrap_or_default(),
            agent.log()
        )
    })
}

fn codes(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["body"]["code"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn events_reach_central_over_server_only_tls_from_a_source_read_over_tls() -> Result<()> {
    let pki = Pki::make()?;
    let broker = Broker::start_with_ports(1, |p| pki.listener(p[0], "allow_anonymous true\n"))?;
    let tls_port = broker.ports[0];
    let sink = Collector::subscribe(broker.port, "edge/#")?;
    let device = Collector::subscribe(broker.port, "unused/#")?;
    let tls_url = format!("mqtts://127.0.0.1:{tls_port}");
    let ca = pki.path("ca.crt");
    let agent = Agent::start(&config(
        &format!("url = \"{tls_url}\"\nca_file = \"{}\"", ca.display()),
        &mqtt_source(
            "scanner-tls",
            &tls_url,
            &format!("ca_file = \"{}\"", ca.display()),
        ),
    ))?;
    agent.wait_source("scanner-tls", "open")?;
    let s = wait_upstream(&agent, "upstream connected over TLS", |u| {
        u["connected"] == true
    })?;
    ensure!(
        s["upstream"]["detail"] == format!("connected to {tls_url}"),
        "{s}"
    );

    let want: Vec<String> = (0..20).map(|i| format!("LPN{i:06}")).collect();
    for code in &want {
        device.publish("site/scanner-tls", code.as_str())?;
    }
    let events = sink.wait_events(want.len(), DEADLINE)?;
    ensure!(codes(&events) == want, "{:?}", codes(&events));
    ensure!(
        events.iter().all(|e| e["source"] == "scanner-tls"),
        "{events:?}"
    );
    Ok(())
}

#[test]
fn mutual_tls_delivers_with_a_client_certificate_and_says_why_without_one() -> Result<()> {
    let pki = Pki::make()?;
    let broker = Broker::start_with_ports(1, |p| {
        pki.listener(p[0], "allow_anonymous true\nrequire_certificate true\n")
    })?;
    let tls_port = broker.ports[0];
    let sink = Collector::subscribe(broker.port, "edge/#")?;
    let device = Collector::subscribe(broker.port, "unused/#")?;
    let tls_url = format!("mqtts://127.0.0.1:{tls_port}");
    let auth = format!(
        "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
        pki.path("ca.crt").display(),
        pki.path("client.crt").display(),
        pki.path("client.key").display()
    );
    let agent = Agent::start(&config(
        &format!("url = \"{tls_url}\"\n{auth}"),
        &mqtt_source("scanner-mtls", &tls_url, &auth),
    ))?;
    agent.wait_source("scanner-mtls", "open")?;
    wait_upstream(&agent, "upstream connected with mutual TLS", |u| {
        u["connected"] == true
    })?;
    let want: Vec<String> = (0..20).map(|i| format!("LPN{i:06}")).collect();
    for code in &want {
        device.publish("site/scanner-mtls", code.as_str())?;
    }
    let events = sink.wait_events(want.len(), DEADLINE)?;
    ensure!(codes(&events) == want, "{:?}", codes(&events));

    // The same broker, without a client certificate: not connected, and status says why.
    let bare = Agent::start(&format!(
        "{}\n",
        config(
            &format!(
                "url = \"{tls_url}\"\nclient_id = \"no-cert\"\nca_file = \"{}\"",
                pki.path("ca.crt").display()
            ),
            "",
        )
    ))?;
    let s = wait_upstream(&bare, "a reason for not connecting", |u| {
        u["connected"] == false && u["detail"] != "not connected yet"
    })?;
    let detail = s["upstream"]["detail"].as_str().unwrap_or("");
    ensure!(
        detail.starts_with(&format!("upstream broker {tls_url}: TLS: "))
            && detail.contains("client certificate")
            && detail.contains("upstream.cert_file"),
        "detail does not name the missing client certificate: {detail}"
    );
    Ok(())
}

#[test]
fn a_broker_certificate_from_another_ca_is_named_in_status_and_the_agent_keeps_running(
) -> Result<()> {
    let pki = Pki::make()?;
    let broker = Broker::start_with_ports(1, |p| pki.listener(p[0], "allow_anonymous true\n"))?;
    let tls_port = broker.ports[0];
    let device = Collector::subscribe(broker.port, "unused/#")?;
    let tls_url = format!("mqtts://127.0.0.1:{tls_port}");
    let mut agent = Agent::start(&config(
        &format!(
            "url = \"{tls_url}\"\nca_file = \"{}\"",
            pki.path("other-ca.crt").display()
        ),
        &mqtt_source("scanner-plain", &broker.url(), ""),
    ))?;
    let s = wait_upstream(&agent, "the TLS failure in status", |u| {
        u["connected"] == false && u["detail"] != "not connected yet"
    })?;
    let detail = s["upstream"]["detail"].as_str().unwrap_or("");
    ensure!(
        detail
            == format!(
                "upstream broker {tls_url}: TLS: invalid peer certificate: UnknownIssuer; check upstream.ca_file"
            ),
        "detail: {detail}"
    );
    ensure!(
        agent.log().contains("check upstream.ca_file"),
        "the log names it too:\n{}",
        agent.log()
    );

    // Still running: readings are stored and wait for the uplink.
    agent.wait_source("scanner-plain", "open")?;
    for i in 0..5 {
        device.publish("site/scanner-plain", format!("LPN{i:06}"))?;
    }
    wait_for("5 readings buffered", DEADLINE, || {
        (agent.status().ok()?["backlog"] == 5).then_some(())
    })?;
    let code = agent.signal(nix::sys::signal::Signal::SIGTERM)?;
    ensure!(code.success(), "exit after SIGTERM: {code:?}");
    Ok(())
}

#[test]
fn a_password_file_logs_in_to_the_site_and_central_and_the_password_never_shows() -> Result<()> {
    let secret = "Xy7-very-secret-pw";
    let wrong = "Wr0ng-secret-pw";
    let creds = tempfile::tempdir()?;
    let passwd = creds.path().join("mosquitto.passwd");
    let out = Command::new("mosquitto_passwd")
        .arg("-b")
        .arg("-c")
        .arg(&passwd)
        .args(["agent", secret])
        .output()
        .context("running mosquitto_passwd (package mosquitto)")?;
    ensure!(
        out.status.success(),
        "mosquitto_passwd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let broker = Broker::start_with_ports(1, |p| {
        format!(
            "listener {} 127.0.0.1\nallow_anonymous false\npassword_file {}\n",
            p[0],
            passwd.display()
        )
    })?;
    let auth_port = broker.ports[0];
    let sink = Collector::subscribe(broker.port, "edge/#")?;
    let device = Collector::subscribe(broker.port, "unused/#")?;

    let good = creds.path().join("agent.password");
    std::fs::write(&good, format!("{secret}\n"))?;
    chmod(&good, 0o600)?;
    let bad = creds.path().join("wrong.password");
    std::fs::write(&bad, format!("{wrong}\n"))?;
    chmod(&bad, 0o600)?;
    let auth_url = format!("mqtt://127.0.0.1:{auth_port}");
    let login = |file: &Path| {
        format!(
            "username = \"agent\"\npassword_file = \"{}\"",
            file.display()
        )
    };
    let text = config(
        &format!("url = \"{auth_url}\"\n{}", login(&good)),
        &format!(
            "{}{}",
            mqtt_source("scanner-auth", &auth_url, &login(&good)),
            mqtt_source("scanner-wrong", &auth_url, &login(&bad))
        ),
    );
    let agent = Agent::start(&text)?;
    agent.wait_source("scanner-auth", "open")?;
    wait_upstream(&agent, "upstream logged in", |u| u["connected"] == true)?;
    let s = wait_for("the wrong password in status", DEADLINE, || {
        let s = agent.status().ok()?;
        let d = s["sources"]["scanner-wrong"]["detail"]
            .as_str()?
            .to_string();
        d.contains("refused").then_some(d)
    })?;
    ensure!(
        s.contains("check sources.mqtt[1].username and sources.mqtt[1].password_file"),
        "{s}"
    );

    let want: Vec<String> = (0..10).map(|i| format!("LPN{i:06}")).collect();
    for code in &want {
        device.publish("site/scanner-auth", code.as_str())?;
    }
    let events = sink.wait_events(want.len(), DEADLINE)?;
    ensure!(codes(&events) == want, "{:?}", codes(&events));

    let socket = agent.socket.display().to_string();
    let (code, status_json, status_err) = run_cli(&["status", "--json", "--socket", &socket], &[])?;
    ensure!(code == 0, "status: {status_err}");
    let (_, status_text, _) = run_cli(&["status", "--socket", &socket], &[])?;
    let (code, check_out, check_err) = run_cli(
        &[
            "check-config",
            "--config",
            &agent.config.display().to_string(),
        ],
        &[],
    )?;
    ensure!(code == 0, "check-config: {check_out}{check_err}");
    for (what, text) in [
        ("the agent's log", agent.log()),
        ("status --json", status_json),
        ("status", status_text),
        ("check-config", format!("{check_out}{check_err}")),
    ] {
        ensure!(
            !text.contains(secret) && !text.contains(wrong),
            "a password shows in {what}:\n{text}"
        );
    }
    Ok(())
}

#[test]
fn check_config_names_a_missing_ca_file_and_warns_about_a_key_readable_by_others() -> Result<()> {
    let pki = Pki::make()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("agent.toml");
    let path_s = path.display().to_string();

    std::fs::write(&path, config("url = \"mqtts://127.0.0.1:8883\"", ""))?;
    let (code, out, err) = run_cli(&["check-config", "--config", &path_s], &[])?;
    ensure!(code == 2, "exit {code}: {out}{err}");
    ensure!(
        err.contains("  upstream.ca_file: required for mqtts://"),
        "stderr:\n{err}"
    );

    let key = pki.path("client.key");
    chmod(&key, 0o644)?;
    std::fs::write(
        &path,
        config(
            &format!(
                "url = \"mqtts://127.0.0.1:8883\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
                pki.path("ca.crt").display(),
                pki.path("client.crt").display(),
                key.display()
            ),
            "",
        ),
    )?;
    let (code, out, err) = run_cli(&["check-config", "--config", &path_s], &[])?;
    ensure!(code == 0, "exit {code}: {out}{err}");
    let want = format!(
        "warning: upstream.key_file: {} is readable by others (mode 0644); chmod 600 it",
        key.display()
    );
    ensure!(err.lines().any(|l| l == want), "stderr:\n{err}");
    let pem = std::fs::read_to_string(&key)?;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    ensure!(
        !out.contains(&body[..16]) && !err.contains(&body[..16]),
        "key material in check-config output"
    );

    // The key of another certificate: the pair is refused, naming both files.
    std::fs::write(
        &path,
        config(
            &format!(
                "url = \"mqtts://127.0.0.1:8883\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
                pki.path("ca.crt").display(),
                pki.path("client.crt").display(),
                pki.path("server.key").display()
            ),
            "",
        ),
    )?;
    let (code, out, err) = run_cli(&["check-config", "--config", &path_s], &[])?;
    ensure!(code == 2, "exit {code}: {out}{err}");
    ensure!(
        err.contains(&format!(
            "upstream.key_file: {}: is not the private key of {}; give the key that belongs to the certificate",
            pki.path("server.key").display(),
            pki.path("client.crt").display()
        )),
        "stderr:\n{err}"
    );
    Ok(())
}

#[test]
fn config_push_reaches_a_mutual_tls_broker_and_says_which_flag_is_missing_without_a_certificate(
) -> Result<()> {
    let pki = Pki::make()?;
    let broker = Broker::start_with_ports(1, |p| {
        pki.listener(p[0], "allow_anonymous true\nrequire_certificate true\n")
    })?;
    let tls_port = broker.ports[0];
    let keys = tempfile::tempdir()?;
    let (key, _) = config_keygen(keys.path(), "central.key")?;
    let (doc, _) = config_sign(keys.path(), &key, 4, "[upstream]\nreplay_rate = 100\n")?;
    let url = format!("mqtts://127.0.0.1:{tls_port}");
    let ca = pki.path("ca.crt").display().to_string();
    let cert = pki.path("client.crt").display().to_string();
    let client_key = pki.path("client.key").display().to_string();
    let doc = doc.to_string_lossy().to_string();
    let base = [
        "config",
        "push",
        "--url",
        &url,
        "--site",
        "dc-test-01",
        "--ca-file",
        &ca,
    ];

    let mut bare: Vec<&str> = base.to_vec();
    bare.push(&doc);
    let (code, _, err) = run_cli(&bare, &[])?;
    ensure!(
        code == 1 && err.contains("client certificate") && err.contains("--cert-file"),
        "without a client certificate: {code} {err}"
    );

    let mut full: Vec<&str> = base.to_vec();
    full.extend_from_slice(&["--cert-file", &cert, "--key-file", &client_key, &doc]);
    let (code, out, err) = run_cli(&full, &[])?;
    ensure!(code == 0, "{err}");
    ensure!(
        out.contains("pushed version 4 to edge/dc-test-01/config/set"),
        "{out}"
    );
    // Retained: a subscriber that comes later still gets it.
    let later = Collector::subscribe(broker.port, "edge/+/config/set")?;
    let got = wait_for("the retained document", DEADLINE, || {
        later.all().into_iter().next()
    })?;
    ensure!(got.json()["version"] == 4, "{:?}", got.json());
    Ok(())
}

#[test]
fn version_1_client_certificates_made_as_in_mosquittos_manual_deliver_over_mutual_tls_with_rsa_and_ec_keys(
) -> Result<()> {
    let pki = Pki::make()?;
    pki.manual_client("manual-rsa", "edge-agent-rsa", ManualKey::Rsa)?;
    pki.manual_client("manual-ec", "edge-agent-ec", ManualKey::Ec)?;
    let broker = Broker::start_with_ports(1, |p| {
        pki.listener(p[0], "allow_anonymous true\nrequire_certificate true\n")
    })?;
    let tls_port = broker.ports[0];
    let sink = Collector::subscribe(broker.port, "edge/#")?;
    let device = Collector::subscribe(broker.port, "unused/#")?;
    let tls_url = format!("mqtts://127.0.0.1:{tls_port}");
    let auth = |name: &str| {
        format!(
            "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
            pki.path("ca.crt").display(),
            pki.path(&format!("{name}.crt")).display(),
            pki.path(&format!("{name}.key")).display()
        )
    };
    // Upstream presents the RSA certificate, the source reading over TLS the EC one.
    let text = config(
        &format!("url = \"{tls_url}\"\n{}", auth("manual-rsa")),
        &mqtt_source("scanner-v1", &tls_url, &auth("manual-ec")),
    );
    let agent = Agent::start(&text)?;
    let (code, out, err) = run_cli(
        &[
            "check-config",
            "--config",
            &agent.config.display().to_string(),
        ],
        &[],
    )?;
    ensure!(code == 0, "check-config: exit {code}: {out}{err}");
    agent.wait_source("scanner-v1", "open")?;
    wait_upstream(
        &agent,
        "upstream connected with a v1 RSA certificate",
        |u| u["connected"] == true,
    )?;
    let want: Vec<String> = (0..20).map(|i| format!("LPN{i:06}")).collect();
    for code in &want {
        device.publish("site/scanner-v1", code.as_str())?;
    }
    let events = sink.wait_events(want.len(), DEADLINE)?;
    ensure!(codes(&events) == want, "{:?}", codes(&events));
    ensure!(
        events.iter().all(|e| e["source"] == "scanner-v1"),
        "{events:?}"
    );
    Ok(())
}

#[test]
fn check_config_names_the_real_fault_of_a_client_certificate_and_key() -> Result<()> {
    let pki = Pki::make()?;
    pki.manual_client("manual-rsa", "edge-agent-rsa", ManualKey::Rsa)?;
    pki.manual_client("manual-ec", "edge-agent-ec", ManualKey::Ec)?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("agent.toml");
    let path_s = path.display().to_string();
    let check = |cert: &Path, key: &Path| -> Result<(i32, String)> {
        std::fs::write(
            &path,
            config(
                &format!(
                    "url = \"mqtts://127.0.0.1:8883\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
                    pki.path("ca.crt").display(),
                    cert.display(),
                    key.display()
                ),
                "",
            ),
        )?;
        let (code, out, err) = run_cli(&["check-config", "--config", &path_s], &[])?;
        Ok((code, format!("{out}{err}")))
    };
    let mismatch = |key: &Path, cert: &Path| {
        format!(
            "upstream.key_file: {}: is not the private key of {}; give the key that belongs to the certificate",
            key.display(),
            cert.display()
        )
    };

    // Each v1 certificate with its own key passes; with the other's key, or with the key of a
    // v3 certificate, the pair is refused naming both files.
    for (cert, key, other) in [
        ("manual-rsa.crt", "manual-rsa.key", "manual-ec.key"),
        ("manual-ec.crt", "manual-ec.key", "manual-rsa.key"),
        ("manual-ec.crt", "manual-ec.key", "client.key"),
        ("client.crt", "client.key", "manual-ec.key"),
    ] {
        let (cert, key, other) = (pki.path(cert), pki.path(key), pki.path(other));
        let (code, text) = check(&cert, &key)?;
        ensure!(code == 0, "{}: exit {code}: {text}", cert.display());
        let (code, text) = check(&cert, &other)?;
        ensure!(
            code == 2 && text.contains(&mismatch(&other, &cert)),
            "{} with {}: exit {code}: {text}",
            cert.display(),
            other.display()
        );
        ensure!(
            !text.contains("check that the key belongs"),
            "the catch-all message: {text}"
        );
    }

    // The CA first, then the client certificate: the agent says to put the client's first.
    let reversed = dir.path().join("reversed.crt");
    std::fs::write(
        &reversed,
        format!(
            "{}{}",
            std::fs::read_to_string(pki.path("ca.crt"))?,
            std::fs::read_to_string(pki.path("manual-rsa.crt"))?
        ),
    )?;
    let (code, text) = check(&reversed, &pki.path("manual-rsa.key"))?;
    ensure!(
        code == 2
            && text.contains(&format!(
                "upstream.cert_file: {}: certificate 2 of 2 is the one of {}; put the client certificate first",
                reversed.display(),
                pki.path("manual-rsa.key").display()
            )),
        "exit {code}: {text}"
    );

    // A PEM block that is no X.509 certificate.
    let junk = dir.path().join("junk.crt");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n",
    )?;
    let (code, text) = check(&junk, &pki.path("manual-rsa.key"))?;
    ensure!(
        code == 2
            && text.contains(&format!(
                "upstream.cert_file: {}: its first certificate is not an X.509 certificate",
                junk.display()
            )),
        "exit {code}: {text}"
    );

    // Keys the agent cannot sign with are named for what they are.
    for (name, args, what) in [
        (
            "rsa1024.key",
            &["genrsa", "-out", "rsa1024.key", "1024"][..],
            "is an RSA key of 1024 bits",
        ),
        (
            "p521.key",
            &[
                "ecparam",
                "-genkey",
                "-name",
                "secp521r1",
                "-noout",
                "-out",
                "p521.key",
            ][..],
            "is an ECDSA key on P-521 (secp521r1)",
        ),
        (
            "ed448.key",
            &["genpkey", "-algorithm", "ed448", "-out", "ed448.key"][..],
            "is an Ed448 key",
        ),
    ] {
        pki.openssl(args)?;
        let key = pki.path(name);
        let (code, text) = check(&pki.path("manual-rsa.crt"), &key)?;
        ensure!(
            code == 2
                && text.contains(&format!(
                    "upstream.key_file: {}: {what}, which the agent cannot sign with; use an RSA key of 2048 to 4096 bits, an ECDSA key on P-256 or P-384, or an Ed25519 key",
                    key.display()
                )),
            "{name}: exit {code}: {text}"
        );
    }
    Ok(())
}
