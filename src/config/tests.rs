//! Tests of config loading: the shipped example, values and defaults, every kind of error with
//! its place in the file, and the effective config.

use std::path::Path;

use super::locate::Locator;
use super::*;

mod defaults;

/// A small valid config; tests append to it or replace parts of it.
const BASE: &str = "\
server:
  listen: 127.0.0.1:8080
upstreams:
  orders:
    endpoints: [http://127.0.0.1:3000]
routes:
  - name: r
    upstream: orders
";

fn load(yaml: &str) -> Config {
    match from_yaml(yaml, Path::new("t.yaml")) {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn errors(yaml: &str) -> Vec<FieldError> {
    match from_yaml(yaml, Path::new("t.yaml")) {
        Ok(_) => panic!("expected errors, the config is valid:\n{yaml}"),
        Err(ConfigError::Invalid { errors, .. }) => errors,
        Err(e) => panic!("expected ConfigError::Invalid, got {e:?}"),
    }
}

/// The single error of `yaml`, which must be about `path`.
fn one_error(yaml: &str, path: &str) -> FieldError {
    let errors = errors(yaml);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    assert_eq!(errors[0].path, path, "{errors:#?}");
    errors.into_iter().next().unwrap()
}

/// A fixed cap size.
fn fixed(max: usize) -> CapSize {
    CapSize::Fixed(NonZeroUsize::new(max).unwrap())
}

/// An adaptive cap size.
fn adaptive(min: usize, max: usize) -> CapSize {
    CapSize::Adaptive(AdaptiveConfig {
        min_inflight: NonZeroUsize::new(min).unwrap(),
        max_inflight: NonZeroUsize::new(max).unwrap(),
    })
}

/// BASE with `route` (indented as a list item's fields) as an extra route `x`.
fn with_route(route: &str) -> String {
    format!("{BASE}  - name: x\n    upstream: orders\n{route}")
}

// === the shipped example ===

#[test]
fn shipped_example_is_valid() {
    // Pins: config/sluice.yaml, which documents every field, passes `sluice check`.
    let config = load(include_str!("../../config/sluice.yaml"));
    let names: Vec<&str> = config.routes.iter().map(|r| &*r.name).collect();
    assert_eq!(
        names,
        [
            "create-order",
            "new-order-form",
            "read-orders",
            "partners",
            "reports",
            "catch-all"
        ]
    );
    assert_eq!(config.upstreams.len(), 2);
    assert!(config.server.tls.is_none() && config.admin.is_some() && config.store.is_none());
}

#[test]
fn demo_config_is_valid() {
    // Pins: config/demo.yaml, which `sluice demo` runs, passes validation.
    let config = load(include_str!("../../config/demo.yaml"));
    assert!(!config.routes.is_empty());
}

// === values ===

const FULL: &str = "\
server:
  listen: 0.0.0.0:8080
  trusted_proxies: [10.0.0.0/8, 192.0.2.7, \"2001:db8::/32\"]
  ipv6_key_prefix: 56
  rate_limit_headers: false
  header_read_timeout: 5s
  max_connections: 500
  shutdown_grace: 1m
  workers: 2
  max_concurrent_streams: 50
  access_log: false
upstreams:
  orders:
    endpoints: [http://127.0.0.1:3000, http://127.0.0.1:3001]
    connect_timeout: 250ms
    timeout: 2s
    concurrency:
      max_inflight: 64
      queue: 256
      queue_timeout: 2s
  users:
    endpoints: [http://users.internal]
routes:
  - name: create-order
    match:
      host: API.Example.com
      path_prefix: /orders/
      methods: [post, PUT]
    upstream: orders
    priority: critical
    mode: shadow
    rate_limits:
      - name: per-client
        key: client_ip
        rate: 100/s
        burst: 200
        scope: local
      - key: header:X-Api-Key
        rate: 20/m
    concurrency:
      max_inflight: 16
      queue: 32
      queue_timeout: 500ms
  - name: users
    match:
      host: \"*.example.com\"
      path_exact: /users/me
    upstream: users
    priority: low
";

#[test]
fn full_example_parses_to_expected_values() {
    // Pins: every field of the schema lands in the right runtime field, normalised.
    let c = load(FULL);
    let s = &c.server;
    assert_eq!(s.listen, "0.0.0.0:8080".parse().unwrap());
    let proxies: Vec<String> = s.trusted_proxies.iter().map(ToString::to_string).collect();
    assert_eq!(proxies, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
    assert_eq!(s.ipv6_key_prefix, 56);
    assert!(!s.rate_limit_headers);
    assert_eq!(s.header_read_timeout, Duration::from_secs(5));
    assert_eq!(s.max_connections.get(), 500);
    assert_eq!(s.shutdown_grace, Duration::from_secs(60));
    assert_eq!(s.workers.map(NonZeroUsize::get), Some(2));
    assert_eq!(s.max_concurrent_streams, 50);

    // Upstreams keep file order; a missing port is 80.
    let names: Vec<&str> = c.upstreams.iter().map(|u| &*u.name).collect();
    assert_eq!(names, ["orders", "users"]);
    let orders = &c.upstreams[0];
    let eps: Vec<&str> = orders.endpoints.iter().map(Authority::as_str).collect();
    assert_eq!(eps, ["127.0.0.1:3000", "127.0.0.1:3001"]);
    assert_eq!(c.upstreams[1].endpoints[0].as_str(), "users.internal:80");
    assert_eq!(orders.connect_timeout, Duration::from_millis(250));
    assert_eq!(orders.timeout, Duration::from_secs(2));
    let cap = orders.concurrency.clone().unwrap();
    assert_eq!(
        (cap.size, cap.queue, cap.queue_timeout),
        (fixed(64), 256, Duration::from_secs(2))
    );

    let r = &c.routes[0];
    assert_eq!(
        r.matcher.host,
        Some(HostMatch::Exact("api.example.com".into()))
    );
    assert_eq!(r.matcher.path, PathMatch::Prefix("/orders".into()));
    assert_eq!(r.matcher.methods, Some(vec![Method::POST, Method::PUT]));
    assert_eq!(
        (r.upstream, r.priority, r.mode),
        (0, Priority::Critical, Mode::Shadow)
    );
    let l0 = &r.rate_limits[0];
    assert_eq!(
        (
            &*l0.name,
            &l0.key,
            l0.rate.to_string(),
            l0.burst.get(),
            l0.scope
        ),
        (
            "per-client",
            &KeySpec::ClientIp,
            "100/s".to_owned(),
            200,
            LimitScope::Local
        )
    );
    let l1 = &r.rate_limits[1];
    assert_eq!(&*l1.name, "limit-1");
    assert_eq!(
        l1.key,
        KeySpec::Header(HeaderName::from_static("x-api-key"))
    );
    assert_eq!(l1.rate.emission_interval(), Duration::from_secs(3));
    assert_eq!(l1.burst.get(), 20, "burst defaults to the rate's count");
    let cap = r.concurrency.clone().unwrap();
    assert_eq!(
        (cap.size, cap.queue, cap.queue_timeout),
        (fixed(16), 32, Duration::from_millis(500))
    );

    let r = &c.routes[1];
    assert_eq!(
        r.matcher.host,
        Some(HostMatch::Suffix(".example.com".into()))
    );
    assert_eq!(r.matcher.path, PathMatch::Exact("/users/me".into()));
    assert_eq!((r.upstream, r.priority), (1, Priority::Low));
}

#[test]
fn defaults_fill_what_is_absent() {
    // Pins: the documented defaults of every optional field.
    let c = load(&format!("{BASE}    concurrency:\n      max_inflight: 1\n    rate_limits:\n      - key: global\n        rate: 7/h\n"));
    let s = &c.server;
    assert!(s.tls.is_none() && s.trusted_proxies.is_empty() && s.workers.is_none());
    assert_eq!(s.ipv6_key_prefix, 64);
    assert!(s.rate_limit_headers);
    assert_eq!(s.header_read_timeout, Duration::from_secs(10));
    assert_eq!(s.max_connections.get(), 10_000);
    assert_eq!(s.shutdown_grace, Duration::from_secs(30));
    assert_eq!(s.max_concurrent_streams, 100);
    assert!(!s.access_log);
    let u = &c.upstreams[0];
    assert_eq!(
        (u.connect_timeout, u.timeout),
        (Duration::from_secs(1), Duration::from_secs(30))
    );
    assert!(u.concurrency.is_none());
    let r = &c.routes[0];
    assert_eq!(r.matcher.host, None);
    assert_eq!(r.matcher.path, PathMatch::Prefix("/".into()));
    assert_eq!(r.matcher.methods, None);
    assert_eq!((r.priority, r.mode), (Priority::Normal, Mode::Enforce));
    let l = &r.rate_limits[0];
    assert_eq!(
        (&*l.name, l.burst.get(), l.scope),
        ("limit-0", 7, LimitScope::Local)
    );
    let cap = r.concurrency.clone().unwrap();
    assert_eq!((cap.queue, cap.queue_timeout), (0, Duration::from_secs(1)));
    assert!(c.admin.is_none() && c.store.is_none());
}

#[test]
fn prefix_loses_trailing_slash_but_root_stays() {
    // Pins: `/orders/` is stored as `/orders`; `/` and `//` as `/`.
    for (given, stored) in [
        ("/orders/", "/orders"),
        ("/", "/"),
        ("//", "/"),
        ("/a/b", "/a/b"),
    ] {
        let c = load(&format!("{BASE}    match: {{path_prefix: \"{given}\"}}\n"));
        assert_eq!(
            c.routes[0].matcher.path,
            PathMatch::Prefix(stored.into()),
            "{given}"
        );
    }
}

#[test]
fn ipv6_endpoint_gets_default_port() {
    // Pins: `http://[::1]` becomes `[::1]:80`.
    let c = load(&BASE.replace("http://127.0.0.1:3000", "\"http://[::1]/\""));
    assert_eq!(c.upstreams[0].endpoints[0].as_str(), "[::1]:80");
}

#[test]
fn fleet_fields_resolve_interval_balance_and_the_endpoint_bound() {
    // Pins: `resolve_interval` takes 0 (at start and reload only); `balance` is one of two
    // words; an upstream lists at most MAX_ENDPOINTS endpoints.
    let fleet = |fields: &str| {
        BASE.replace(
            "    endpoints: [http://127.0.0.1:3000]\n",
            &format!("    endpoints: [http://127.0.0.1:3000]\n{fields}"),
        )
    };
    let c = load(&fleet(
        "    resolve_interval: 0s\n    balance: round_robin\n",
    ));
    assert_eq!(c.upstreams[0].resolve_interval, Duration::ZERO);
    assert_eq!(c.upstreams[0].balance, Balance::RoundRobin);
    let e = one_error(&fleet("    balance: random\n"), "upstreams.orders.balance");
    assert!(e.message.contains("least_request, round_robin"), "{e}");
    let many: Vec<String> = (0..=UpstreamConfig::MAX_ENDPOINTS)
        .map(|i| format!("http://127.0.0.1:{}", 1000 + i))
        .collect();
    let yaml = BASE.replace("http://127.0.0.1:3000", &many.join(", "));
    let e = one_error(&yaml, "upstreams.orders.endpoints");
    assert!(e.message.contains("at most 256"), "{e}");
}

#[test]
fn per_endpoint_is_an_upstream_cap_and_excludes_the_other_sizes() {
    // Pins: `per_endpoint` sizes an upstream's cap; a route refuses it; it excludes
    // `max_inflight` and `adaptive`.
    let upstream = |cap: &str| {
        BASE.replace(
            "    endpoints: [http://127.0.0.1:3000]\n",
            &format!("    endpoints: [http://127.0.0.1:3000]\n    concurrency: {{ {cap} }}\n"),
        )
    };
    let c = load(&upstream("per_endpoint: 16, queue: 64"));
    let cap = c.upstreams[0].concurrency.clone().expect("a cap");
    assert_eq!(
        cap.size,
        CapSize::PerEndpoint(NonZeroUsize::new(16).unwrap())
    );
    let e = one_error(
        &upstream("per_endpoint: 16, max_inflight: 4"),
        "upstreams.orders.concurrency",
    );
    assert!(e.message.contains("mutually exclusive"), "{e}");
    one_error(
        &with_route("    concurrency: { per_endpoint: 4 }\n"),
        "routes[1].concurrency.per_endpoint",
    );
}

// === errors found by serde ===

#[test]
fn unknown_field_names_path_line_and_column() {
    // Pins: deny_unknown_fields, with the path from serde_path_to_error and serde_yaml's place.
    let e = one_error(
        &with_route("    rate_limits:\n      - key: global\n        rat: 1/s\n"),
        "routes[1].rate_limits[0].rat",
    );
    assert_eq!((e.line, e.column), (Some(13), Some(9)));
    assert!(
        e.message
            .starts_with("unknown field `rat`, expected one of"),
        "{}",
        e.message
    );
}

/// Pins (issue 29, errors that teach): the mistakes a newcomer makes are said in their words,
/// at the same place as before.
#[test]
fn errors_teach_indentation_tabs_typos_and_nginx_rates() {
    let deeper = one_error(
        &with_route("    rate_limits:\n      - name: l\n          rate: 5/s\n"),
        "routes[1].rate_limits[0]",
    );
    assert_eq!(
        (deeper.line, deeper.message.as_str()),
        (
            Some(13),
            "indentation: `rate:` on line 13 is deeper than `name:` on line 12; keys of one \
             mapping line up (here at column 9)"
        )
    );
    let tab = errors(&with_route(
        "    rate_limits:\n      - name: l\n\trate: 5/s\n",
    ));
    assert_eq!(
        tab[0].message,
        "a tab is not allowed for indentation in YAML: indent with spaces"
    );
    let typo = one_error(
        &with_route("    concurrency:\n      max_inflight: 4\n      queue_timout: 1s\n"),
        "routes[1].concurrency.queue_timout",
    );
    assert!(
        typo.message.ends_with("did you mean `queue_timeout`?"),
        "{}",
        typo.message
    );
    let nginx = one_error(
        &with_route("    rate_limits:\n      - {name: l, key: global, rate: 5r/m}\n"),
        "routes[1].rate_limits[0].rate",
    );
    assert!(
        nginx
            .message
            .starts_with("NGINX's \"5r/m\" is written `5/m` in sluice"),
        "{}",
        nginx.message
    );
}

#[test]
fn wrong_type_says_what_was_expected() {
    // Pins: a type error names the field and what it should be, without serde_yaml's own path.
    let e = one_error(&BASE.replace("routes:", "routes:\n  - name: z\n    upstream: orders\n    rate_limits:\n      - {key: global, rate: 1/s, burst: lots}"), "routes[0].rate_limits[0].burst");
    assert_eq!(
        e.message,
        "invalid type: string \"lots\", expected a whole number"
    );
    assert_eq!((e.line, e.column), (Some(10), Some(41)));
}

#[test]
fn empty_file_and_non_mapping_are_clear() {
    // Pins: an empty file, a comment-only file and a top-level list get a plain message.
    for text in ["", "# nothing\n", "- a\n", "just text"] {
        let e = one_error(text, "");
        assert!(
            e.message.starts_with("expected a mapping with `server`"),
            "{text:?}: {}",
            e.message
        );
    }
}

#[test]
fn yaml_syntax_error_has_a_place() {
    // Pins: a YAML syntax error keeps libyaml's place and no bogus path.
    let errors = errors("server: {listen: 127.0.0.1:8080\n");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].line.is_some() && !errors[0].path.contains('?'),
        "{errors:?}"
    );
}

#[test]
fn duplicate_upstream_key_is_an_error() {
    // Pins: a YAML mapping with the same upstream twice is refused, not merged.
    let yaml = BASE.replace(
        "upstreams:\n",
        "upstreams:\n  orders:\n    endpoints: [http://127.0.0.1:1]\n",
    );
    let e = one_error(&yaml, "upstreams");
    assert!(e.message.contains("duplicate"), "{}", e.message);
}

// === errors found by validation ===

#[test]
fn bad_rate_is_reported_like_a_compiler() {
    // Pins: the exact one-line format FILE:LINE:COLUMN: FIELD_PATH: MESSAGE.
    let yaml = format!("{BASE}    rate_limits:\n      - key: client_ip\n        rate: 100/x\n");
    let err = from_yaml(&yaml, Path::new("config/sluice.yaml")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "config/sluice.yaml:11:15: routes[0].rate_limits[0].rate: expected a rate like 100/s, 20/m or 5/h, found \"100/x\""
    );
}

#[test]
fn zero_rate_is_refused() {
    // Pins: N in N/s must be positive.
    let e = one_error(
        &format!("{BASE}    rate_limits:\n      - {{key: global, rate: 0/s}}\n"),
        "routes[0].rate_limits[0].rate",
    );
    assert_eq!(e.message, "a rate must be positive, found \"0/s\"");
}

#[test]
fn bad_and_zero_durations_are_refused() {
    // Pins: a duration needs a unit; a zero timeout is refused; a zero grace period is fine.
    let yaml = BASE.replace(
        "    endpoints:",
        "    timeout: 30\n    connect_timeout: 0s\n    endpoints:",
    );
    let errors = errors(&yaml);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!(errors[0].path, "upstreams.orders.timeout");
    assert!(
        errors[0]
            .message
            .starts_with("expected a duration with a unit like 250ms"),
        "{}",
        errors[0].message
    );
    assert_eq!(errors[1].path, "upstreams.orders.connect_timeout");
    assert_eq!(errors[1].message, "must be greater than 0, found \"0s\"");
    load(&BASE.replace(
        "  listen: 127.0.0.1:8080",
        "  listen: 127.0.0.1:8080\n  shutdown_grace: 0s",
    ));
}

#[test]
fn unknown_upstream_lists_the_known_ones() {
    // Pins: a route naming a missing upstream says which upstreams exist.
    let e = one_error(
        &BASE.replace("upstream: orders", "upstream: order"),
        "routes[0].upstream",
    );
    assert_eq!(
        e.message,
        "unknown upstream \"order\"; known upstreams: orders"
    );
    assert_eq!((e.line, e.column), (Some(8), Some(15)));
}

#[test]
fn duplicate_route_name_is_refused() {
    // Pins: route names are unique; the error points at the second use and names the first.
    let e = one_error(
        &format!("{BASE}  - name: r\n    upstream: orders\n"),
        "routes[1].name",
    );
    assert_eq!(
        e.message,
        "duplicate route name \"r\" (first used at routes[0].name)"
    );
    assert_eq!((e.line, e.column), (Some(9), Some(11)));
}

#[test]
fn duplicate_limit_name_is_refused_even_when_defaulted() {
    // Pins: limit names are unique within a route, defaults (`limit-<i>`) included.
    let yaml = format!("{BASE}    rate_limits:\n      - {{name: a, key: global, rate: 1/s}}\n      - {{name: a, key: global, rate: 2/s}}\n");
    let e = one_error(&yaml, "routes[0].rate_limits[1].name");
    assert!(
        e.message.starts_with("duplicate limit name \"a\""),
        "{}",
        e.message
    );
    let yaml = format!("{BASE}    rate_limits:\n      - {{name: limit-1, key: global, rate: 1/s}}\n      - {{key: global, rate: 2/s}}\n");
    one_error(&yaml, "routes[0].rate_limits[1]");
    // The same limit name in two routes is fine.
    load(&format!("{BASE}    rate_limits: [{{name: a, key: global, rate: 1/s}}]\n  - name: s\n    upstream: orders\n    rate_limits: [{{name: a, key: global, rate: 1/s}}]\n"));
}

#[test]
fn path_prefix_and_path_exact_exclude_each_other() {
    // Pins: giving both is an error at `match`.
    let e = one_error(
        &format!("{BASE}    match:\n      path_prefix: /a\n      path_exact: /a/b\n"),
        "routes[0].match",
    );
    assert!(e.message.contains("mutually exclusive"));
    assert_eq!((e.line, e.column), (Some(9), Some(5)));
    let e = one_error(
        &format!("{BASE}    match: {{path_exact: orders}}\n"),
        "routes[0].match.path_exact",
    );
    assert_eq!(e.message, "a path must start with /, found \"orders\"");
}

#[test]
fn host_must_be_exact_or_leading_wildcard() {
    // Pins: `a.*.com`, ports, paths and junk are refused in match.host.
    for (host, expected) in [
        ("a.*.com", "only a leading wildcard"),
        ("\"*\"", "only a leading wildcard"),
        ("api.example.com:8080", "must not contain a port"),
        ("api.example.com/x", "must not contain a path"),
        ("a..b", "expected a host name"),
        ("\"a b\"", "expected a host name"),
    ] {
        let e = one_error(
            &format!("{BASE}    match: {{host: {host}}}\n"),
            "routes[0].match.host",
        );
        assert!(e.message.contains(expected), "{host}: {}", e.message);
    }
}

#[test]
fn header_key_needs_a_valid_header_name() {
    // Pins: `header:<Name>` is checked as an HTTP header name; other keys are refused.
    let e = one_error(
        &format!("{BASE}    rate_limits: [{{key: \"header:X Api\", rate: 1/s}}]\n"),
        "routes[0].rate_limits[0].key",
    );
    assert_eq!(
        e.message,
        "\"X Api\" is not a valid header name, in \"header:X Api\""
    );
    let e = one_error(
        &format!("{BASE}    rate_limits: [{{key: ip, rate: 1/s}}]\n"),
        "routes[0].rate_limits[0].key",
    );
    assert_eq!(
        e.message,
        "expected global, client_ip or header:<Name>, found \"ip\""
    );
}

#[test]
fn bad_cidr_is_refused() {
    // Pins: trusted_proxies entries are CIDRs or addresses, each error at its item.
    let yaml = BASE.replace(
        "  listen: 127.0.0.1:8080",
        "  listen: 127.0.0.1:8080\n  trusted_proxies: [10.0.0.0/8, 10.0.0.0/33, bogus]",
    );
    let errors = errors(&yaml);
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["server.trusted_proxies[1]", "server.trusted_proxies[2]"]
    );
    assert!(errors[0]
        .message
        .starts_with("expected a CIDR like 10.0.0.0/8"));
}

#[test]
fn endpoints_must_be_http_or_https_urls() {
    // Pins: https:// endpoints are taken (port 443 by default); paths, user info and other
    // schemes are refused.
    let config = load(&BASE.replace("http://127.0.0.1:3000", "https://127.0.0.1"));
    assert!(config.upstreams[0].https);
    assert_eq!(config.upstreams[0].endpoints[0].as_str(), "127.0.0.1:443");
    for bad in [
        "http://h:1/api",
        "ftp://h",
        "127.0.0.1:3000",
        "http://u:p@h:1",
        "\"\"",
    ] {
        one_error(
            &BASE.replace("http://127.0.0.1:3000", bad),
            "upstreams.orders.endpoints[0]",
        );
    }
    let e = one_error(
        &BASE.replace("[http://127.0.0.1:3000]", "[]"),
        "upstreams.orders.endpoints",
    );
    assert!(e.message.starts_with("at least one endpoint"));
}

#[test]
fn numbers_are_range_checked() {
    // Pins: the bounds of ipv6_key_prefix, max_connections, workers, max_concurrent_streams,
    // burst and max_inflight.
    let yaml = format!(
        "{}    rate_limits: [{{key: global, rate: 1/s, burst: 0}}]\n    concurrency: {{max_inflight: 0, queue: -1}}\n",
        BASE.replace(
            "  listen: 127.0.0.1:8080",
            "  listen: 127.0.0.1:8080\n  ipv6_key_prefix: 129\n  max_connections: 0\n  workers: 0\n  max_concurrent_streams: 5000000000"
        )
    );
    let paths: Vec<String> = errors(&yaml).into_iter().map(|e| e.path).collect();
    assert_eq!(
        paths,
        [
            "server.ipv6_key_prefix",
            "server.max_connections",
            "server.workers",
            "server.max_concurrent_streams",
            "routes[0].rate_limits[0].burst",
            "routes[0].concurrency.max_inflight",
            "routes[0].concurrency.queue",
        ]
    );
}

#[test]
fn adaptive_caps_take_bounds_with_defaults() {
    // Pins: `adaptive:` on an upstream or a route instead of `max_inflight`; an absent bound is
    // 2 (min_inflight) or 256 (max_inflight), the contract example's values.
    let yaml = BASE.replace(
        "    endpoints: [http://127.0.0.1:3000]\n",
        "    endpoints: [http://127.0.0.1:3000]\n    concurrency: {adaptive: {min_inflight: 4, max_inflight: 1000000}, queue: 8}\n",
    ) + "    concurrency:\n      adaptive: {}\n";
    let c = load(&yaml);
    let up = c.upstreams[0].concurrency.clone().unwrap();
    assert_eq!((up.size, up.queue), (adaptive(4, 1_000_000), 8));
    assert_eq!(
        c.routes[0].concurrency.clone().unwrap().size,
        adaptive(2, 256)
    );
    // `/config` shows the file's form, defaults filled in, and loads back to itself.
    let e = serde_json::to_value(&c).unwrap();
    let route_cap = &e["routes"][0]["concurrency"];
    assert_eq!(route_cap["adaptive"]["min_inflight"], 2);
    assert_eq!(route_cap["adaptive"]["max_inflight"], 256);
    assert!(route_cap.get("max_inflight").is_none(), "{route_cap}");
    assert_eq!(serde_json::to_value(load(&e.to_string())).unwrap(), e);
    let c = load(&format!(
        "{BASE}    concurrency: {{adaptive: {{max_inflight: 2}}}}\n"
    ));
    assert_eq!(
        c.routes[0].concurrency.clone().unwrap().size,
        adaptive(2, 2)
    );
}

#[test]
fn adaptive_cap_errors_name_their_field() {
    // Pins: exactly one of max_inflight and adaptive; bounds in 1..=1000000 with
    // min_inflight <= max_inflight, the defaults included; unknown fields refused.
    let at = |c: &str| format!("{BASE}    concurrency: {c}\n");
    let e = one_error(
        &at("{max_inflight: 8, adaptive: {}}"),
        "routes[0].concurrency",
    );
    assert!(e.message.contains("mutually exclusive"), "{e}");
    let e = one_error(&at("{queue: 8}"), "routes[0].concurrency.max_inflight");
    assert!(e.message.contains("adaptive"), "{e}");
    let paths: Vec<String> = errors(&at("{adaptive: {min_inflight: 0, max_inflight: 1000001}}"))
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(
        paths,
        [
            "routes[0].concurrency.adaptive.min_inflight",
            "routes[0].concurrency.adaptive.max_inflight"
        ]
    );
    let e = one_error(
        &at("{adaptive: {min_inflight: 9, max_inflight: 8}}"),
        "routes[0].concurrency.adaptive.min_inflight",
    );
    assert!(e.message.contains("9 > max_inflight 8"), "{e}");
    let e = one_error(
        &at("{adaptive: {max_inflight: 1}}"),
        "routes[0].concurrency.adaptive.min_inflight",
    );
    assert!(
        e.message.contains("2 (the default) > max_inflight 1"),
        "{e}"
    );
    one_error(
        &at("{adaptive: {min: 2}}"),
        "routes[0].concurrency.adaptive.min",
    );
}

#[test]
fn methods_are_upper_cased_and_junk_refused() {
    // Pins: `get` becomes GET; a method that is not an HTTP token and an empty list are refused.
    let e = one_error(
        &format!("{BASE}    match: {{methods: [get, \"G T\"]}}\n"),
        "routes[0].match.methods[1]",
    );
    assert!(e.message.starts_with("expected an HTTP method"));
    one_error(
        &format!("{BASE}    match: {{methods: []}}\n"),
        "routes[0].match.methods",
    );
}

#[test]
fn enums_list_their_choices() {
    // Pins: priority, mode and scope words, with the accepted ones in the message.
    let e = one_error(
        &format!("{BASE}    priority: urgent\n"),
        "routes[0].priority",
    );
    assert_eq!(
        e.message,
        "expected one of critical, high, normal, low; found \"urgent\""
    );
    one_error(&format!("{BASE}    mode: dry-run\n"), "routes[0].mode");
    one_error(
        &format!("{BASE}    rate_limits: [{{key: global, rate: 1/s, scope: cluster}}]\n"),
        "routes[0].rate_limits[0].scope",
    );
}

#[test]
fn required_fields_point_at_their_parent() {
    // Pins: a missing field is reported by its path, placed at the nearest existing parent.
    let e = one_error("server:\n  workers: 1\nupstreams:\n  a:\n    endpoints: [http://h]\nroutes:\n  - name: r\n    upstream: a\n", "server.listen");
    assert_eq!((e.line, e.column), (Some(1), Some(1)));
    let e = one_error(&format!("{BASE}  - upstream: orders\n"), "routes[1].name");
    assert_eq!((e.line, e.column), (Some(9), Some(5)));
    one_error(
        &BASE.replace(
            "routes:\n  - name: r\n    upstream: orders\n",
            "routes: []\n",
        ),
        "routes",
    );
}

// === store and scope: global ===

/// A config with `store` (its fields given by `redis`) and a route whose limit is global.
fn with_store(redis: &str) -> String {
    format!(
        "{}store:\n  redis: {{{redis}}}\n{}    rate_limits: [{{key: global, rate: 1/s, scope: global}}]\n",
        BASE.split("upstreams:").next().unwrap(),
        &BASE[BASE.find("upstreams:").unwrap()..]
    )
}

#[cfg(feature = "redis")]
#[test]
fn store_and_global_scope_are_accepted() {
    // Pins: store.redis with its defaults (timeout 20ms, on_error local) and scope: global.
    let c = load(&with_store("url: \"redis://u:secret@h:6379\""));
    let redis = c.store.as_ref().unwrap().redis.as_ref().unwrap();
    assert_eq!(
        redis.target,
        RedisTarget::Server("redis://u:secret@h:6379".into())
    );
    assert_eq!(redis.timeout, Duration::from_millis(20));
    assert_eq!(redis.on_error, OnStoreError::Local);
    assert_eq!(c.routes[0].rate_limits[0].scope, LimitScope::Global);
    let c = load(&with_store(
        "url: \"rediss://h\", timeout: 5ms, on_error: deny",
    ));
    let redis = c.store.as_ref().unwrap().redis.as_ref().unwrap();
    assert_eq!(
        (redis.timeout, redis.on_error),
        (Duration::from_millis(5), OnStoreError::Deny)
    );
}

#[cfg(not(feature = "redis"))]
#[test]
fn global_scope_is_refused_without_redis_support() {
    // Pins: a build without the `redis` feature refuses scope: global, saying why; the store
    // section itself is accepted, so one config file serves both builds.
    let e = one_error(
        &with_store("url: \"redis://h\""),
        "routes[0].rate_limits[0].scope",
    );
    assert!(e.message.contains("cargo feature `redis`"), "{e}");
    load(&BASE.replace(
        "upstreams:",
        "store:\n  redis: {url: \"redis://h\"}\nupstreams:",
    ));
}

#[cfg(feature = "redis")]
#[test]
fn a_bad_redis_url_is_refused_redacted() {
    // Pins: a URL the Redis client cannot use is a config error at its field, and the message
    // does not show the password.
    let e = one_error(
        &with_store("url: \"redis://u:hunter2@h:notaport\""),
        "store.redis.url",
    );
    assert!(e.message.contains("not a valid Redis URL"), "{e}");
    assert!(!e.message.contains("hunter2"), "{e}");
    let e = one_error(
        &with_store("url: \"http://u:hunter2@h\""),
        "store.redis.url",
    );
    assert!(!e.message.contains("hunter2"), "{e}");
    let e = one_error(
        &with_store("url: \"rediss://u:hunter2@h#insecure\""),
        "store.redis.url",
    );
    assert!(e.message.contains("store.redis.ca"), "{e}");
    assert!(!e.message.contains("hunter2"), "{e}");
    one_error(
        &with_store("url: \"redis://h\", timeout: 0ms"),
        "store.redis.timeout",
    );
    one_error(
        &with_store("url: \"redis://h\", on_error: ignore"),
        "store.redis.on_error",
    );
}

#[cfg(feature = "redis")]
#[test]
fn check_summary_shows_the_store_redacted() {
    // Pins: `sluice check` names the store, without its password.
    let c = load(&with_store(
        "url: \"redis://u:hunter2@h:6379\", on_error: allow",
    ));
    let text = c.to_string();
    assert!(
        text.contains("redis  redis://u:***@h:6379 (timeout 20ms, on_error allow)"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[cfg(feature = "redis")]
#[test]
fn cluster_seeds_are_an_alternative_to_url() {
    // Pins: `cluster` lists seed URLs (each checked, redacted in messages), exclusive with
    // `url`; one of the two is required; seeds do not mix TLS and plain.
    let c = load(&with_store(
        "cluster: [\"redis://:pw@10.0.0.1:7000\", \"redis://:pw@10.0.0.2:7000\"]",
    ));
    let redis = c.store.as_ref().unwrap().redis.as_ref().unwrap();
    assert_eq!(
        redis.target,
        RedisTarget::Cluster(vec![
            "redis://:pw@10.0.0.1:7000".into(),
            "redis://:pw@10.0.0.2:7000".into()
        ])
    );
    let text = c.to_string();
    assert!(
        text.contains("redis  cluster [redis://:***@10.0.0.1:7000, redis://:***@10.0.0.2:7000]"),
        "{text}"
    );
    let e = one_error(
        &with_store("url: \"redis://h\", cluster: [\"redis://h:7000\"]"),
        "store.redis",
    );
    assert!(e.message.contains("mutually exclusive"), "{e}");
    let e = one_error(&with_store("timeout: 5ms"), "store.redis.url");
    assert!(e.message.contains("cluster"), "{e}");
    one_error(&with_store("cluster: []"), "store.redis.cluster");
    let e = one_error(
        &with_store("cluster: [\"redis://h:7000\", \"redis://:hunter2@h:port\"]"),
        "store.redis.cluster[1]",
    );
    assert!(!e.message.contains("hunter2"), "{e}");
    let e = one_error(
        &with_store("cluster: [\"redis://h:7000\", \"rediss://h:7001\"]"),
        "store.redis.cluster",
    );
    assert!(e.message.contains("mix"), "{e}");
    let many: Vec<String> = (0..65)
        .map(|i| format!("\"redis://h:{}\"", 7000 + i))
        .collect();
    one_error(
        &with_store(&format!("cluster: [{}]", many.join(", "))),
        "store.redis.cluster",
    );
}

#[cfg(feature = "redis")]
#[test]
fn the_redis_ca_is_read_and_checked_at_load() {
    // Pins: `store.redis.ca` is read when the config is loaded (its certificates kept for the
    // connections); a missing file, a file without certificates, a broken PEM and a ca without
    // TLS are errors at `store.redis.ca`.
    let ca = rcgen::generate_simple_self_signed(vec!["redis.test".to_owned()]).unwrap();
    let good = TempFile::new("ca.pem", ca.cert.pem().as_bytes());
    let c = load(&with_store(&format!(
        "url: \"rediss://h:6380\", ca: \"{}\"",
        good.0.display()
    )));
    let redis = c.store.as_ref().unwrap().redis.as_ref().unwrap();
    assert_eq!(redis.ca.as_deref(), Some(good.0.as_path()));
    assert_eq!(redis.ca_pem.as_deref(), Some(ca.cert.pem().as_bytes()));
    assert!(c.to_string().contains(", ca "), "{c}");

    let e = one_error(
        &with_store("url: \"rediss://h\", ca: /nonexistent/ca.pem"),
        "store.redis.ca",
    );
    assert!(
        e.message.starts_with("cannot read /nonexistent/ca.pem"),
        "{e}"
    );
    let empty = TempFile::new("ca.pem", b"no certificate here\n");
    let e = one_error(
        &with_store(&format!(
            "url: \"rediss://h\", ca: \"{}\"",
            empty.0.display()
        )),
        "store.redis.ca",
    );
    assert!(e.message.contains("no certificate"), "{e}");
    let broken = TempFile::new(
        "ca.pem",
        b"-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n",
    );
    let e = one_error(
        &with_store(&format!(
            "url: \"rediss://h\", ca: \"{}\"",
            broken.0.display()
        )),
        "store.redis.ca",
    );
    assert!(e.message.contains("not a valid PEM"), "{e}");
    let e = one_error(
        &with_store(&format!("url: \"redis://h\", ca: \"{}\"", good.0.display())),
        "store.redis.ca",
    );
    assert!(e.message.contains("rediss://"), "{e}");
}

#[test]
fn a_lease_needs_a_global_limit_and_fits_its_burst() {
    // Pins: `lease` defaults to 0; it is refused on a local limit, above the burst, above
    // 1,000,000 and below 0, each at its field.
    let limit = |fields: &str| {
        format!(
            "{}store:\n  redis: {{url: \"redis://h\"}}\n{}    rate_limits: [{{key: global, {fields}}}]\n",
            BASE.split("upstreams:").next().unwrap(),
            &BASE[BASE.find("upstreams:").unwrap()..]
        )
    };
    #[cfg(feature = "redis")]
    {
        let c = load(&limit("rate: 100/s, scope: global"));
        assert_eq!(c.routes[0].rate_limits[0].lease, 0);
        let c = load(&limit("rate: 100/s, burst: 50, scope: global, lease: 50"));
        assert_eq!(c.routes[0].rate_limits[0].lease, 50);
        assert!(c.to_string().contains("scope global, lease 50"), "{c}");
        let e = one_error(
            &limit("rate: 100/s, burst: 50, scope: global, lease: 51"),
            "routes[0].rate_limits[0].lease",
        );
        assert!(e.message.contains("burst (50)"), "{e}");
        let e = one_error(
            &limit("rate: 2000000/s, scope: global, lease: 1000001"),
            "routes[0].rate_limits[0].lease",
        );
        assert!(e.message.contains("at most 1000000"), "{e}");
        one_error(
            &limit("rate: 100/s, scope: global, lease: -1"),
            "routes[0].rate_limits[0].lease",
        );
    }
    let e = one_error(
        &limit("rate: 100/s, lease: 10"),
        "routes[0].rate_limits[0].lease",
    );
    assert!(e.message.contains("scope: global"), "{e}");
    load(&limit("rate: 100/s, lease: 0"));
}

#[cfg(feature = "redis")]
#[test]
fn the_commented_store_and_defer_examples_load() {
    // Pins: the `store` and `defer` blocks config/sluice.yaml leaves commented (so that it runs
    // without Redis) are valid once uncommented.
    let text = include_str!("../../config/sluice.yaml");
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("# store:") || line.starts_with("  # - name: hooks") {
            inside = true;
        } else if line.trim().is_empty() {
            inside = false;
        }
        match line.find("# ") {
            Some(at) if inside => {
                out.push_str(&line[..at]);
                out.push_str(&line[at + 2..]);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    let config = load(&out);
    let hooks = config
        .routes
        .iter()
        .find(|r| &*r.name == "hooks")
        .expect("hooks");
    let defer = hooks.defer.expect("defer");
    assert_eq!((defer.when, defer.attempts.get()), (DeferWhen::Overflow, 4));
    assert!(config.store.is_some());
}

#[test]
fn defer_defaults_bounds_and_needs() {
    // Pins: `defer:` takes the contract's defaults; every number and duration is bounded at its
    // field; it needs store.redis and mode: enforce; `check` prints it; /config shows it.
    let with_defer = |store: bool, fields: &str| {
        let store = if store {
            "store:\n  redis: {url: \"redis://h\"}\n"
        } else {
            ""
        };
        format!(
            "{}{store}{}    defer: {{{fields}}}\n",
            BASE.split("upstreams:").next().unwrap(),
            &BASE[BASE.find("upstreams:").unwrap()..]
        )
    };
    #[cfg(feature = "redis")]
    {
        let c = load(&with_defer(true, ""));
        let d = c.routes[0].defer.expect("defer");
        assert_eq!(d.when, DeferWhen::Overflow);
        assert_eq!(d.max_body, ByteSize(1 << 20));
        assert_eq!(d.attempts.get(), 4);
        assert_eq!(d.backoff, Duration::from_secs(1));
        assert_eq!(d.ttl, Duration::from_secs(24 * 3600));
        assert_eq!(d.max_tasks, 100_000);
        assert_eq!(d.backoff_max, Duration::from_secs(300));
        assert!(
            c.to_string().contains(
                "defer overflow: max_body 1MiB, attempts 4, backoff 1s..5m, ttl 1day, max_tasks 100000"
            ),
            "{c}"
        );
        // Tasks live on store.redis' server by default, with a task timeout of 2 s.
        let tasks = c
            .store
            .as_ref()
            .and_then(|s| s.tasks.as_ref())
            .expect("tasks");
        assert_eq!(tasks.target, RedisTarget::Server("redis://h".into()));
        assert_eq!(tasks.timeout, Duration::from_secs(2));
        let e = serde_json::to_value(&c).unwrap();
        assert_eq!(e["routes"][0]["defer"]["when"], "overflow");
        assert_eq!(e["routes"][0]["defer"]["ttl"], "1day");
        let c = load(&with_defer(
            true,
            "when: always, max_body: 64MiB, attempts: 100, backoff: 1m, ttl: 7d, max_tasks: 7, backoff_max: 1h",
        ));
        let d = c.routes[0].defer.expect("defer");
        assert_eq!(
            (d.when, d.max_body.0, d.attempts.get(), d.max_tasks),
            (DeferWhen::Always, 64 << 20, 100, 7)
        );
        assert_eq!(d.backoff_max, Duration::from_secs(3600));
        for (fields, field, says) in [
            ("when: later", "when", "overflow, always"),
            ("max_body: 65MiB", "max_body", "at most 64MiB"),
            ("max_tasks: 0", "max_tasks", "at least 1"),
            (
                "backoff: 10s, backoff_max: 5s",
                "backoff_max",
                "at least backoff",
            ),
            ("backoff_max: 25h", "backoff_max", "at most 1day"),
            ("attempts: 0", "attempts", "at least 1"),
            ("attempts: 101", "attempts", "at most 100"),
            ("backoff: 61s", "backoff", "at most 1m"),
            ("backoff: 0s", "backoff", "at least 1ms"),
            ("ttl: 8d", "ttl", "at most 7days"),
            ("ttl: 500ms", "ttl", "at least 1s"),
        ] {
            let e = one_error(
                &with_defer(true, fields),
                &format!("routes[0].defer.{field}"),
            );
            assert!(e.message.contains(says), "{fields}: {e}");
        }
        let shadow = with_defer(true, "").replace("    defer:", "    mode: shadow\n    defer:");
        let e = one_error(&shadow, "routes[0].defer");
        assert!(e.message.contains("mode: shadow"), "{e}");
    }
    #[cfg(feature = "redis")]
    {
        let e = one_error(&with_defer(false, "when: always"), "routes[0].defer");
        assert!(e.message.contains("needs store.redis"), "{e}");
        // store.tasks alone is enough for deferral, with its own server and timeout; it is
        // not for global limits.
        let tasks_only = with_defer(false, "").replace(
            "routes:",
            "store:\n  tasks: {url: \"redis://t:6380\", timeout: 3s}\nroutes:",
        );
        let c = load(&tasks_only);
        let tasks = c
            .store
            .as_ref()
            .and_then(|s| s.tasks.as_ref())
            .expect("tasks");
        assert_eq!(tasks.target, RedisTarget::Server("redis://t:6380".into()));
        assert_eq!(tasks.timeout, Duration::from_secs(3));
        assert!(c.store.as_ref().is_some_and(|s| s.redis.is_none()));
        assert!(
            c.to_string().contains("tasks  redis://t:6380 (timeout 3s"),
            "{c}"
        );
        // A timeout alone keeps store.redis' server; without store.redis it needs a url.
        let inherit = with_defer(true, "").replace(
            "  redis: {url: \"redis://h\"}\n",
            "  redis: {url: \"redis://h\"}\n  tasks: {timeout: 5s}\n",
        );
        let c = load(&inherit);
        let tasks = c
            .store
            .as_ref()
            .and_then(|s| s.tasks.as_ref())
            .expect("tasks");
        assert_eq!(
            (&tasks.target, tasks.timeout),
            (
                &RedisTarget::Server("redis://h".into()),
                Duration::from_secs(5)
            )
        );
        let orphan = tasks_only.replace("{url: \"redis://t:6380\", timeout: 3s}", "{timeout: 3s}");
        one_error(&orphan, "store.tasks.url");
        let unknown = tasks_only.replace("timeout: 3s}", "timeout: 3s, on_error: deny}");
        assert!(!errors(&unknown).is_empty());
    }
    #[cfg(not(feature = "redis"))]
    {
        let errors = errors(&with_defer(true, "when: always"));
        assert!(
            errors
                .iter()
                .any(|e| e.path == "routes[0].defer" && e.message.contains("Redis support")),
            "{errors:#?}"
        );
    }
}

#[test]
fn global_scope_requires_a_store() {
    // Pins: scope: global without store.redis is an error of its own.
    let errors = errors(&format!(
        "{BASE}    rate_limits: [{{key: global, rate: 1/s, scope: global}}]\n"
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("needs store.redis")),
        "{errors:#?}"
    );
}

#[test]
fn tls_files_are_read_at_load() {
    // Pins: server.tls is accepted, and its files are read when the config is loaded: a
    // missing cert and key give one error each, at their field, naming the file.
    // (Valid and invalid certificates: tests/tls.rs, which generates them.)
    let yaml = BASE.replace("  listen: 127.0.0.1:8080", "  listen: 127.0.0.1:8080\n  tls:\n    listen: 127.0.0.1:8443\n    cert: /nonexistent/c.pem\n    key: /nonexistent/k.pem");
    let errors = errors(&yaml);
    let found: Vec<_> = errors
        .iter()
        .map(|e| (e.path.as_str(), e.line, e.column))
        .collect();
    assert_eq!(
        found,
        [
            ("server.tls.cert", Some(5), Some(11)),
            ("server.tls.key", Some(6), Some(10))
        ]
    );
    let files = ["/nonexistent/c.pem", "/nonexistent/k.pem"];
    for (e, file) in errors.iter().zip(files) {
        let expected = format!("cannot read {file}: ");
        assert!(e.message.starts_with(&expected), "{e}");
    }
}

// === all errors at once ===

#[test]
fn every_error_is_reported_in_file_order() {
    // Pins: validation collects all errors, sorted by line, one output line each.
    let yaml = "\
server:
  listen: nowhere
upstreams:
  a:
    endpoints: [ftp://h]
    timeout: soon
routes:
  - name: r
    upstream: b
    rate_limits:
      - {key: global, rate: 1/x}
  - name: r
    upstream: a
";
    let err = from_yaml(yaml, Path::new("f.yaml")).unwrap_err();
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    let prefixes: Vec<&str> = lines
        .iter()
        .map(|l| l.split(": ").next().unwrap())
        .collect();
    assert_eq!(
        prefixes,
        [
            "f.yaml:2:11",
            "f.yaml:5:17",
            "f.yaml:6:14",
            "f.yaml:9:15",
            "f.yaml:11:29",
            "f.yaml:12:11"
        ]
    );
    assert_eq!(
        lines[4],
        "f.yaml:11:29: routes[0].rate_limits[0].rate: expected a rate like 100/s, 20/m or 5/h, found \"1/x\""
    );
    assert!(
        lines[5].contains("routes[1].name: duplicate route name"),
        "{}",
        lines[5]
    );
}

#[test]
fn read_error_names_the_file() {
    // Pins: a missing file is ConfigError::Read, with the path in the message.
    let err = load_err(Path::new("/nonexistent/sluice.yaml"));
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err
        .to_string()
        .starts_with("cannot read config file /nonexistent/sluice.yaml: "));
}

fn load_err(path: &Path) -> ConfigError {
    super::load(path).unwrap_err()
}

/// Odd YAML (anchors and aliases, tags, complex keys, nulls, huge numbers, empty names, a BOM)
/// never panics: each input is either valid or refused with `ConfigError::Invalid` whose every
/// error has a message and a place inside the text, and which blames the fields at fault.
#[test]
fn junk_never_panics() {
    // (text, Ok: valid / Err: the paths of its errors, in the order reported)
    let cases: [(&str, Result<(), &[&str]>); 10] = [
        ("server: ~\n", Err(&["routes", "server"])),
        (
            // The alias is resolved: the error is about the anchored value, where it is used.
            "server:\n  listen: &a 127.0.0.1:1\nupstreams: {x: {endpoints: [*a]}}\nroutes: [{name: r, upstream: x}]\n",
            Err(&["upstreams.x.endpoints[0]"]),
        ),
        (
            "server: {listen: 127.0.0.1:1}\nupstreams: {x: {endpoints: [&e \"http://127.0.0.1:2\"]}, y: {endpoints: [*e]}}\nroutes: [{name: r, upstream: y}]\n",
            Ok(()),
        ),
        ("? [a, b]\n: c\n", Err(&[""])),
        ("!tag {server: 1}\n", Err(&[""])),
        (
            "server: {listen: 1.2.3.4:5, max_connections: 99999999999999999999}\n",
            Err(&["server.max_connections"]),
        ),
        (
            "routes: [{name: \"\", upstream: \"\", match: {host: \"\", path_prefix: \"\"}}]\n",
            Err(&[
                "server",
                "routes[0].name",
                "routes[0].upstream",
                "routes[0].match.host",
                "routes[0].match.path_prefix",
            ]),
        ),
        (
            "upstreams: {\"\": {endpoints: [\"http://\"]}}\n",
            Err(&["server", "upstreams.", "routes", "upstreams..endpoints[0]"]),
        ),
        // The BOM is skipped: `server` is read, only the routes are missing.
        ("\u{feff}server: {listen: \"[::]:80\"}\n", Err(&["routes"])),
        (
            "routes:\n  - rate_limits: [{rate: \"/s\"}, {rate: \"4294967296/s\"}, {rate: \"1/\"}]\n",
            Err(&[
                "server",
                "routes[0].name",
                "routes[0].upstream",
                "routes[0].rate_limits[0].key",
                "routes[0].rate_limits[0].rate",
                "routes[0].rate_limits[1].key",
                "routes[0].rate_limits[1].rate",
                "routes[0].rate_limits[2].key",
                "routes[0].rate_limits[2].rate",
            ]),
        ),
    ];
    for (text, expected) in cases {
        let result = std::panic::catch_unwind(|| from_yaml(text, Path::new("t.yaml")))
            .unwrap_or_else(|_| panic!("from_yaml panicked on {text:?}"));
        let (e, blamed) = match (result, expected) {
            (Ok(_), Ok(())) => continue,
            (Ok(_), Err(_)) => panic!("accepted junk {text:?}"),
            (Err(e), Ok(())) => panic!("refused the valid {text:?}:\n{e}"),
            (Err(e), Err(blamed)) => (e, blamed),
        };
        let ConfigError::Invalid { errors, .. } = &e else {
            panic!("{text:?}: expected ConfigError::Invalid, got {e:?}");
        };
        let text_lines = text.lines().count();
        for error in errors {
            assert!(!error.message.is_empty(), "{text:?}: {error:?}");
            assert!(
                error.line.is_some_and(|l| (1..=text_lines).contains(&l))
                    && error.column.is_some_and(|c| c >= 1),
                "{text:?}: not placed inside the text: {error:?}"
            );
        }
        for line in e.to_string().lines() {
            assert!(line.starts_with("t.yaml:"), "{text:?}: {line}");
        }
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, blamed, "{text:?}:\n{e}");
    }
}

// === locate ===

#[test]
fn locator_finds_values_keys_and_parents() {
    // Pins: 1-based positions; scalars at the value, collections at their key, list items
    // (block or flow) at their first character, missing paths at the nearest parent.
    let text = "\
server:
  listen: x
routes:
  - name: a
    m: {k: v, l: [1, 2]}
  - [p, q]
\"a.b\":
  c: 1
";
    let l = Locator::new(text);
    assert_eq!(l.find(""), Some((1, 1)));
    assert_eq!(l.find("server"), Some((1, 1)));
    assert_eq!(l.find("server.listen"), Some((2, 11)));
    assert_eq!(l.find("routes[0]"), Some((4, 5)));
    assert_eq!(l.find("routes[0].name"), Some((4, 11)));
    assert_eq!(l.find("routes[0].m"), Some((5, 5)));
    assert_eq!(l.find("routes[0].m.l[1]"), Some((5, 22)));
    assert_eq!(l.find("routes[1][1]"), Some((6, 9)));
    assert_eq!(l.find("routes[0].missing"), Some((4, 5)));
    assert_eq!(l.find("routes[7].name"), Some((3, 1)));
    assert_eq!(l.find("a.b.c"), Some((8, 6)), "keys may contain dots");
    assert_eq!(Locator::new("").find("x"), None);
    assert_eq!(
        Locator::new("a: [").find("a"),
        None,
        "unparsable text finds nothing"
    );
}

// === effective config ===

#[test]
fn effective_config_has_defaults_and_round_trips() {
    // Pins: `effective` is the file's schema with defaults filled in, and loads back to itself.
    let c = load(FULL);
    let e = &serde_json::to_value(&c).unwrap();
    assert_eq!(e["server"]["header_read_timeout"], "5s");
    assert_eq!(e["upstreams"]["users"]["timeout"], "30s");
    assert_eq!(
        e["upstreams"]["users"]["endpoints"][0],
        "http://users.internal:80"
    );
    assert_eq!(e["routes"][0]["rate_limits"][1]["name"], "limit-1");
    assert_eq!(e["routes"][0]["rate_limits"][1]["burst"], 20);
    assert_eq!(e["routes"][0]["match"]["path_prefix"], "/orders");
    assert_eq!(e["routes"][1]["match"]["host"], "*.example.com");
    assert_eq!(e["store"], serde_json::Value::Null);
    let again = load(&e.to_string());
    assert_eq!(&serde_json::to_value(&again).unwrap(), e);
}

#[test]
fn effective_config_of_an_https_upstream_round_trips() {
    // Pins: https:// endpoints keep their scheme in `effective`, with `protocol` and `tls`.
    let yaml = BASE.replace(
        "endpoints: [http://127.0.0.1:3000]",
        "endpoints: [https://api.internal]\n    protocol: http2\n    tls: { server_name: api.test }",
    );
    let c = load(&yaml);
    let e = &serde_json::to_value(&c).unwrap();
    let orders = &e["upstreams"]["orders"];
    assert_eq!(
        orders["endpoints"][0], "https://api.internal:443",
        "{orders}"
    );
    assert_eq!(orders["protocol"], "http2", "{orders}");
    assert_eq!(orders["tls"]["server_name"], "api.test", "{orders}");
    let again = load(&e.to_string());
    assert!(again.upstreams[0].https);
    assert_eq!(&serde_json::to_value(&again).unwrap(), e);
}

#[test]
fn effective_config_redacts_the_redis_password() {
    // Pins: the Redis URL's password never reaches `GET /config`.
    let mut c = load(BASE);
    c.store = Some(StoreConfig {
        redis: Some(RedisConfig {
            target: RedisTarget::Server("redis://user:hunter2@cache:6379/0".into()),
            ca: None,
            ca_pem: None,
            timeout: Duration::from_millis(20),
            on_error: OnStoreError::Deny,
        }),
        tasks: None,
    });
    let e = serde_json::to_value(&c).unwrap();
    assert_eq!(e["store"]["redis"]["url"], "redis://user:***@cache:6379/0");
    assert_eq!(e["store"]["redis"]["on_error"], "deny");
    assert!(e["store"]["redis"].get("cluster").is_none(), "{e}");
    assert!(!e.to_string().contains("hunter2"));

    // A cluster: every seed redacted, no `url`.
    let store = c.store.as_mut().unwrap();
    store.redis.as_mut().unwrap().target = RedisTarget::Cluster(vec![
        "redis://:hunter2@10.0.0.1:7000".into(),
        "redis://:hunter2@10.0.0.2:7000".into(),
    ]);
    let e = serde_json::to_value(&c).unwrap();
    assert_eq!(
        e["store"]["redis"]["cluster"],
        serde_json::json!(["redis://:***@10.0.0.1:7000", "redis://:***@10.0.0.2:7000"])
    );
    assert!(e["store"]["redis"].get("url").is_none(), "{e}");
    assert!(!e.to_string().contains("hunter2"));
}

#[test]
fn names_that_would_need_escaping_are_refused() {
    // Pins: a quote, backslash or space in a name would corrupt metric labels (not escaped by
    // the exposition) and RateLimit fields; such names are config errors.
    for bad in ["r\\\"x", "a b", "a\\\\b", "é"] {
        let yaml = BASE.replace("  - name: r\n", &format!("  - name: \"{bad}\"\n"));
        let e = one_error(&yaml, "routes[0].name");
        assert!(e.message.contains("letters, digits"), "{e}");
    }
    assert_eq!(
        load(&BASE.replace("name: r\n", "name: api.v1/orders:read~2\n")).routes[0]
            .name
            .as_ref(),
        "api.v1/orders:read~2"
    );
}

#[test]
fn rates_beyond_what_buckets_can_hold_are_refused() {
    // Pins: more than one token per nanosecond, and refill times past the bucket arithmetic's
    // range, are config errors rather than silent clamping at run time.
    let too_fast = with_route("    rate_limits: [{key: global, rate: 4294967295/s}]\n");
    let e = one_error(&too_fast, "routes[1].rate_limits[0].rate");
    assert!(e.message.contains("nanosecond"), "{e}");
    let too_slow = with_route("    rate_limits: [{key: global, rate: 1/h, burst: 4000000000}]\n");
    let e = one_error(&too_slow, "routes[1].rate_limits[0].burst");
    assert!(e.message.contains("to refill"), "{e}");
}

// === bounds and sizes (edge hardening) ===

/// Pins: every number and duration has an upper bound that `check` enforces with the field
/// path, so no value `check` accepts can make `run` fail later (the values of the issue: a
/// semaphore of 2^63 permits and a timer of 300000000000 years aborted `run`).
#[test]
fn numbers_and_durations_are_bounded() {
    let server = |line: &str| BASE.replace("server:\n", &format!("server:\n  {line}\n"));
    for (line, path, says) in [
        (
            "max_connections: 9223372036854775807",
            "server.max_connections",
            "at most 10000000",
        ),
        (
            "header_read_timeout: 300000000000y",
            "server.header_read_timeout",
            "at most 24h",
        ),
        (
            "shutdown_grace: 25h",
            "server.shutdown_grace",
            "at most 24h",
        ),
        ("workers: 5000", "server.workers", "at most 1024"),
        (
            "max_connections_per_ip: -1",
            "server.max_connections_per_ip",
            "at least 0",
        ),
        (
            "max_request_body: 2GiB",
            "server.max_request_body",
            "at most 1GiB",
        ),
        (
            "max_header_bytes: 1KiB",
            "server.max_header_bytes",
            "at least 8KiB",
        ),
        (
            "request_buffer: 12XB",
            "server.request_buffer",
            "expected a size",
        ),
        ("send_timeout: 0s", "server.send_timeout", "greater than 0"),
    ] {
        let e = one_error(&server(line), path);
        assert!(e.message.contains(says), "{line}: {e}");
    }
    let huge = errors(&server("max_connections: 99999999999999999999"));
    assert!(
        huge.iter().any(|e| e.message.contains("far too large")),
        "{huge:?}"
    );
}

/// Pins: sizes take a bare number of bytes or a binary unit, and the edge defaults are the
/// contract's.
#[test]
fn sizes_and_edge_defaults() {
    let c = load(BASE);
    let l = &c.server.client;
    assert_eq!(l.max_header_bytes, ByteSize(64 << 10));
    assert_eq!(l.max_request_body, ByteSize(16 << 20));
    assert_eq!(l.request_buffer, ByteSize(1 << 20));
    assert_eq!(l.response_buffer, ByteSize(1 << 20));
    assert_eq!(l.max_buffered_bytes, ByteSize(256 << 20));
    assert_eq!(l.request_body_timeout, Duration::from_secs(30));
    assert_eq!(l.send_timeout, Duration::from_secs(30));
    assert_eq!(l.max_connections_per_ip, 0);
    for (text, bytes) in [
        ("512", 512),
        ("64KiB", 64 << 10),
        ("16MiB", 16 << 20),
        ("1GiB", 1 << 30),
        ("8K", 8 << 10),
        ("2MB", 2 << 20),
    ] {
        let c = load(&BASE.replace("server:\n", &format!("server:\n  request_buffer: {text}\n")));
        assert_eq!(c.server.client.request_buffer, ByteSize(bytes), "{text}");
    }
    assert_eq!(ByteSize(64 << 10).to_string(), "64KiB");
    assert_eq!(ByteSize(1000).to_string(), "1000");
}

// === admin access control ===

/// A file holding `text` in a fresh temporary directory, removed with it when dropped.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, text: &[u8]) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sluice-config-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn with_admin(admin: &str) -> String {
    format!("{BASE}admin:\n  listen: 127.0.0.1:9901\n{admin}")
}

#[test]
fn admin_token_file_is_read_trimmed_and_never_shown() {
    // Pins: the token file is read at load with surrounding whitespace trimmed; allowed_hosts
    // are lower-cased without a trailing dot; `/config` and `Debug` show the file, never the
    // token.
    let file = TempFile::new("admin.token", b"\n  s3cret-Token_42 \r\n");
    let yaml = with_admin(&format!(
        "  allowed_hosts: [Sluice.Internal., admin-1.example.com]\n  token_file: {}\n",
        file.0.display()
    ));
    let config = load(&yaml);
    let admin = config.admin.as_ref().unwrap();
    assert_eq!(
        admin.allowed_hosts,
        ["sluice.internal", "admin-1.example.com"]
    );
    assert_eq!(admin.token.as_ref().unwrap().as_bytes(), b"s3cret-Token_42");
    let shown = serde_json::to_value(&config).unwrap();
    assert_eq!(shown["admin"]["token_file"], file.0.display().to_string());
    assert_eq!(shown["admin"]["allowed_hosts"][0], "sluice.internal");
    assert!(!shown.to_string().contains("s3cret"), "{shown}");
    assert!(!format!("{config:?}").contains("s3cret"));
    assert!(
        config.to_string().contains("(bearer token from "),
        "{config}"
    );
    // Without the fields: no token, no extra hosts.
    let plain = load(&with_admin(""));
    let admin = plain.admin.as_ref().unwrap();
    assert!(admin.token.is_none() && admin.token_file.is_none() && admin.allowed_hosts.is_empty());
}

#[test]
fn admin_token_file_errors_name_the_field() {
    // Pins: a missing, empty, oversized or unusable token file is a config error at
    // admin.token_file naming the file (never quoting its content); so is a bad allowed host.
    let empty = TempFile::new("empty", b" \n\t\n");
    let spaced = TempFile::new("spaced", b"two words");
    let big = TempFile::new("big", &[b'a'; 5000]);
    let binary = TempFile::new("binary", &[0xff, 0xfe, b'a']);
    for (path, message) in [
        (
            "/nonexistent/admin.token".to_owned(),
            "cannot read /nonexistent/admin.token: ",
        ),
        (empty.0.display().to_string(), "is empty"),
        (
            spaced.0.display().to_string(),
            "printable ASCII without spaces",
        ),
        (big.0.display().to_string(), "larger than 4096 bytes"),
        (binary.0.display().to_string(), "is not UTF-8 text"),
    ] {
        let e = one_error(
            &with_admin(&format!("  token_file: {path}\n")),
            "admin.token_file",
        );
        assert!(e.message.contains(message), "{e}");
        assert!(e.message.contains(&path), "{e}");
        assert!(!e.message.contains("two words"), "{e}");
    }
    let e = one_error(&with_admin("  token_file: \"\"\n"), "admin.token_file");
    assert!(e.message.contains("must not be empty"), "{e}");
    let errors = errors(&with_admin(
        "  allowed_hosts: [\"http://a\", \"a:80\", \"\", \"a/b\", \"[::1]\", ok.example]\n",
    ));
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "admin.allowed_hosts[0]",
            "admin.allowed_hosts[1]",
            "admin.allowed_hosts[2]",
            "admin.allowed_hosts[3]",
            "admin.allowed_hosts[4]"
        ]
    );
}

// === canonical request and bounded key tables (issue 13) ===

/// `escaped_slashes` defaults to `reject`, accepts `keep`, refuses anything else.
#[test]
fn escaped_slashes_values() {
    assert_eq!(load(BASE).server.escaped_slashes, EscapedSlashes::Reject);
    let keep = BASE.replace(
        "listen: 127.0.0.1:8080",
        "listen: 127.0.0.1:8080\n  escaped_slashes: keep",
    );
    assert_eq!(load(&keep).server.escaped_slashes, EscapedSlashes::Keep);
    let bad = BASE.replace(
        "listen: 127.0.0.1:8080",
        "listen: 127.0.0.1:8080\n  escaped_slashes: decode",
    );
    let e = one_error(&bad, "server.escaped_slashes");
    assert!(e.message.contains("reject, keep"), "{}", e.message);
}

/// `max_keys` defaults to 1,000,000 and must be within 1..=100,000,000.
#[test]
fn max_keys_bounds() {
    let limit = |max_keys: &str| {
        with_route(&format!(
            "    rate_limits: [{{ key: client_ip, rate: 1/s{max_keys} }}]\n"
        ))
    };
    let config = load(&limit(""));
    assert_eq!(config.routes[1].rate_limits[0].max_keys.get(), 1_000_000);
    let config = load(&limit(", max_keys: 100000000"));
    assert_eq!(config.routes[1].rate_limits[0].max_keys.get(), 100_000_000);
    let e = one_error(&limit(", max_keys: 0"), "routes[1].rate_limits[0].max_keys");
    assert!(e.message.contains("at least 1"), "{}", e.message);
    let e = one_error(
        &limit(", max_keys: 100000001"),
        "routes[1].rate_limits[0].max_keys",
    );
    assert!(e.message.contains("at most 100000000"), "{}", e.message);
}

/// `cost` defaults to 1, must be within 1..=1,000,000 and at most the burst (a request costing
/// more could never pass); `charge_header` must be a header name; both need `scope: local`.
#[test]
fn cost_and_charge_header() {
    let limit = |fields: &str| {
        with_route(&format!(
            "    rate_limits: [{{ key: client_ip, rate: 10/s{fields} }}]\n"
        ))
    };
    let c = load(&limit(""));
    let l = &c.routes[1].rate_limits[0];
    assert_eq!((l.cost.get(), l.charge_header.as_ref()), (1, None));
    let c = load(&limit(", cost: 5, charge_header: X-Cost"));
    let l = &c.routes[1].rate_limits[0];
    assert_eq!(l.cost.get(), 5);
    assert_eq!(l.charge_header.as_ref().map(|h| h.as_str()), Some("x-cost"));
    assert!(c.to_string().contains("cost 5, charged by x-cost"), "{c}");
    let at = "routes[1].rate_limits[0].cost";
    let e = one_error(&limit(", cost: 0"), at);
    assert!(e.message.contains("at least 1"), "{}", e.message);
    let e = one_error(&limit(", cost: 11"), at);
    assert!(e.message.contains("burst (10)"), "{}", e.message);
    let e = one_error(&limit(", burst: 2000000, cost: 1000001"), at);
    assert!(e.message.contains("at most 1000000"), "{}", e.message);
    load(&limit(", burst: 10, cost: 10"));
    let e = one_error(
        &limit(", charge_header: \"X Cost\""),
        "routes[1].rate_limits[0].charge_header",
    );
    assert!(
        e.message.contains("not a valid header name"),
        "{}",
        e.message
    );
}

/// A global limit takes its cost from Redis and may be charged after the response; a cost is
/// at most the lease (which holds the tokens of whole requests): an error saying so.
#[cfg(feature = "redis")]
#[test]
fn cost_and_charge_header_on_global_limits() {
    let limit = |fields: &str| {
        format!(
            "{}store:\n  redis: {{url: \"redis://h\"}}\n{}    rate_limits: [{{key: global, rate: 10/s, scope: global{fields}}}]\n",
            BASE.split("upstreams:").next().unwrap(),
            &BASE[BASE.find("upstreams:").unwrap()..]
        )
    };
    let c = load(&limit(", cost: 5"));
    assert_eq!(c.routes[0].rate_limits[0].cost.get(), 5);
    load(&limit(", cost: 5, lease: 5"));
    let e = one_error(
        &limit(", cost: 6, lease: 5"),
        "routes[0].rate_limits[0].cost",
    );
    assert!(e.message.contains("lease (5)"), "{}", e.message);
    let c = load(&limit(", charge_header: X-Cost, lease: 5"));
    assert!(c.routes[0].rate_limits[0].charge_header.is_some());
}

/// Match paths are put in the canonical form requests are matched in; one that no request
/// could match is an error that says why.
#[test]
fn match_paths_are_canonical() {
    let prefix = |p: &str| with_route(&format!("    match: {{ path_prefix: \"{p}\" }}\n"));
    let config = load(&prefix("/%6cogin/./x/../"));
    assert_eq!(
        config.routes[1].matcher.path,
        PathMatch::Prefix("/login".into())
    );
    let config = load(&prefix("/caf\u{e9}"));
    assert_eq!(
        config.routes[1].matcher.path,
        PathMatch::Prefix("/caf%C3%A9".into())
    );
    let e = one_error(&prefix("/a%2Fb"), "routes[1].match.path_prefix");
    assert!(e.message.contains("escaped_slashes: keep"), "{}", e.message);
    let e = one_error(&prefix("/../a"), "routes[1].match.path_prefix");
    assert!(e.message.contains("above the root"), "{}", e.message);
    let e = one_error(&prefix("/a;b"), "routes[1].match.path_prefix");
    assert!(e.message.contains("parameters"), "{}", e.message);
}

#[test]
fn upgrade_fields_defaults_and_bounds() {
    // Pins: `max_upgraded` 1000 and `upgraded_idle_timeout` 5m when absent (the contract's
    // decision and example), 0 upgrades allowed, both bounded at their field, /config shows them.
    let c = load(BASE);
    assert_eq!(c.routes[0].max_upgraded, 1000);
    assert_eq!(c.routes[0].upgraded_idle_timeout, Duration::from_secs(300));
    let e = serde_json::to_value(&c).unwrap();
    assert_eq!(e["routes"][0]["max_upgraded"], 1000);
    assert_eq!(e["routes"][0]["upgraded_idle_timeout"], "5m");
    let c = load(&format!(
        "{BASE}    max_upgraded: 0\n    upgraded_idle_timeout: 90s\n"
    ));
    assert_eq!(c.routes[0].max_upgraded, 0);
    assert_eq!(c.routes[0].upgraded_idle_timeout, Duration::from_secs(90));
    for (field, value, says) in [
        ("max_upgraded", "-1", "at least 0"),
        ("max_upgraded", "10000001", "at most 10000000"),
        ("upgraded_idle_timeout", "0s", "greater than 0"),
        ("upgraded_idle_timeout", "25h", "at most 24h"),
        ("upgraded_idle_timeout", "soon", "a duration with a unit"),
    ] {
        let yaml = format!("{BASE}    {field}: {value}\n");
        let e = one_error(&yaml, &format!("routes[0].{field}"));
        assert!(e.message.contains(says), "{field}: {value}: {e}");
    }
}

/// `fair_by` takes `client_ip` or `header:NAME` (not `global`, which is no fairness at all);
/// `max_queued_per_key` needs it; both land in the effective config.
#[test]
fn fair_by_and_max_queued_per_key() {
    let c = load(&with_route(
        "    concurrency: {max_inflight: 2, queue: 8, fair_by: 'header:X-Api-Key', max_queued_per_key: 2}\n",
    ));
    let cap = c
        .routes
        .iter()
        .find(|r| &*r.name == "x")
        .and_then(|r| r.concurrency.clone());
    let cap = cap.expect("route x has a cap");
    assert_eq!(
        cap.fair_by.map(|k| k.to_string()),
        Some("header:x-api-key".to_owned())
    );
    assert_eq!(cap.max_queued_per_key.map(NonZeroUsize::get), Some(2));
    let e = one_error(
        &with_route("    concurrency: {max_inflight: 2, fair_by: global}\n"),
        "routes[1].concurrency.fair_by",
    );
    assert!(e.message.contains("client_ip or header"), "{}", e.message);
    let e = one_error(
        &with_route("    concurrency: {max_inflight: 2, max_queued_per_key: 4}\n"),
        "routes[1].concurrency.max_queued_per_key",
    );
    assert!(e.message.contains("needs fair_by"), "{}", e.message);
}
