//! `deploy/grafana/wsnotify.json`, the Grafana dashboard, checked against
//! what a running binary serves at `GET /metrics`: every metric a panel's
//! query (or a template variable) names is a series the server exports,
//! with the suffix its type gives it (`_total` for counters, `_bucket`,
//! `_sum`, `_count` for the histogram); every label a query matches or
//! groups by is one those series carry (or Prometheus' own `instance` and
//! `job`), and every `label="value"` matches a series; `rate`, `irate` and
//! `increase` see only counters and histogram series; `histogram_quantile`
//! sees buckets grouped by `le`; every metric the server exports is on the
//! dashboard; the panels use the `${DS_PROMETHEUS}` input. The server runs
//! on a real Redis Cluster, so that the Redis and cluster series exist, and
//! the series that exist only after an event (`wsnotify_resumes_total`, by
//! outcome) are produced first. The checker itself is shown to catch planted
//! mistakes.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use hyper::Method;
use serde_json::{Value, json};
use support::process::Proc;
use support::*;

/// Labels Prometheus attaches to every scraped series.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];
const GROUPINGS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const KEYWORDS: [&str; 7] = ["and", "or", "unless", "bool", "offset", "inf", "nan"];
const RATES: [&str; 3] = ["rate", "irate", "increase"];

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/wsnotify.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// What `/metrics` holds: each family's type, and each series' label sets.
#[derive(Debug, Default)]
struct Exported {
    families: BTreeMap<String, String>,
    series: BTreeMap<String, Vec<BTreeMap<String, String>>>,
}

impl Exported {
    fn parse(text: &str) -> Exported {
        let mut out = Exported::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
                out.families.insert(name.to_owned(), kind.to_owned());
            } else if !line.starts_with('#') && !line.is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                let labels = match line[end..].strip_prefix('{') {
                    Some(rest) => sample_labels(&rest[..rest.find('}').expect("closing }")]),
                    None => BTreeMap::new(),
                };
                out.series
                    .entry(line[..end].to_owned())
                    .or_default()
                    .push(labels);
            }
        }
        out
    }

    /// The family and type of series `name`, if its suffix fits the type.
    fn family(&self, name: &str) -> Option<(&str, &str)> {
        let typed = |family: &str, kinds: &[&str]| {
            self.families
                .get_key_value(family)
                .filter(|(_, kind)| kinds.contains(&kind.as_str()))
                .map(|(f, k)| (f.as_str(), k.as_str()))
        };
        let suffixed =
            |suffix: &str, kinds: &[&str]| name.strip_suffix(suffix).and_then(|f| typed(f, kinds));
        typed(name, &["gauge", "unknown"])
            .or_else(|| suffixed("_total", &["counter"]))
            .or_else(|| suffixed("_bucket", &["histogram"]))
            .or_else(|| suffixed("_sum", &["histogram", "summary"]))
            .or_else(|| suffixed("_count", &["histogram", "summary"]))
    }
}

/// `a="x",b="y"` (no escapes in wsnotify's label values).
fn sample_labels(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').expect("label=value");
            (k.to_owned(), v.trim_matches('"').to_owned())
        })
        .collect()
}

/// What one PromQL expression uses.
#[derive(Debug, Default)]
struct Query {
    /// Each metric named.
    metrics: Vec<Use>,
    /// Every label name matched or grouped by.
    labels: BTreeSet<String>,
    /// `metric{label="literal"}` matchers.
    equalities: Vec<(String, String, String)>,
}

/// One metric named in a query.
#[derive(Debug)]
struct Use {
    name: String,
    /// The calls around it, outermost first.
    calls: Vec<String>,
    /// Whether an aggregation between it and the innermost
    /// `histogram_quantile` around it loses `le` (`sum(…)`, `sum by (instance)`).
    drops_le: bool,
}

