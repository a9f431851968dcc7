//! `deploy/`: the Prometheus alerting rules, the Grafana dashboard, the Kubernetes manifests and
//! the systemd unit, checked by the tools that consume them and against a live sluice.
//!
//! - `promtool check rules` / `promtool test rules` on the alerts and their unit tests; every
//!   metric and label the alerts, the dashboard and the Prometheus adapter's rules query must
//!   exist on the `/metrics` of a sluice started here (with a route cap, an upstream cap and a
//!   rate limit, so that every series exists);
//! - every Kubernetes document parses, the pieces fit (config valid, probes and ports on its
//!   listeners, selectors, the HPA's target and metrics), and kubernetes-validate accepts them
//!   against the Kubernetes 1.30 schemas (strict: no unknown field);
//! - `systemd-analyze verify` and `systemd-analyze security` on the unit.
//!
//! The tools are external programs. `.ci/run` installs promtool (Debian's `prometheus`) and
//! kubernetes-validate (PyPI); a test whose tool is missing says so and passes, except under CI
//! (`CI` set), where it fails. systemd-analyze comes with systemd, which CI does not install: a
//! test without it is skipped there too, saying why.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_yaml::Value;

/// Longest a run of one external tool may take (a loaded 2-core machine; they take well under
/// a second here).
const TOOL_DEADLINE: Duration = Duration::from_secs(120);

/// Labels Prometheus adds to every scraped series (its target's `job` and `instance`, and the
/// Kubernetes service discovery's `namespace`): queries may match them though sluice does not
/// export them.
const TARGET_LABELS: [&str; 3] = ["job", "instance", "namespace"];

/// Label names of each sample name (`sluice_requests_total`, `…_bucket`, …) of an exposition.
type Exposition = BTreeMap<String, BTreeSet<String>>;

/// A series selector found in a PromQL expression: the metric name and the labels it matches.
#[derive(Debug, PartialEq, Eq)]
struct Selector {
    /// `None` for a selector without a name (`{job="x"}`), which no query here should use.
    name: Option<String>,
    labels: Vec<String>,
}

/// A temporary directory, removed with its files when dropped.
struct TempDir(PathBuf);

// === helpers: files, processes ===

/// A path under the repository.
fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

impl TempDir {
    fn new() -> Self {
        TempDir(temp_dir("deploy"))
    }

    /// Writes `name` in the directory and returns its path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `program` with `args` in `dir` (bounded by [`TOOL_DEADLINE`]); `None` when the program
/// cannot be started at all (not installed).
async fn run(program: &str, args: &[&str], dir: &Path) -> Option<Output> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(TOOL_DEADLINE, child).await {
        Ok(Ok(output)) => Some(output),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => None,
        Ok(Err(e)) => panic!("{program} could not be run: {e}"),
        Err(_) => panic!("{program} {args:?} did not finish within {TOOL_DEADLINE:?}"),
    }
}

/// stdout and stderr of a run, for failure messages.
fn printed(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Panics with the tool's output unless it succeeded.
fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed:\n{}",
        printed(output)
    );
}

/// A tool this test needs is missing: under CI that is a failure (`.ci/run` installs it when
/// `required_in_ci`), elsewhere the test says why it checks nothing and passes.
fn missing(tool: &str, install: &str, required_in_ci: bool) {
    let ci = std::env::var_os("CI").is_some();
    assert!(
        !(ci && required_in_ci),
        "{tool} is missing under CI: .ci/run should have installed it ({install})"
    );
    eprintln!("SKIPPED: {tool} is not installed ({install}); this check did not run");
}

/// `promtool` with `args` in `dir`, or `None` (after [`missing`]) without promtool.
async fn promtool(args: &[&str], dir: &Path) -> Option<Output> {
    let output = run("promtool", args, dir).await;
    if output.is_none() {
        missing(
            "promtool",
            "apt-get install prometheus: Debian's package provides it",
            true,
        );
    }
    output
}

// === helpers: PromQL and the exposition ===

