//! The shape of `src/`, checked: the module graph has no cycle, every file
//! says in its opening comment what it owns, and no file grows past about
//! 500 lines of non-test code (docs/ARCHITECTURE.md, "Modules").
//!
//! The graph is read from the source itself, one node per file: an edge
//! from module A to module B for every `crate::…`, `super::…` or `self::…`
//! path in A's code (in `use` lines or inline) that names B or an item of
//! B, resolved to the longest module prefix. A child's paths to its own
//! ancestors are not edges: `hub::rooms` refining `hub`, or the parts of
//! `broker::redis` implementing the broker, are one noun split into files,
//! and Rust gives children their parent's internals on purpose. Paths from
//! a parent to its children, between siblings and across the crate are.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest file, counted in lines before its `#[cfg(test)]` module.
const MAX_CODE_LINES: usize = 520;

fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out.sort();
    out
}

/// `src/hub/rooms.rs` → `["hub", "rooms"]`; `src/hub/mod.rs` → `["hub"]`;
/// `src/lib.rs` and `src/main.rs` → `[]`, the crate root.
fn module_path(path: &Path) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rel = path.strip_prefix(&src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
    {
        parts.pop();
    }
    parts
}

/// The code before the file's test module, without comments.
fn code(text: &str) -> String {
    let body = text.split("#[cfg(test)]").next().unwrap_or(text);
    body.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths after `marker` in `code`, as segment lists: `a::b::C` gives
/// `[a, b, C]`; a group `{a::b, c}` gives `[a, b]` and `[c]`.
fn paths_after(code: &str, marker: &str) -> Vec<Vec<String>> {
    fn segments(path: &str) -> Vec<String> {
        path.split("::")
            .map(|s| {
                s.trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|s| !s.is_empty())
            .collect()
    }
    let mut out = Vec::new();
    for (at, _) in code.match_indices(marker) {
        // `super::` inside `crate::a::super::` never happens; skip matches
        // that are the tail of a longer path (`foo::self::`).
        if code[..at].ends_with("::") {
            continue;
        }
        let rest = &code[at + marker.len()..];
        // The path up to the first character that cannot continue it.
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let (head, tail) = rest.split_at(end);
        let head = head.trim_end_matches("::");
        let mut prefix = segments(head);
        if tail.starts_with('{') && rest[..end].ends_with("::") {
            let group = tail[1..].split('}').next().unwrap_or("");
            for member in group.split(',') {
                let mut path = prefix.clone();
                path.extend(segments(member));
                out.push(path);
            }
        } else if !prefix.is_empty() {
            out.push(std::mem::take(&mut prefix));
        }
    }
    out
}

/// The module `path` (relative to the crate root) lands in: its longest
/// prefix that is a module.
fn resolve(path: &[String], modules: &BTreeSet<Vec<String>>) -> Vec<String> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|prefix| modules.contains(prefix))
        .unwrap_or_default()
}

/// Every module's edges, per the rule above.
fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let files = sources();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(p, _)| module_path(p)).collect();
    let mut graph = BTreeMap::new();
    for (path, text) in &files {
        let me = module_path(path);
        let code = code(text);
        let mut targets = BTreeSet::new();
        for p in paths_after(&code, "crate::") {
            targets.insert(resolve(&p, &modules));
        }
        if let Some((_, parent)) = me.split_last() {
            for p in paths_after(&code, "super::") {
                let full: Vec<String> = parent.iter().cloned().chain(p).collect();
                targets.insert(resolve(&full, &modules));
            }
        }
        for p in paths_after(&code, "self::") {
            let full: Vec<String> = me.iter().cloned().chain(p).collect();
            targets.insert(resolve(&full, &modules));
        }
        // A module's own paths and its paths to its ancestors are no edges.
        targets.retain(|t| !me.starts_with(t));
        graph.insert(me, targets);
    }
    graph
}

/// Panics with the cycle if `graph` has one.
fn assert_acyclic(graph: &BTreeMap<String, BTreeSet<String>>, what: &str) {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
        what: &str,
    ) {
        if let Some(at) = path.iter().position(|n| n == node) {
            panic!("{what}: cycle {} -> {node}", path[at..].join(" -> "));
        }
        if done.contains(node) {
            return;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, done, path, what);
        }
        path.pop();
        done.insert(node.to_owned());
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, graph, &mut done, &mut Vec::new(), what);
    }
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = graph();
    let name = |m: &Vec<String>| {
        if m.is_empty() {
            "crate".to_owned()
        } else {
            m.join("::")
        }
    };
    let named: BTreeMap<String, BTreeSet<String>> = graph
        .iter()
        .map(|(m, edges)| (name(m), edges.iter().map(name).collect()))
        .collect();
    // The reader must see the edges it is meant to see, or the check below
    // proves nothing.
    for (from, to) in [
        ("session", "node"),
        ("node", "broker"),
        ("upgrade", "http::reply"),
        ("broker::redis::presence", "broker::redis::subscriptions"),
        ("broker::redis::link", "broker::redis::partitions"),
        ("hub", "outbox"),
    ] {
        assert!(
            named.get(from).is_some_and(|e| e.contains(to)),
            "the reader misses {from} -> {to}: {named:#?}"
        );
    }
    assert!(
        !named["upgrade"].contains("http"),
        "upgrade must not import the router"
    );
    assert_acyclic(&named, "src/");
}

#[test]
fn every_file_opens_with_what_it_owns_and_stays_short() {
    for (path, text) in sources() {
        let name = path.display();
        assert!(
            text.trim_start().starts_with("//!"),
            "{name} has no opening `//!` comment"
        );
        let body = text.split("#[cfg(test)]").next().unwrap_or(&text);
        let lines = body.lines().count();
        assert!(
            lines <= MAX_CODE_LINES,
            "{name} has {lines} lines before its tests (at most {MAX_CODE_LINES})"
        );
    }
}