/// An open parenthesis: the call it belongs to (empty for grouping), and
/// for an aggregation whether its grouping keeps `le`.
type Call = (String, Option<bool>);

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// A PromQL tokenizer, enough for dashboards: strings, ranges, Grafana
/// variables and numbers are skipped; an identifier before `(` is a call,
/// one of the grouping keywords takes a label list, aggregations may carry
/// their grouping before their `(`; any other identifier names a metric.
fn parse(expr: &str) -> Query {
    let c: Vec<char> = expr.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let skip_ws = |mut i: usize| {
        while at(i).is_whitespace() {
            i += 1;
        }
        i
    };
    let word_at = |mut i: usize| {
        let start = i;
        while is_ident(at(i)) {
            i += 1;
        }
        (c[start..i].iter().collect::<String>(), i)
    };
    let close = |mut i: usize, end: char| {
        while i < c.len() && c[i] != end {
            i += 1;
        }
        i + 1
    };
    let mut q = Query::default();
    let mut calls: Vec<Call> = Vec::new();
    // An aggregation whose `(` comes after its `by (…)`/`without (…)`.
    let mut pending: Option<Call> = None;
    let mut last_metric: Option<(String, usize)> = None;
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            quote @ ('"' | '\'' | '`') => i = close(i + 1, quote),
            '[' => i = close(i, ']'),
            '$' if at(i + 1) == '{' => i = close(i, '}'),
            '$' => i = word_at(i + 1).1,
            '{' => {
                let end = close(i, '}');
                let body: String = c[i + 1..end - 1].iter().collect();
                let metric = last_metric
                    .as_ref()
                    .filter(|(_, stop)| c[*stop..i].iter().all(|ch| ch.is_whitespace()))
                    .map(|(m, _)| m.clone());
                for matcher in body.split(',').filter(|m| !m.trim().is_empty()) {
                    let m = matcher.trim();
                    let name: String = m.chars().take_while(|&ch| is_ident(ch)).collect();
                    let rest = m[name.len()..].trim_start();
                    q.labels.insert(name.clone());
                    if let (Some(value), Some(metric)) = (rest.strip_prefix('='), &metric)
                        && !value.starts_with('~')
                    {
                        let value = value.trim().trim_matches('"');
                        if !value.contains('$') {
                            q.equalities.push((metric.clone(), name, value.to_owned()));
                        }
                    }
                }
                i = end;
            }
            '(' => {
                calls.push(pending.take().unwrap_or_default());
                i += 1;
            }
            ')' => {
                calls.pop();
                i += 1;
            }
            ch if ch.is_ascii_digit() || (ch == '.' && at(i + 1).is_ascii_digit()) => {
                while at(i).is_ascii_alphanumeric() || at(i) == '.' {
                    i += 1;
                }
            }
            ch if is_ident(ch) => {
                let (word, end) = word_at(i);
                let next = skip_ws(end);
                let call = at(next) == '(';
                if GROUPINGS.contains(&word.as_str()) {
                    if call {
                        let stop = close(next, ')');
                        let list: Vec<String> = c[next + 1..stop - 1]
                            .iter()
                            .collect::<String>()
                            .split(',')
                            .map(|l| l.trim().to_owned())
                            .filter(|l| !l.is_empty())
                            .collect();
                        q.labels.extend(list.iter().cloned());
                        let has_le = list.iter().any(|l| l == "le");
                        if let Some((_, keeps_le @ Some(_))) = &mut pending {
                            match word.as_str() {
                                "by" => *keeps_le = Some(has_le),
                                "without" => *keeps_le = Some(!has_le),
                                _ => {}
                            }
                        }
                        i = stop;
                    } else {
                        i = end;
                    }
                } else if AGGREGATIONS.contains(&word.as_str()) && !call {
                    // No grouping (yet): it keeps no label.
                    pending = Some((word, Some(false)));
                    i = end;
                } else if call {
                    let keeps_le = AGGREGATIONS.contains(&word.as_str()).then_some(false);
                    calls.push((word, keeps_le));
                    i = next + 1;
                } else {
                    if !KEYWORDS.contains(&word.as_str()) {
                        let quantile = calls.iter().rposition(|(f, _)| f == "histogram_quantile");
                        let drops_le = quantile.is_some_and(|at| {
                            calls[at + 1..]
                                .iter()
                                .any(|(_, keeps)| *keeps == Some(false))
                        });
                        q.metrics.push(Use {
                            name: word.clone(),
                            calls: calls.iter().map(|(f, _)| f.clone()).collect(),
                            drops_le,
                        });
                        last_metric = Some((word, end));
                    }
                    i = end;
                }
            }
            _ => i += 1,
        }
    }
    q
}

/// Every query of the dashboard: each panel's (rows' panels included) and
/// each template variable's, named by where it is.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("?");
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((format!("panel {title:?}"), expr.to_owned()));
                }
            }
            walk(panel["panels"].as_array().map_or(&[], |p| p), out);
        }
    }
    let mut out = Vec::new();
    walk(dashboard["panels"].as_array().expect("panels"), &mut out);
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = var["query"]["query"].as_str().or(var["query"].as_str());
        if let Some(query) = query {
            let expr = query
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(',').map(|(m, _)| m))
                .unwrap_or(query);
            out.push((format!("variable {}", var["name"]), expr.to_owned()));
        }
    }
    out
}