/// The series selectors of a PromQL expression: every metric name with the labels its `{…}`
/// matches. Skips string literals, durations and subquery ranges (`[5m]`, `[$__rate_interval]`),
/// numbers, Grafana variables (`$route`), function and aggregation names, keywords, and the
/// label lists of `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`. Enough for the
/// queries of `deploy/`, which `promtool` parses for real.
fn selectors(expr: &str) -> Vec<Selector> {
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
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: [&str; 7] = ["and", "or", "unless", "bool", "offset", "inf", "nan"];
    let chars: Vec<char> = expr.chars().collect();
    let mut out: Vec<Selector> = Vec::new();
    // The metric name just read, which a `{` right after it belongs to.
    let mut pending: Option<String> = None;
    let mut i = 0;
    let next_non_space = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' {
            let end = matching(&chars, i, '{', '}');
            let inner: String = chars[i + 1..end].iter().collect();
            let (labels, name) = matchers(&inner);
            out.push(Selector {
                name: pending.take().or(name),
                labels,
            });
            i = end + 1;
        } else if c == '[' {
            i = matching(&chars, i, '[', ']') + 1;
        } else if c == '$' {
            // A Grafana variable: `$name` or `${name}`.
            i += 1;
            if i < chars.len() && chars[i] == '{' {
                i = matching(&chars, i, '{', '}') + 1;
            } else {
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && i + 1 < chars.len() && chars[i + 1].is_ascii_digit())
        {
            // A number or a duration (`0.99`, `1e3`, `5m`).
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            flush(&mut pending, &mut out);
            let j = next_non_space(i);
            if LABEL_LISTS.contains(&word.as_str()) {
                if j < chars.len() && chars[j] == '(' {
                    i = matching(&chars, j, '(', ')') + 1;
                }
            } else if KEYWORDS.contains(&word.as_str()) || AGGREGATIONS.contains(&word.as_str()) {
                // Not a metric.
            } else if j < chars.len() && chars[j] == '(' {
                // A function call.
            } else {
                pending = Some(word);
            }
        } else {
            flush(&mut pending, &mut out);
            i += 1;
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// A metric name read without a `{…}` after it is a selector of its own.
fn flush(pending: &mut Option<String>, out: &mut Vec<Selector>) {
    if let Some(name) = pending.take() {
        out.push(Selector {
            name: Some(name),
            labels: Vec::new(),
        });
    }
}

/// The index just past the string literal opening at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// The index of the bracket closing the one at `start`, skipping string literals.
fn matching(chars: &[char], start: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
        i += 1;
    }
    panic!(
        "unbalanced {open}{close} in {}",
        chars.iter().collect::<String>()
    )
}

/// The label names of the matchers inside `{…}`, and the metric name when one of them is
/// `__name__="…"`.
fn matchers(inner: &str) -> (Vec<String>, Option<String>) {
    let chars: Vec<char> = inner.chars().collect();
    let (mut labels, mut name) = (Vec::new(), None);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let label: String = chars[start..i].iter().collect();
            // The operator, then the value.
            while i < chars.len() && !matches!(chars[i], '"' | '\'' | '`') {
                i += 1;
            }
            let value_start = i + 1;
            i = skip_string(&chars, i);
            if label == "__name__" {
                name = Some(chars[value_start..i - 1].iter().collect());
            } else {
                labels.push(label);
            }
        } else {
            i += 1;
        }
    }
    (labels, name)
}

/// Sample names and their label names, from a Prometheus or OpenMetrics text exposition.
fn exposition(text: &str) -> Exposition {
    let mut out = Exposition::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_owned()).or_default();
        if let (true, Some(close)) = (line[end..].starts_with('{'), line.rfind('}')) {
            labels.extend(matchers(&line[end + 1..close]).0);
        }
    }
    out
}

