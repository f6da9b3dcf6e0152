//! An HTTP upstream (`upstream.url = "https://…"`): its URL, defaults, token and control
//! broker.

use super::*;

fn http_upstream(upstream: &str, rest: &str) -> String {
    format!("[site]\nid = \"dc-fra-01\"\n[upstream]\n{upstream}\n{rest}")
}

#[test]
fn http_urls_give_host_port_path_and_the_host_header() {
    let a = parse_http_url("https://erp.example.com/edge/events?site=fra")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (
            a.host.as_str(),
            a.port,
            a.tls,
            a.authority.as_str(),
            a.path.as_str()
        ),
        (
            "erp.example.com",
            443,
            true,
            "erp.example.com",
            "/edge/events?site=fra"
        )
    );
    let a = parse_http_url("https://erp.example.com:8443").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (a.port, a.authority.as_str(), a.path.as_str()),
        (8443, "erp.example.com:8443", "/")
    );
    let a = parse_http_url("http://[::1]:8080/in").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (a.host.as_str(), a.port, a.authority.as_str()),
        ("::1", 8080, "[::1]:8080")
    );
    let a = parse_http_url("http://localhost?x=1").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((a.port, a.path.as_str()), (80, "/?x=1"));
}

#[test]
fn http_urls_refuse_plain_text_beyond_loopback_credentials_and_fragments() {
    for (url, want) in [
        ("http://erp.example.com/in", "unencrypted"),
        ("http://10.0.0.5/in", "unencrypted"),
        ("https://user:pw@erp.example.com/in", "upstream.token_file"),
        ("https://erp.example.com/in#top", "fragment"),
        ("https://erp.example.com:0/in", "needs a host"),
        ("https://erp.example.com:https/in", "port"),
        ("https:///in", "needs a host"),
        ("ftp://erp.example.com", "not an HTTP URL"),
    ] {
        match parse_http_url(url) {
            Err(e) => assert!(e.to_string().contains(want), "{url}: {e}"),
            Ok(a) => panic!("{url}: accepted as {a:?}"),
        }
    }
}

#[test]
fn an_http_upstream_defaults_to_json_in_batches_of_100() {
    let cfg = load_str(
        &http_upstream("url = \"http://127.0.0.1:8080/events\"", ""),
        "test",
    )
    .unwrap_or_else(|p| panic!("{p}"));
    assert!(cfg.upstream.is_http());
    assert_eq!(cfg.upstream.format(), Format::Json);
    assert_eq!(cfg.upstream.batch_size(), 100);
    let cfg = load_str(
        &http_upstream(
            "url = \"http://127.0.0.1:8080/events\"\nformat = \"cloudevents\"\nbatch = 10",
            "[control]\nbroker = \"mqtt://127.0.0.1:1883\"\n",
        ),
        "test",
    )
    .unwrap_or_else(|p| panic!("{p}"));
    assert_eq!(cfg.upstream.format(), Format::CloudEvents);
    assert_eq!(cfg.upstream.batch_size(), 10);
}

#[test]
fn cbor_a_missing_ca_and_mqtt_credentials_without_a_control_broker_are_refused() {
    assert_problems(
        &http_upstream(
            "url = \"https://erp.example.com/in\"\nformat = \"cbor\"\nusername = \"edge\"",
            "",
        ),
        &[
            "upstream.format: cbor is for MQTT",
            "upstream.ca_file: ",
            "upstream.username: only used for the MQTT control broker",
        ],
    );
}

#[test]
fn http_only_keys_are_refused_with_an_mqtt_upstream_and_a_bad_control_broker_is_named() {
    assert_problems(
        &format!(
            "{MINIMAL}token_file = \"/etc/edge-agent/token\"\n[control]\nbroker = \"mqtt://x\"\n"
        ),
        &[
            "upstream.token_file: only used with an HTTP upstream",
            "control.broker: only used with an HTTP upstream",
        ],
    );
    assert_problems(
        &http_upstream(
            "url = \"http://127.0.0.1:8080/\"",
            "[control]\nbroker = \"http://broker\"\n",
        ),
        &["control.broker: \"http://broker\" is not an MQTT URL"],
    );
}

#[test]
fn a_token_file_that_cannot_be_read_is_named() {
    let got = assert_problems(
        &http_upstream(
            "url = \"http://127.0.0.1:8080/\"\ntoken_file = \"/nonexistent/edge-token\"",
            "",
        ),
        &["upstream.token_file: "],
    );
    assert!(got[0].contains("/nonexistent/edge-token"), "{got:?}");
}
