//! `control.http`, `control.http_token_file` and `control.health_grace`.

use std::os::unix::fs::PermissionsExt;

use super::*;

fn with_control(control: &str) -> String {
    format!("{MINIMAL}[control]\n{control}\n")
}

#[test]
fn a_non_loopback_address_without_a_token_file_is_refused_naming_the_key_and_the_fix() {
    let got = assert_problems(
        &with_control("http = \"0.0.0.0:9180\""),
        &["control.http: 0.0.0.0:9180 is not a loopback address"],
    );
    assert!(got[0].contains("set control.http_token_file"), "{got:?}");
}

#[test]
fn a_non_loopback_address_with_a_readable_token_file_is_accepted() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("{e}"));
    let text = with_control(&format!(
        "http = \"0.0.0.0:9180\"\nhttp_token_file = {:?}",
        token.display().to_string()
    ));
    let cfg = load_str(&text, "test").unwrap_or_else(|p| panic!("{p}"));
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("{e}"));
    let cfg = load_str(&text, "test").unwrap_or_else(|p| panic!("{p}"));
    assert!(
        cfg.warnings
            .iter()
            .any(|w| w.key == "control.http_token_file" && w.message.contains("chmod 600")),
        "{:?}",
        cfg.warnings
    );
}

#[test]
fn a_missing_or_empty_token_file_and_a_bad_address_are_each_named() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap_or_else(|e| panic!("{e}"));
    assert_problems(
        &with_control(&format!(
            "http = \"localhost:80\"\nhttp_token_file = {:?}",
            empty.display().to_string()
        )),
        &[
            "control.http_token_file: ",
            "control.http: \"localhost:80\" is not an address",
        ],
    );
    assert_problems(
        &with_control("http_token_file = \"/nonexistent/token\"\nhealth_grace = \"0s\""),
        &["control.http_token_file: ", "control.health_grace: 0s"],
    );
}

#[test]
fn an_empty_address_turns_the_server_off_and_loopback_needs_no_token() {
    let cfg = load_str(&with_control("http = \"\""), "test").unwrap_or_else(|p| panic!("{p}"));
    assert!(cfg.control.http_addr().is_none());
    let cfg = load_str(
        &with_control("http = \"[::1]:9180\"\nhealth_grace = \"2s\""),
        "test",
    )
    .unwrap_or_else(|p| panic!("{p}"));
    assert!(matches!(cfg.control.http_addr(), Some(Ok(a)) if a.ip().is_loopback()));
    assert_eq!(cfg.control.health_grace.0, Duration::from_secs(2));
}