/// The exposition of a sluice with an upstream cap, a route cap and a rate limit (so that every
/// series exists), after a request and a reload of each result (so that the reload counter has
/// both series on a build that creates them on first use).
async fn live_metrics() -> Exposition {
    let up = ok_upstream().await;
    let config = format!(
        "server: {{ listen: 127.0.0.1:0 }}
admin: {{ listen: 127.0.0.1:0 }}
upstreams:
  orders:
    endpoints: [{}]
    concurrency: {{ max_inflight: 4, queue: 8 }}
routes:
  - name: create-order
    upstream: orders
    concurrency: {{ max_inflight: 2, queue: 2 }}
    rate_limits:
      - {{ name: per-client, key: client_ip, rate: 100/s }}
",
        up.endpoint()
    );
    let file = ConfigFile::new(&config);
    let proxy = start_proxy_file(&file).await;
    assert_eq!(get(&proxy.url("/orders")).await.status, StatusCode::OK);
    let reload = || {
        let url = proxy.admin_url("/reload");
        async move {
            send(
                &client(),
                Request::post(url).body(Full::new(Bytes::new())).unwrap(),
            )
            .await
        }
    };
    assert_eq!(reload().await.status, StatusCode::OK);
    file.write("server: { bogus: true }\n");
    assert_eq!(reload().await.status, StatusCode::UNPROCESSABLE_ENTITY);
    let text = get(&proxy.admin_url("/metrics")).await.text();
    proxy.stop().await;
    let metrics = exposition(&text);
    assert!(
        metrics.contains_key("sluice_requests_total"),
        "not an exposition:\n{text}"
    );
    metrics
}

/// Every selector of `expr` names a metric of `live`, and matches only labels it has (or that
/// Prometheus adds); `expr` selects something at all.
fn assert_queries_live(what: &str, expr: &str, live: &Exposition) {
    let found = selectors(expr);
    assert!(!found.is_empty(), "{what}: no metric in `{expr}`");
    for selector in found {
        let name = selector
            .name
            .unwrap_or_else(|| panic!("{what}: a selector without a metric name in `{expr}`"));
        let labels = live.get(&name).unwrap_or_else(|| {
            panic!(
                "{what}: `{name}` (in `{expr}`) is not on a live sluice's /metrics, which has:\n{:#?}",
                live.keys()
            )
        });
        for label in selector.labels {
            assert!(
                labels.contains(&label) || TARGET_LABELS.contains(&label.as_str()),
                "{what}: `{name}` has no label `{label}` (in `{expr}`); it has {labels:?}"
            );
        }
    }
}

/// Every PromQL expression of the alerting rules, with the alert's name.
fn alert_exprs() -> Vec<(String, String)> {
    let rules = yaml("deploy/prometheus/alerts.yaml");
    let mut out = Vec::new();
    for group in seq(&rules["groups"], "groups") {
        for rule in seq(&group["rules"], "rules") {
            out.push((
                str_at(rule, "alert").to_owned(),
                str_at(rule, "expr").to_owned(),
            ));
        }
    }
    out
}

/// The dashboard as JSON.
fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("deploy/grafana/sluice.json"))
        .unwrap_or_else(|e| panic!("deploy/grafana/sluice.json: {e}"))
}

/// Every `expr` anywhere in the dashboard, with the title of its panel.
fn dashboard_exprs(value: &serde_json::Value, title: &str, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            let title = map.get("title").and_then(|t| t.as_str()).unwrap_or(title);
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(expr)) => {
                        out.push((title.to_owned(), expr.clone()))
                    }
                    _ => dashboard_exprs(v, title, out),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                dashboard_exprs(item, title, out);
            }
        }
        _ => {}
    }
}

/// A Grafana query with its variables replaced by values Prometheus accepts.
fn grafana_to_promql(expr: &str) -> String {
    let mut s = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h");
    for var in ["$job", "$instance", "$route", "$upstream"] {
        s = s.replace(var, ".*");
    }
    s
}

/// The Prometheus adapter's external rules: (metric name served, PromQL it runs) with the
/// adapter's template filled in for the `orders` upstream, and the rule's series query.
fn adapter_rules() -> Vec<(String, String, String)> {
    let values = yaml("deploy/kubernetes/prometheus-adapter/values.yaml");
    seq(&values["rules"]["external"], "rules.external")
        .iter()
        .map(|rule| {
            let series_query = str_at(rule, "seriesQuery").to_owned();
            let series = series_query
                .split('{')
                .next()
                .unwrap_or_default()
                .to_owned();
            let name = str_at(&rule["name"], "as").to_owned();
            let query = str_at(rule, "metricsQuery")
                .replace("<<.Series>>", &series)
                .replace(
                    "<<.LabelMatchers>>",
                    "upstream=\"orders\",namespace=\"shop\"",
                )
                .replace("<<.GroupBy>>", "upstream");
            (name, query, series_query)
        })
        .collect()
}

