//! The 0.0.4 conversion on prometheus-client's own output and on what OpenMetrics allows beyond
//! it, and the `Accept` negotiation. (`tests/admin.rs` runs `promtool check metrics` on a live
//! `/metrics`.)

use http::header::ACCEPT;
use http::{HeaderMap, HeaderValue};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use super::{prometheus_text, Format};

/// Pins: on what prometheus-client writes, counter metadata is renamed to the sample name
/// (with a unit too), info becomes a gauge, `# UNIT` and `# EOF` go, and everything else
/// (gauges, histograms, label sets) is copied as it is.
#[test]
fn prometheus_client_output_becomes_text_0_0_4() {
    let mut registry = Registry::default();
    let requests = Family::<Vec<(String, String)>, Counter>::default();
    registry.register("app_requests", "Requests by route", requests.clone());
    // prometheus-client writes label values unescaped: sluice's names hold no `"` or `\`
    // (config validation), and neither does this one.
    requests
        .get_or_create(&vec![("route".into(), "a/b.c".into())])
        .inc_by(3);
    let busy = Counter::<u64>::default();
    registry.register_with_unit("app_busy", "Busy time", Unit::Seconds, busy.clone());
    busy.inc();
    let depth = Gauge::<i64>::default();
    registry.register("app_depth", "Queue depth", depth.clone());
    depth.set(-2);
    let wait = Histogram::new([0.5, 1.0]);
    registry.register("app_wait_seconds", "Wait", wait.clone());
    wait.observe(0.7);
    registry.register(
        "app_build",
        "Build",
        Info::new(vec![("version".to_owned(), "1.2".to_owned())]),
    );
    let mut openmetrics = String::new();
    encode(&mut openmetrics, &registry).unwrap();
    assert!(
        openmetrics.contains("# TYPE app_requests counter\n"),
        "{openmetrics}"
    );

    let expected = "\
# HELP app_requests_total Requests by route.
# TYPE app_requests_total counter
app_requests_total{route=\"a/b.c\"} 3
# HELP app_busy_seconds_total Busy time.
# TYPE app_busy_seconds_total counter
app_busy_seconds_total 1
# HELP app_depth Queue depth.
# TYPE app_depth gauge
app_depth -2
# HELP app_wait_seconds Wait.
# TYPE app_wait_seconds histogram
app_wait_seconds_sum 0.7
app_wait_seconds_count 1
app_wait_seconds_bucket{le=\"0.5\"} 0
app_wait_seconds_bucket{le=\"1.0\"} 1
app_wait_seconds_bucket{le=\"+Inf\"} 1
# HELP app_build_info Build.
# TYPE app_build_info gauge
app_build_info{version=\"1.2\"} 1
";
    assert_eq!(prometheus_text(&openmetrics), expected);
}

/// Pins: what OpenMetrics allows and prometheus-client does not write today is converted too —
/// exemplars and `_created` samples are dropped (even with `#` and `}` inside a quoted label
/// value), timestamps go from seconds to milliseconds, `\"` in help is unescaped, `unknown`
/// is `untyped` and a stateset a gauge.
#[test]
fn exemplars_created_timestamps_and_other_types() {
    let openmetrics = "\
# HELP c A counter.
# TYPE c counter
c_total{a=\"x # } \\\" y\"} 3 # {trace_id=\"abc\"} 1.0 1700000000.5
c_created{a=\"x # } \\\" y\"} 1700000000.25
# HELP g Say \\\"hi\\\" \\\\ now\\n.
# TYPE g gauge
# UNIT g seconds
g 1.5 1700000000.123
# TYPE u unknown
u 2
# TYPE s stateset
s{s=\"on\"} 1
# EOF
";
    let expected = "\
# HELP c_total A counter.
# TYPE c_total counter
c_total{a=\"x # } \\\" y\"} 3
# HELP g Say \"hi\" \\\\ now\\n.
# TYPE g gauge
g 1.5 1700000000123
# TYPE u untyped
u 2
# TYPE s gauge
s{s=\"on\"} 1
";
    assert_eq!(prometheus_text(openmetrics), expected);
}

/// Pins: lines the conversion cannot read are copied, and no input makes it panic (cut label
/// sets, multi-byte text, lone metadata, a lone backslash at the end of help).
#[test]
fn odd_input_never_panics() {
    for input in [
        "",
        "\n\n",
        "x{a=\"unterminated 1\n",
        "x{é=\"ü\"} 1 ∞\n",
        "# TYPE\n# HELP\n# TYPE only_name\n",
        "# HELP h trailing \\",
        "{} 1\n",
        "x 1 not-a-time\n",
        "x{a=\"\\\\\"} 1\n",
    ] {
        let _ = prometheus_text(input);
    }
    assert_eq!(
        prometheus_text("x{a=\"unterminated 1\n"),
        "x{a=\"unterminated 1\n"
    );
    assert_eq!(prometheus_text("x 1 not-a-time\n"), "x 1\n");
}

fn accept(values: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for v in values {
        headers.append(ACCEPT, HeaderValue::from_str(v).unwrap());
    }
    headers
}

/// Pins: OpenMetrics only when `Accept` asks for it at least as much as for `text/plain`;
/// 0.0.4 without `Accept`, for `*/*`, `text/plain` and unreadable weights.
#[test]
fn accept_picks_the_format() {
    let om = Format::OpenMetrics;
    let text = Format::Prometheus;
    for (headers, expected) in [
        (vec![], text),
        (vec!["*/*"], text),
        (vec!["text/plain"], text),
        (vec!["text/plain;version=0.0.4"], text),
        (vec!["application/json"], text),
        (vec!["application/openmetrics-text"], om),
        (vec!["Application/OpenMetrics-Text; version=1.0.0"], om),
        // Prometheus 2.x's scrape header.
        (
            vec!["application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"],
            om,
        ),
        (vec!["text/plain;q=0.9, application/openmetrics-text;q=0.5"], text),
        (vec!["text/plain", "application/openmetrics-text"], om),
        (vec!["application/openmetrics-text;q=0"], text),
        (vec!["application/openmetrics-text;q=junk"], text),
    ] {
        assert_eq!(Format::negotiate(&accept(&headers)), expected, "{headers:?}");
    }
    assert_eq!(
        text.content_type(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert_eq!(
        om.content_type(),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
}