/// Every fault of the dashboard's queries against `exported`.
fn faults(dashboard: &Value, exported: &Exported) -> Vec<String> {
    let mut faults = Vec::new();
    let mut used_families = BTreeSet::new();
    for (place, expr) in queries(dashboard) {
        let q = parse(&expr);
        let mut fault = |why: String| faults.push(format!("{place}: {why}\n    in `{expr}`"));
        if q.metrics.is_empty() {
            fault("names no metric".into());
        }
        let mut allowed: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
        for Use {
            name,
            calls,
            drops_le,
        } in &q.metrics
        {
            let Some((family, kind)) = exported.family(name) else {
                fault(format!("`{name}` is not a series wsnotify exports"));
                continue;
            };
            used_families.insert(family.to_owned());
            let Some(series) = exported.series.get(name) else {
                fault(format!(
                    "`{name}` is declared but the server had no such series"
                ));
                continue;
            };
            allowed.extend(series.iter().flat_map(|s| s.keys().cloned()));
            let rated = calls.iter().any(|f| RATES.contains(&f.as_str()));
            if rated && kind == "gauge" {
                fault(format!("`{name}` is a gauge under rate/increase"));
            }
            let quantile = calls.iter().any(|f| f == "histogram_quantile");
            if quantile != name.ends_with("_bucket") {
                fault(format!(
                    "`{name}`: histogram_quantile takes `_bucket` series, and buckets need it"
                ));
            }
            if *drops_le {
                fault(format!(
                    "`{name}`: an aggregation drops `le` before histogram_quantile"
                ));
            }
        }
        for label in q.labels.difference(&allowed) {
            fault(format!("label `{label}` is on none of its series"));
        }
        for (metric, label, value) in &q.equalities {
            let found = exported
                .series
                .get(metric)
                .is_some_and(|series| series.iter().any(|s| s.get(label) == Some(value)));
            if !found {
                fault(format!("no series `{metric}{{{label}=\"{value}\"}}`"));
            }
        }
    }
    for family in exported.families.keys() {
        if !used_families.contains(family) {
            faults.push(format!("metric family `{family}` is on no panel"));
        }
    }
    faults
}

/// A server on a Redis Cluster (so that the Redis and cluster series
/// exist too) with history on, having resumed one stream (recovered) and
/// failed another (lost: epoch_changed), so that every series of
/// `/metrics` exists.
async fn exported() -> (Proc, Exported, support::cluster::Cluster) {
    let cluster = support::cluster::Cluster::start().await;
    let seeds = cluster.seeds();
    let server = Proc::start(&[("HISTORY_SIZE", "100"), ("REDIS_CLUSTER_URLS", &seeds)]).await;
    support::redis::wait_for_ready(server.addr, hyper::StatusCode::OK).await;
    let mut first = connect_raw(server.addr, "/ws/notifications?user=dash").await;
    let position = loop {
        let frame: Value = serde_json::from_str(&next_text(&mut first).await).unwrap();
        if frame["type"] == "stream.position" && frame["stream"] == "user:dash" {
            break frame;
        }
    };
    let since = format!(
        "user%3Adash~{}~{}%2Cbroadcast~~0",
        position["epoch"].as_str().unwrap(),
        position["offset"]
    );
    let _again = connect_raw(
        server.addr,
        &format!("/ws/notifications?user=dash&since={since}"),
    )
    .await;
    wait_for_metric(
        server.addr,
        r#"wsnotify_resumes_total{outcome="recovered",reason="none"} 1"#,
    )
    .await;
    let text = wait_for_metric(
        server.addr,
        r#"wsnotify_resumes_total{outcome="lost",reason="epoch_changed"} 1"#,
    )
    .await;
    (server, Exported::parse(&text), cluster)
}

#[tokio::test]
async fn every_query_of_the_dashboard_names_series_a_running_server_exports() {
    let (server, exported, _cluster) = exported().await;
    assert!(
        exported.families.len() > 20
            && exported
                .series
                .contains_key("wsnotify_broadcast_fanout_seconds_bucket"),
        "read too little of /metrics: {exported:?}"
    );
    let dashboard = dashboard();
    let queries = queries(&dashboard);
    assert!(queries.len() > 30, "read too few queries: {queries:?}");
    let faults = faults(&dashboard, &exported);
    assert!(
        faults.is_empty(),
        "the dashboard is wrong:\n{}",
        faults.join("\n")
    );
    let metrics = http(server.addr, Method::GET, "/metrics", "").await;
    assert_eq!(metrics.status, 200, "/metrics answers");
}