/// `promtool check rules` on recording rules made of `exprs`: PromQL syntax, for real.
async fn assert_promql_parses(what: &str, exprs: &[String]) {
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, expr)| serde_json::json!({"record": format!("check:expr_{i}"), "expr": expr}))
        .collect();
    let file = serde_json::json!({"groups": [{"name": what, "rules": rules}]});
    let dir = TempDir::new();
    dir.write("rules.yaml", &serde_yaml::to_string(&file).unwrap());
    if let Some(output) = promtool(&["check", "rules", "rules.yaml"], &dir.0).await {
        assert_success(
            &format!("promtool check rules on the queries of {what}"),
            &output,
        );
    }
}

// === helpers: YAML values ===

fn seq<'a>(value: &'a Value, what: &str) -> &'a Vec<Value> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("{what}: not a list: {value:?}"))
}

fn str_at<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string `{key}` in {value:?}"))
}

/// The `.yaml` files directly in `deploy/kubernetes` (what `kubectl apply -f` applies).
fn manifest_files() -> Vec<PathBuf> {
    let dir = repo("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "manifests in {}: {files:?}",
        dir.display()
    );
    files
}

/// Every document of the [`manifest_files`], by (kind, name).
fn manifests() -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for file in manifest_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = <Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if value.is_null() {
                continue;
            }
            for key in ["apiVersion", "kind"] {
                assert!(
                    value[key].is_string(),
                    "{}: no {key}: {value:?}",
                    file.display()
                );
            }
            let kind = str_at(&value, "kind").to_owned();
            let name = str_at(&value["metadata"], "name").to_owned();
            let previous = out.insert((kind.clone(), name.clone()), value);
            assert!(previous.is_none(), "{kind}/{name} defined twice");
        }
    }
    out
}

fn object<'a>(objects: &'a BTreeMap<(String, String), Value>, kind: &str, name: &str) -> &'a Value {
    objects
        .get(&(kind.to_owned(), name.to_owned()))
        .unwrap_or_else(|| {
            panic!(
                "no {kind}/{name} in deploy/kubernetes: {:?}",
                objects.keys()
            )
        })
}

/// The first container of a Deployment.
fn container(deployment: &Value) -> &Value {
    &seq(
        &deployment["spec"]["template"]["spec"]["containers"],
        "containers",
    )[0]
}

/// The number of the container port named `name`.
fn port(container: &Value, name: &str) -> u64 {
    seq(&container["ports"], "ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}: {:?}", container["ports"]))
}

/// Whether every label of `selector` (a mapping) is in `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_mapping().expect("a selector mapping");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

// === the alerting rules ===

/// promtool accepts the rules and their unit tests pass: each alert fires on its synthetic
/// series and stays quiet on the others.
#[tokio::test]
async fn alert_rules_pass_promtool_check_and_unit_tests() {
    let dir = repo("deploy/prometheus");
    let Some(check) = promtool(&["check", "rules", "alerts.yaml"], &dir).await else {
        return;
    };
    assert_success("promtool check rules alerts.yaml", &check);
    let Some(test) = promtool(&["test", "rules", "alerts.test.yaml"], &dir).await else {
        return;
    };
    assert_success("promtool test rules alerts.test.yaml", &test);
}

