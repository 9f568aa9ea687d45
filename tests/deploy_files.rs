//! The deployment files agree with the server and with each other: the
//! systemd unit passes `systemd-analyze verify` and waits longer than the
//! drain, its example settings pass `wsnotify check-config`, compose's grace
//! period covers its drain, and the image's healthcheck and stop signal are
//! the ones `docs/DEPLOY.md` describes. (The unit's hardening cannot be run
//! here, without systemd as PID 1: it is verified, not exercised.)

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `NAME=value` lines, comments and blanks skipped.
fn assignments(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn seconds(value: &str) -> f64 {
    let digits = value.trim_end_matches('s');
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{value:?} is not seconds"))
}

#[test]
fn the_systemd_unit_verifies_and_outwaits_the_drain() {
    let unit = read("deploy/wsnotify.service");
    let settings = assignments(&read("deploy/wsnotify.env"));
    let service = assignments(&unit);
    assert_eq!(service["KillSignal"], "SIGTERM", "SIGTERM starts the drain");
    let drain = seconds(&settings["SHUTDOWN_TIMEOUT"]);
    let stop = seconds(&service["TimeoutStopSec"]);
    assert!(
        stop > drain,
        "TimeoutStopSec {stop} must exceed SHUTDOWN_TIMEOUT {drain}, or systemd SIGKILLs the drain"
    );
    assert!(service.contains_key("LimitNOFILE"));
    assert_eq!(
        service["ExecStartPre"], "/usr/local/bin/wsnotify check-config",
        "a bad setting fails before the old process stops"
    );

    // systemd's own check, on the unit with this build's binary and the
    // example settings in place of the installed paths.
    let dir = std::env::temp_dir().join(format!("wsnotify-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let env_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/wsnotify.env");
    let local = unit
        .replace("/usr/local/bin/wsnotify", env!("CARGO_BIN_EXE_wsnotify"))
        .replace(
            "EnvironmentFile=/etc/wsnotify/wsnotify.env",
            &format!("EnvironmentFile={}", env_file.display()),
        );
    let path = dir.join("wsnotify.service");
    std::fs::write(&path, local).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (apt-get install systemd; scripts/test-deps.sh does)");
    let _ = std::fs::remove_dir_all(&dir);
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify complains:\n{said}"
    );
}

#[test]
fn the_example_settings_pass_check_config() {
    let settings = assignments(&read("deploy/wsnotify.env"));
    let out = Command::new(env!("CARGO_BIN_EXE_wsnotify"))
        .arg("check-config")
        .env_clear()
        .envs(&settings)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deploy/wsnotify.env: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And check-config does refuse a bad one, so the pass above means something.
    let out = Command::new(env!("CARGO_BIN_EXE_wsnotify"))
        .arg("check-config")
        .env_clear()
        .envs(&settings)
        .env("SHUTDOWN_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "SHUTDOWN_TIMEOUT=soon passed check-config"
    );
}

#[test]
fn compose_waits_out_its_drain_and_the_image_probes_ready() {
    let compose = read("deploy/compose.yaml");
    let default_of = |name: &str| -> f64 {
        let key = format!("${{{name}:-");
        let start = compose
            .find(&key)
            .unwrap_or_else(|| panic!("{name} in compose.yaml"))
            + key.len();
        let end = start + compose[start..].find('}').unwrap();
        seconds(&compose[start..end])
    };
    assert!(
        default_of("STOP_GRACE_PERIOD") > default_of("SHUTDOWN_TIMEOUT"),
        "stop_grace_period must exceed SHUTDOWN_TIMEOUT"
    );
    assert!(compose.contains("\"/usr/local/bin/wsnotify\", \"healthcheck\""));
    let dockerfile = read("deploy/Dockerfile");
    for line in [
        "STOPSIGNAL SIGTERM",
        "CMD [\"/usr/local/bin/wsnotify\", \"healthcheck\"]",
        "USER 65532:65532",
        "ENTRYPOINT [\"/usr/local/bin/wsnotify\"]",
    ] {
        assert!(dockerfile.contains(line), "deploy/Dockerfile lost `{line}`");
    }
}