#[test]
fn the_dashboard_is_an_importable_grafana_dashboard_on_the_prometheus_input() {
    let dashboard = dashboard();
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "a current schemaVersion"
    );
    assert_eq!(
        dashboard["__inputs"][0]["name"], "DS_PROMETHEUS",
        "the datasource is an input, chosen on import"
    );
    assert_eq!(
        dashboard["__inputs"][0]["pluginId"], "prometheus",
        "a Prometheus input"
    );
    let mut ids = BTreeSet::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    panels.extend(
        panels
            .clone()
            .iter()
            .flat_map(|p| p["panels"].as_array().into_iter().flatten()),
    );
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "every panel has a title: {panel}");
        assert!(
            ids.insert(panel["id"].as_u64().expect("an id")),
            "panel ids are unique: {title}"
        );
        assert!(
            panel["gridPos"]["w"].as_u64().is_some(),
            "{title} has a place"
        );
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().map_or(&[][..], |t| t);
        assert!(!targets.is_empty(), "{title} queries something");
        for target in targets.iter().chain([panel]) {
            assert_eq!(
                target["datasource"]["uid"], "${DS_PROMETHEUS}",
                "{title} uses the input's datasource"
            );
        }
    }
}

#[test]
fn the_checker_catches_wrong_names_types_labels_and_quantiles() {
    let exported = Exported::parse(
        "# TYPE wsnotify_active_connections gauge\nwsnotify_active_connections 0\n\
         # TYPE wsnotify_resumes counter\nwsnotify_resumes_total{outcome=\"lost\",reason=\"too_old\"} 1\n\
         # TYPE wsnotify_broadcast_fanout_seconds histogram\n\
         wsnotify_broadcast_fanout_seconds_sum 0.0\nwsnotify_broadcast_fanout_seconds_count 0\n\
         wsnotify_broadcast_fanout_seconds_bucket{le=\"+Inf\"} 0\n",
    );
    let with = |expr: &str| {
        json!({"panels": [
            {"title": "fine", "targets": [
                {"expr": "sum(wsnotify_active_connections{instance=~\"$instance\"})"},
                {"expr": "sum by (reason) (rate(wsnotify_resumes_total{outcome=\"lost\"}[$__rate_interval]))"},
                {"expr": "histogram_quantile(0.99, sum by (le) (rate(wsnotify_broadcast_fanout_seconds_bucket[5m])))"},
                {"expr": "sum(rate(wsnotify_broadcast_fanout_seconds_sum[5m])) / sum(rate(wsnotify_broadcast_fanout_seconds_count[5m]))"},
            ]},
            {"title": "planted", "targets": [{"expr": expr}]},
        ]})
    };
    assert_eq!(
        faults(&with("wsnotify_active_connections"), &exported),
        Vec::<String>::new(),
        "the good queries pass"
    );
    let partial = json!({"panels": [{"title": "only", "targets": [{"expr": "wsnotify_active_connections"}]}]});
    assert!(
        faults(&partial, &exported)
            .contains(&"metric family `wsnotify_resumes` is on no panel".into()),
        "a metric missing from the dashboard is caught"
    );
    for (planted, caught) in [
        ("rate(websocket_messages_sent_total[5m])", "is not a series"),
        ("wsnotify_active_connection", "is not a series"),
        ("wsnotify_resumes", "is not a series"),
        ("wsnotify_active_connections_total", "is not a series"),
        ("wsnotify_broadcast_fanout_seconds", "is not a series"),
        ("rate(wsnotify_active_connections[5m])", "gauge under rate"),
        (
            "sum(rate(wsnotify_broadcast_fanout_seconds_bucket[5m]))",
            "histogram_quantile",
        ),
        (
            "histogram_quantile(0.9, sum(rate(wsnotify_broadcast_fanout_seconds_bucket[5m])))",
            "drops `le`",
        ),
        (
            "histogram_quantile(0.9, sum without (le) (rate(wsnotify_broadcast_fanout_seconds_bucket[5m])))",
            "drops `le`",
        ),
        (
            "histogram_quantile(0.9, max(sum by (le) (rate(wsnotify_broadcast_fanout_seconds_bucket[5m]))))",
            "drops `le`",
        ),
        (
            "histogram_quantile(0.9, sum by (instance) (rate(wsnotify_broadcast_fanout_seconds_bucket[5m])))",
            "drops `le`",
        ),
        (
            "sum by (room) (wsnotify_active_connections)",
            "label `room`",
        ),
        ("wsnotify_resumes_total{outcome=\"recoverd\"}", "no series"),
    ] {
        let found = faults(&with(planted), &exported);
        assert!(
            found.iter().any(|f| f.contains(caught)),
            "`{planted}` should be caught ({caught}), faults: {found:?}"
        );
    }
}