/// Every alert has a severity, `summary`, `description` and `runbook` annotations, and unit
/// tests that see it both firing and quiet; the six signals of the issue are all covered.
#[tokio::test]
async fn every_alert_is_annotated_and_tested_firing_and_quiet() {
    let rules = yaml("deploy/prometheus/alerts.yaml");
    let mut alerts = BTreeSet::new();
    for group in seq(&rules["groups"], "groups") {
        for rule in seq(&group["rules"], "rules") {
            let alert = str_at(rule, "alert");
            assert!(alerts.insert(alert.to_owned()), "{alert} defined twice");
            assert!(
                matches!(
                    rule["labels"]["severity"].as_str(),
                    Some("warning" | "critical")
                ),
                "{alert}: severity"
            );
            for annotation in ["summary", "description", "runbook"] {
                let text = rule["annotations"][annotation].as_str().unwrap_or_default();
                assert!(
                    text.len() > 20,
                    "{alert}: annotation {annotation} is {text:?}"
                );
            }
        }
    }
    let expected = [
        ("sluice_queue_depth", "queue depth rising"),
        ("sluice_queue_wait_seconds_bucket", "queue wait p99"),
        ("sluice_utilization", "utilisation"),
        ("sluice_requests_total", "rejection ratio"),
        ("sluice_config_reloads_total", "reload failures"),
        ("sluice_store_errors_total", "Redis store errors"),
    ];
    let exprs = alert_exprs();
    for (metric, signal) in expected {
        assert!(
            exprs.iter().any(|(_, e)| e.contains(metric)),
            "no alert on {signal} ({metric})"
        );
    }

    let tests = yaml("deploy/prometheus/alerts.test.yaml");
    let (mut firing, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for test in seq(&tests["tests"], "tests") {
        for case in seq(&test["alert_rule_test"], "alert_rule_test") {
            let alert = str_at(case, "alertname").to_owned();
            let fires = case["exp_alerts"]
                .as_sequence()
                .is_some_and(|a| !a.is_empty());
            let seen = if fires { &mut firing } else { &mut quiet };
            seen.insert(alert);
        }
    }
    assert_eq!(firing, alerts, "alerts with a unit test in which they fire");
    assert_eq!(
        quiet, alerts,
        "alerts with a unit test in which they do not fire"
    );
}

/// The alerts query only metrics and labels that a running sluice exports.
#[tokio::test]
async fn alert_rules_query_metrics_a_live_sluice_exports() {
    let live = live_metrics().await;
    for (alert, expr) in alert_exprs() {
        assert_queries_live(&alert, &expr, &live);
    }
}

// === the dashboard ===

/// Every dashboard query, and every template variable's `label_values(…)`, names metrics and
/// labels a running sluice exports.
#[tokio::test]
async fn dashboard_queries_metrics_a_live_sluice_exports() {
    let live = live_metrics().await;
    let dashboard = dashboard();
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard["panels"], "dashboard", &mut exprs);
    assert!(exprs.len() >= 12, "queries found: {exprs:#?}");
    for (panel, expr) in &exprs {
        assert_queries_live(panel, expr, &live);
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
    {
        let Some(query) = variable["query"]["query"].as_str() else {
            continue; // the data source picker
        };
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {query}"));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        let what = format!("variable {}", variable["name"]);
        assert_queries_live(&what, selector, &live);
        let name = selectors(selector).remove(0).name.unwrap();
        let label = label.trim();
        assert!(
            live[&name].contains(label) || TARGET_LABELS.contains(&label),
            "{what}: {name} has no label {label}"
        );
    }
}

/// The dashboard is importable: unique panel ids, every panel on the grid and bound to the
/// data source variable, every target with a unique refId — and its queries parse as PromQL
/// (promtool), with the Grafana variables filled in.
#[tokio::test]
async fn dashboard_is_well_formed_and_its_queries_parse() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "sluice");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("a panel title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("a panel id")),
            "{title}: id"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && grid["h"].as_u64().unwrap() > 0,
            "{title}: gridPos {grid}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        let refs: BTreeSet<_> = targets
            .iter()
            .map(|t| t["refId"].as_str().unwrap())
            .collect();
        assert_eq!(refs.len(), targets.len(), "{title}: refIds");
        assert!(!targets.is_empty(), "{title}: no query");
    }
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard["panels"], "dashboard", &mut exprs);
    let exprs: Vec<String> = exprs.iter().map(|(_, e)| grafana_to_promql(e)).collect();
    assert_promql_parses("the dashboard", &exprs).await;
}

// === Kubernetes ===

