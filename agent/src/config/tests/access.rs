//! Broker access: URLs, TLS and credential files, client ids.

use std::path::Path;

use super::*;

#[test]
fn mqtt_urls_need_scheme_host_and_port() {
    assert_eq!(
        parse_mqtt_url("mqtt://10.0.0.5:1884"),
        Ok(BrokerAddr {
            host: "10.0.0.5".into(),
            port: 1884,
            tls: false
        })
    );
    assert_eq!(parse_mqtt_url("mqtt://broker").map(|a| a.port), Ok(1883));
    // IPv6 in brackets, with and without a port (the colons inside are the address's).
    assert_eq!(
        parse_mqtt_url("mqtt://[::1]").map(|a| (a.host, a.port)),
        Ok(("::1".to_string(), 1883))
    );
    assert_eq!(
        parse_mqtt_url("mqtts://[fd00::5]:18883").map(|a| (a.host, a.port)),
        Ok(("fd00::5".to_string(), 18883))
    );
    assert_eq!(
        parse_mqtt_url("mqtts://central.example.com"),
        Ok(BrokerAddr {
            host: "central.example.com".into(),
            port: 8883,
            tls: true
        })
    );
    assert_eq!(
        parse_mqtt_url("mqtts://127.0.0.1:18883").map(|a| (a.port, a.tls)),
        Ok((18883, true))
    );
    assert!(matches!(
        parse_mqtt_url("tcp://broker:1883"),
        Err(UrlError::Scheme { .. })
    ));
    assert!(matches!(
        parse_mqtt_url("mqtt://:1883"),
        Err(UrlError::NoHost { .. })
    ));
    assert!(matches!(
        parse_mqtt_url("mqtt://user:pw@broker:1883"),
        Err(UrlError::Extra { .. })
    ));
    assert_eq!(
        parse_mqtt_url("mqtt://broker:port").map_err(|e| e.to_string()),
        Err("\"mqtt://broker:port\": port \"port\" is not a number from 1 to 65535".into())
    );
}

fn tls_problems(upstream_extra: &str, dir: &Path) -> Vec<String> {
    let text = format!("[site]\nid = \"dc-fra-01\"\n[upstream]\n{upstream_extra}\n")
        .replace("{dir}", &dir.display().to_string());
    problems(&text)
}

#[test]
fn tls_and_credential_keys_are_checked_with_their_keys() -> std::io::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("not-pem.crt"), "hello\n")?;
    std::fs::write(
        dir.path().join("broken.key"),
        "-----BEGIN PRIVATE KEY-----\nnot base64 at all!\n",
    )?;
    let cases: &[(&str, &[&str])] = &[
        (
            "url = \"mqtts://central:8883\"",
            &["upstream.ca_file: required for mqtts://"],
        ),
        (
            "url = \"mqtts://central\"\nca_file = \"{dir}/missing.pem\"",
            &["upstream.ca_file: {dir}/missing.pem: does not exist; check the path"],
        ),
        (
            "url = \"mqtts://central\"\nca_file = \"{dir}/not-pem.crt\"\ncert_file = \"{dir}/not-pem.crt\"",
            &[
                "upstream.ca_file: {dir}/not-pem.crt: holds no PEM certificate",
                "upstream.key_file: required with upstream.cert_file",
            ],
        ),
        (
            "url = \"mqtts://central\"\nca_file = \"{dir}/not-pem.crt\"\ncert_file = \"{dir}/not-pem.crt\"\nkey_file = \"{dir}/broken.key\"",
            &[
                "upstream.ca_file: {dir}/not-pem.crt: holds no PEM certificate",
                "upstream.cert_file: {dir}/not-pem.crt: holds no PEM certificate",
                "upstream.key_file: {dir}/broken.key: is not a valid PEM private key",
            ],
        ),
        (
            "url = \"mqtts://central\"\nca_file = \"{dir}/not-pem.crt\"\nkey_file = \"{dir}/not-pem.crt\"",
            &[
                "upstream.ca_file: {dir}/not-pem.crt: holds no PEM certificate",
                "upstream.cert_file: required with upstream.key_file",
            ],
        ),
        (
            "url = \"mqtt://central\"\nca_file = \"{dir}/ca.pem\"\nkey_file = \"{dir}/k.pem\"",
            &[
                "upstream.ca_file: only used with TLS, but upstream.url is mqtt://",
                "upstream.key_file: only used with TLS, but upstream.url is mqtt://",
            ],
        ),
        (
            "url = \"mqtt://central\"\npassword_file = \"{dir}/missing-password\"",
            &[
                "upstream.username: required with password_file",
                "upstream.password_file: {dir}/missing-password: does not exist",
            ],
        ),
    ];
    let d = dir.path().display().to_string();
    for (extra, want) in cases {
        let got = tls_problems(extra, dir.path());
        for w in *want {
            let w = w.replace("{dir}", &d);
            assert!(
                got.iter().any(|g| g.starts_with(&w)),
                "{extra}: missing {w:?} in:\n{}",
                got.join("\n")
            );
        }
        assert_eq!(got.len(), want.len(), "{extra}: {}", got.join("\n"));
    }
    Ok(())
}

#[test]
fn a_password_file_readable_by_others_is_a_warning_that_never_shows_the_password(
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let pw = dir.path().join("password");
    std::fs::write(&pw, "pa55word-xyz\n")?;
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644))?;
    let text = format!(
        "[site]\nid = \"dc-fra-01\"\n[upstream]\nurl = \"mqtt://central\"\nusername = \"agent\"\npassword_file = \"{}\"\n",
        pw.display()
    );
    let cfg = load_str(&text, "test").unwrap_or_else(|p| panic!("{p}"));
    let warnings: Vec<String> = cfg.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        [format!(
            "upstream.password_file: {} is readable by others (mode 0644); chmod 600 it",
            pw.display()
        )]
    );
    assert!(!format!("{cfg:?}").contains("pa55word"));

    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600))?;
    let cfg = load_str(&text, "test").unwrap_or_else(|p| panic!("{p}"));
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);

    std::fs::write(&pw, "\n")?;
    let got = problems(&text);
    assert!(
        got.iter()
            .any(|g| g.starts_with("upstream.password_file:") && g.contains("first line is empty")),
        "{got:?}"
    );
    Ok(())
}

#[test]
fn two_mqtt_sources_with_one_client_id_on_one_broker_are_refused() {
    let p = problems(
        r#"
[site]
id = "dc-test-01"
[upstream]
url = "mqtt://central:1883"
[[stations]]
id = "pack-01"
role = "packing"
[[sources.mqtt]]
id = "a"
url = "mqtt://site:1883"
topics = ["a"]
decoder = "barcode"
station = "pack-01"
client_id = "shared"
[[sources.mqtt]]
id = "b"
url = "mqtt://site:1883"
topics = ["b"]
decoder = "barcode"
station = "pack-01"
client_id = "shared"
[[sources.mqtt]]
id = "c"
url = "mqtt://other-site:1883"
topics = ["c"]
decoder = "barcode"
station = "pack-01"
client_id = "shared"
"#,
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with(
            "sources.mqtt[1].client_id: \"shared\" is also the client id of sources.mqtt[0]"
        ),
        "{p:?}"
    );
}
