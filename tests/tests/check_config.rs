//! `edge-agent check-config` on the built binary: one run lists every problem of a file.

use anyhow::{ensure, Result};
use edge_tests::run_cli;

/// Keys that do not read (an unknown decoder, unknown keys, an unknown storage policy) do not
/// hide each other nor the semantic problems of the same or other entries.
#[test]
fn check_config_lists_unreadable_keys_and_invalid_values_in_one_run() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        r#"
[site]
id = "dc-test-01"
[storage]
on_full = "panic"
[upstream]
url = "mqtt://127.0.0.1:1883"
[[stations]]
id = "pack-01"
role = "packing"
[[sources.serial]]
id = "scanner-1"
path = "/dev/ttyUSB0"
baud = 12345
decoder = "nope"
station = "pack-09"
[[sources.serial]]
id = "scanner-2"
path = "/dev/ttyUSB1"
baud = 9600
bogus = 1
colour = "red"
decoder = "barcode"
station = "pack-01"
[[sources.mqtt]]
id = "scanner-2"
url = "mqtt://127.0.0.1:1883"
topics = ["t"]
decoder = "barcode"
"#,
    )?;
    let path = path.display().to_string();
    let (code, out, err) = run_cli(&["check-config", "--config", &path], &[])?;
    ensure!(code == 2, "check-config exit {code}:\n{out}{err}");
    let want = [
        "storage.on_full: \"panic\" is not a valid value for on_full; use one of drop_oldest, reject_new",
        "sources.serial[0].decoder: \"nope\" is not a decoder; use one of barcode, scale.mt_sics,",
        "sources.serial[0].baud: 12345 is not a standard rate",
        "sources.serial[0].station: \"pack-09\" is not a station",
        "sources.serial[1].bogus: unknown key `bogus`; the source's keys are id, path, baud,",
        "sources.serial[1].colour: unknown key `colour`; the source's keys are id, path, baud,",
        "sources.mqtt[0].id: \"scanner-2\" is used by another source",
    ];
    for w in want {
        ensure!(
            err.lines().any(|l| l.trim_start().starts_with(w)),
            "missing {w:?} in:\n{err}"
        );
    }
    ensure!(
        err.contains(&format!("has {} problem(s):", want.len())),
        "exactly these problems, no others:\n{err}"
    );
    Ok(())
}