/// The HPA's External metrics are the ones the Prometheus adapter's rules serve, and those
/// rules query metrics and labels a running sluice exports, in PromQL that parses.
#[tokio::test]
async fn hpa_scales_on_metrics_the_adapter_serves_from_live_metrics() {
    let objects = manifests();
    let hpa = object(&objects, "HorizontalPodAutoscaler", "orders");
    let rules = adapter_rules();
    let served: BTreeSet<&str> = rules.iter().map(|(name, _, _)| name.as_str()).collect();
    for metric in seq(&hpa["spec"]["metrics"], "spec.metrics") {
        assert_eq!(metric["type"].as_str(), Some("External"));
        let name = str_at(&metric["external"]["metric"], "name");
        assert!(
            served.contains(name),
            "the adapter serves no {name}: {served:?}"
        );
    }
    let live = live_metrics().await;
    for (name, query, series_query) in &rules {
        assert_queries_live(&format!("adapter rule {name}"), query, &live);
        assert_queries_live(&format!("adapter rule {name}"), series_query, &live);
    }
    let queries: Vec<String> = rules.into_iter().map(|(_, q, _)| q).collect();
    assert_promql_parses("the adapter's rules", &queries).await;
}

/// The Containerfile builds what the Deployment runs (no image can be built here: no container
/// daemon, no registry): its last stage is the image, runs as the Deployment's non-root user,
/// puts the binary where the Deployment's command runs it, and builds with the compiler
/// Cargo.toml asks for, from the locked dependencies.
#[test]
fn containerfile_fits_the_deployment() {
    let file = read("Containerfile");
    let lines: Vec<&str> = file
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let stages: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and the image: {lines:#?}");
    let image = &lines[stages[1]..];
    let objects = manifests();
    let c = container(object(&objects, "Deployment", "sluice"));
    let binary = seq(&c["command"], "command")[0]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        image
            .iter()
            .any(|l| l.starts_with("COPY --from=build") && l.ends_with(&format!(" {binary}"))),
        "the image puts the binary at {binary}: {image:#?}"
    );
    let pod = &object(&objects, "Deployment", "sluice")["spec"]["template"]["spec"];
    let user = pod["securityContext"]["runAsUser"].as_u64().unwrap();
    assert!(
        image.contains(&format!("USER {user}:{user}").as_str()),
        "the image runs as the Deployment's user {user}: {image:#?}"
    );
    let rust_version = read("Cargo.toml")
        .lines()
        .find_map(|l| {
            l.strip_prefix("rust-version = ")
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap();
    assert!(
        lines[stages[0]].contains(&format!("rust:{rust_version}-")),
        "the build stage uses rust {rust_version}: {}",
        lines[stages[0]]
    );
    assert!(lines
        .iter()
        .any(|l| l.starts_with("RUN cargo build --release --locked")));
}

/// The manifests fit together: the ConfigMap holds a valid sluice config; the Deployment mounts
/// it where its command reads it; ports, probes and the scrape annotation match the config's
/// listeners; the grace period outlasts shutdown_grace; the Services select their pods; the
/// upstream points at the consumer's Service; the HPA scales the consumer, which leaves
/// `replicas` to it, on an upstream that has a queue.
#[tokio::test]
async fn kubernetes_manifests_parse_and_fit_together() {
    let objects = manifests();
    let config_map = object(&objects, "ConfigMap", "sluice");
    let config = sluice::config::from_yaml(
        str_at(&config_map["data"], "sluice.yaml"),
        Path::new("ConfigMap sluice"),
    )
    .unwrap_or_else(|e| panic!("the config in the ConfigMap is invalid:\n{e}"));
    let admin = config.admin.as_ref().expect("an admin listener").listen;

    let sluice = object(&objects, "Deployment", "sluice");
    let pod = &sluice["spec"]["template"];
    let c = container(sluice);
    let command: Vec<&str> = seq(&c["command"], "command")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        command.ends_with(&["run", "-c", "/etc/sluice/sluice.yaml"]),
        "{command:?}"
    );
    let mount = seq(&c["volumeMounts"], "volumeMounts")
        .iter()
        .find(|m| m["mountPath"] == "/etc/sluice")
        .expect("a mount at /etc/sluice");
    assert!(
        mount["subPath"].is_null(),
        "a subPath mount never sees ConfigMap updates"
    );
    let volume = seq(&pod["spec"]["volumes"], "volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    assert_eq!(volume["configMap"]["name"], "sluice");
    assert_eq!(port(c, "http"), u64::from(config.server.listen.port()));
    assert_eq!(port(c, "admin"), u64::from(admin.port()));
    assert!(config.server.listen.ip().is_unspecified() && admin.ip().is_unspecified());
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    assert!(
        c["resources"]["requests"]["cpu"].is_string()
            && c["resources"]["limits"]["memory"].is_string()
    );
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"].as_str(),
        Some(admin.port().to_string().as_str())
    );
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("a grace period");
    assert!(
        grace > config.server.shutdown_grace.as_secs() + pre_stop,
        "terminationGracePeriodSeconds {grace} must outlast preStop {pre_stop}s + shutdown_grace {:?}",
        config.server.shutdown_grace
    );

    for (service, deployment) in [
        ("sluice", sluice),
        ("orders", object(&objects, "Deployment", "orders")),
    ] {
        let svc = object(&objects, "Service", service);
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];
        assert!(
            selects(&svc["spec"]["selector"], labels),
            "Service {service} selects no pod"
        );
        assert!(selects(
            &deployment["spec"]["selector"]["matchLabels"],
            labels
        ));
        for p in seq(&svc["spec"]["ports"], "ports") {
            port(container(deployment), str_at(p, "targetPort"));
        }
    }

    let orders = config
        .upstreams
        .iter()
        .find(|u| &*u.name == "orders")
        .expect("upstream orders");
    let svc_port = object(&objects, "Service", "orders")["spec"]["ports"][0]["port"].as_u64();
    assert!(
        orders
            .endpoints
            .iter()
            .all(|e| e.host() == "orders" && e.port_u16().map(u64::from) == svc_port),
        "upstream orders should point at Service orders: {:?}",
        orders.endpoints
    );

    let hpa = object(&objects, "HorizontalPodAutoscaler", "orders");
    let target = &hpa["spec"]["scaleTargetRef"];
    let consumer = object(&objects, str_at(target, "kind"), str_at(target, "name"));
    assert!(
        consumer["spec"]["replicas"].is_null(),
        "the HPA owns the consumer's replicas"
    );
    for metric in seq(&hpa["spec"]["metrics"], "spec.metrics") {
        let upstream = str_at(
            &metric["external"]["metric"]["selector"]["matchLabels"],
            "upstream",
        );
        let cap = config
            .upstreams
            .iter()
            .find(|u| &*u.name == upstream)
            .and_then(|u| u.concurrency.clone())
            .unwrap_or_else(|| panic!("the HPA scales on upstream {upstream}, which has no cap"));
        assert!(cap.queue > 0, "upstream {upstream} has no queue to grow");
    }
}

