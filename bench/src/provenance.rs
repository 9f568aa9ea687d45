//! Where a report's figures come from: the work tree's commit and when the
//! binaries under test were built, for the first line every benchmark
//! prints.

use std::process::Command;

/// The work tree's short commit, followed by ` with uncommitted changes in
/// src/` when the server's sources differ from it (empty outside a git
/// checkout).
pub fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = git(&["status", "--porcelain", "--", "src"]);
    if dirty.is_empty() {
        commit
    } else {
        format!("{commit} with uncommitted changes in src/")
    }
}

/// When the file at `path` was last modified, in Unix seconds; `None` if
/// there is no such file.
pub fn built_unix_s(path: &str) -> Option<u64> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}
