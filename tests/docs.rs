//! The documentation keeps up with the code: every setting is in `--help`,
//! the README's table and (those of the protocol) docs/PROTOCOL.md; every
//! error code, close code, reason and metric the server can produce is in
//! docs/PROTOCOL.md.

use std::path::Path;
use std::process::Command;

use wsnotify::metrics::Metrics;
use wsnotify::protocol::Close;
use wsnotify::protocol::json::{ErrorCode, Reason};

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The environment variables of `Config`, from its source, less the
/// hidden test hook.
fn settings() -> Vec<String> {
    let source = read("src/config.rs");
    let names: Vec<String> = source
        .match_indices("env = \"")
        .map(|(at, m)| {
            let rest = &source[at + m.len()..];
            rest[..rest.find('"').unwrap()].to_owned()
        })
        .filter(|name| !name.starts_with("WSNOTIFY_TEST_"))
        .collect();
    assert!(names.len() > 25, "read too few settings: {names:?}");
    names
}

#[test]
fn every_setting_is_in_help_and_in_the_readme() {
    let help = Command::new(env!("CARGO_BIN_EXE_wsnotify"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let readme = read("README.md");
    for name in settings() {
        assert!(
            help.contains(&format!("[env: {name}")),
            "{name} is not in --help"
        );
        assert!(
            readme.contains(&format!("| `{name}` |")),
            "{name} is not in the README's table"
        );
    }
    assert!(!help.contains("WSNOTIFY_TEST_"), "the test hook is hidden");
}

#[test]
fn the_protocol_documents_its_settings_codes_reasons_and_metrics() {
    let protocol = read("docs/PROTOCOL.md");
    for name in [
        "HISTORY_SIZE",
        "HISTORY_TTL",
        "HISTORY_MAX_BYTES",
        "HISTORY_META_TTL",
        "DRAIN_RECONNECT_SPREAD",
        "INBOX_CLAIM_AFTER",
    ] {
        assert!(
            protocol.contains(&format!("| `{name}` |")),
            "{name} is not in PROTOCOL.md's table"
        );
    }
    for code in ErrorCode::ALL {
        assert!(
            protocol.contains(&format!("| `{}` |", code.as_str())),
            "error code {code:?}"
        );
    }
    for reason in Reason::ALL {
        assert!(
            protocol.contains(&format!("| `{}` |", reason.as_str())),
            "reason {reason:?}"
        );
    }
    for close in [
        Close::Normal,
        Close::GoingAway,
        Close::Protocol,
        Close::Unsupported,
        Close::InvalidPayload,
        Close::RateLimited,
        Close::Abuse,
        Close::TooBig,
        Close::IdleTimeout,
        Close::SlowConsumer,
        Close::InsufficientState,
    ] {
        assert!(
            protocol.contains(&format!("| {} |", close.code())),
            "close {close:?}"
        );
    }
    let rendered = Metrics::new().render();
    for line in rendered.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        let documented = [name.to_owned(), format!("{name}_total")]
            .iter()
            .any(|n| protocol.contains(&format!("`{n}")));
        assert!(documented, "metric {name} is not in PROTOCOL.md");
    }
}