/// kubernetes-validate (the Kubernetes 1.30 OpenAPI schemas, strict: unknown fields are errors)
/// accepts every manifest.
#[tokio::test]
async fn kubernetes_manifests_pass_schema_validation() {
    let dir = repo("deploy/kubernetes");
    let probe = run("python3", &["-c", "import kubernetes_validate"], &dir).await;
    if !probe.is_some_and(|o| o.status.success()) {
        missing(
            "kubernetes-validate",
            "python3 -m pip install kubernetes-validate, or into a virtualenv first on PATH where the system Python refuses pip",
            true,
        );
        return;
    }
    let files: Vec<String> = manifest_files()
        .iter()
        .map(|p| p.to_str().unwrap().to_owned())
        .collect();
    let mut args = vec!["-m", "kubernetes_validate", "--strict", "-k", "1.30.0"];
    args.extend(files.iter().map(String::as_str));
    let output = run("python3", &args, &dir).await.expect("python3");
    assert_success("kubernetes-validate", &output);
    // One line per object validated: all of them were (a document it could not place would be
    // reported, not passed).
    let passed = String::from_utf8_lossy(&output.stdout)
        .matches(" passed for resource ")
        .count();
    assert_eq!(passed, manifests().len(), "{}", printed(&output));
}

// === systemd ===

/// The unit keeps its hardening and its contract with sluice: ExecStart and ExecReload as
/// documented, a restart on failure, file descriptors for twice `max_connections` of
/// config/sluice.yaml, and a stop timeout past its `shutdown_grace`.
#[tokio::test]
async fn systemd_unit_is_hardened() {
    let unit = read("deploy/systemd/sluice.service");
    let settings: BTreeMap<&str, &str> = unit
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect();
    for (key, value) in [
        (
            "ExecStart",
            "/usr/bin/sluice run -c /etc/sluice/sluice.yaml",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("MemoryDenyWriteExecute", "yes"),
    ] {
        assert_eq!(settings.get(key).copied(), Some(value), "{key}");
    }
    let config = sluice::config::load(&repo("config/sluice.yaml")).expect("config/sluice.yaml");
    let nofile: usize = settings["LimitNOFILE"].parse().expect("LimitNOFILE");
    assert!(
        nofile >= 2 * config.server.max_connections.get() + 256,
        "LimitNOFILE {nofile}"
    );
    let stop = humantime::parse_duration(settings["TimeoutStopSec"]).expect("TimeoutStopSec");
    assert!(
        stop > config.server.shutdown_grace,
        "TimeoutStopSec {stop:?}"
    );
}

/// `systemd-analyze verify` finds nothing wrong with the unit (unknown or misspelt settings,
/// bad values, missing commands), and `systemd-analyze security` rates its exposure 2.0 or
/// lower ("OK"). The copy verified runs this build's binary instead of /usr/bin/sluice,
/// which does not exist here; nothing else differs.
#[tokio::test]
async fn systemd_unit_passes_systemd_analyze() {
    let unit = read("deploy/systemd/sluice.service");
    let dir = TempDir::new();
    let path = dir.write(
        "sluice.service",
        &unit.replace("/usr/bin/sluice", env!("CARGO_BIN_EXE_sluice")),
    );
    let path = path.to_str().unwrap();
    let Some(verify) = run("systemd-analyze", &["verify", "--man=no", path], &dir.0).await else {
        missing("systemd-analyze", "it comes with systemd", false);
        return;
    };
    // In a container, verify may also talk about the host (no bus, units it cannot load); the
    // unit's own problems name it.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let problems: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("sluice.service"))
        .collect();
    assert!(
        problems.is_empty(),
        "systemd-analyze verify:\n{}",
        printed(&verify)
    );
    if !text.trim().is_empty() {
        eprintln!("systemd-analyze verify said, about other things than the unit:\n{text}");
    }
    let security = run(
        "systemd-analyze",
        &["security", "--offline=yes", "--threshold=20", path],
        &dir.0,
    )
    .await
    .expect("systemd-analyze");
    assert_success(
        "systemd-analyze security --threshold=20 (exposure at most 2.0)",
        &security,
    );
}

// === the PromQL reader itself ===

/// The selector reader finds metric names and matched labels, and nothing else: not functions,
/// aggregations, grouping labels, durations, numbers, strings or Grafana variables.
#[test]
fn selectors_are_read_from_promql() {
    let found = selectors(
        r#"histogram_quantile(0.99, sum by (route, le) (rate(sluice_queue_wait_seconds_bucket{route=~"$route", x="a}b"}[$__rate_interval])))
        / on (route) group_left max without (instance) (sluice_inflight offset 5m) > bool 2e3 and {__name__="up", job="j"}"#,
    );
    assert_eq!(
        found,
        vec![
            Selector {
                name: Some("sluice_queue_wait_seconds_bucket".into()),
                labels: vec!["route".into(), "x".into()],
            },
            Selector {
                name: Some("sluice_inflight".into()),
                labels: vec![]
            },
            Selector {
                name: Some("up".into()),
                labels: vec!["job".into()]
            },
        ]
    );
    let live = exposition(
        "# TYPE a counter\na_total{route=\"r\",outcome=\"x\"} 1\nb 2\nc_bucket{le=\"+Inf\"} 0\n",
    );
    assert_eq!(
        live["a_total"],
        BTreeSet::from(["route".into(), "outcome".into()])
    );
    assert!(live["b"].is_empty() && live["c_bucket"].contains("le"));
}
