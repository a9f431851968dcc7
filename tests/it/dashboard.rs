//! The dashboard on the admin listener: `GET /stats` (its members, and figures that move with
//! traffic), `GET /` (one self-contained page), the admin lock-down on both, and a real browser
//! — Debian's `chromium`, headless — rendering every route with charts that have data, with the
//! token flow too. Without chromium the browser tests say so and pass, except under CI (`CI`
//! set; `.ci/run` sets it and installs chromium), where they fail.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use tokio::sync::Semaphore;

/// Generous for a loaded 2-core machine: figures are re-read until they hold, this long at most.
const PATIENCE: Duration = Duration::from_secs(20);
/// How long one headless chromium run may take (it starts in a few seconds when idle).
const BROWSER_DEADLINE: Duration = Duration::from_secs(120);
/// Virtual time the page runs for in the browser: about five polls of `/stats`.
const VIRTUAL_TIME_MS: u32 = 5000;

/// `method url` with these fields, through the test client (which keeps a `Host` it is given).
async fn request(method: Method, url: &str, fields: &[(&str, &str)]) -> Got {
    let mut req = Request::builder().method(method).uri(url);
    for (name, value) in fields {
        req = req.header(*name, *value);
    }
    send(&client(), req.body(Full::new(Bytes::new())).unwrap()).await
}

async fn stats(proxy: &Proxy) -> Value {
    let got = get(&proxy.admin_url("/stats")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    got.json()
}

fn named<'a>(stats: &'a Value, list: &str, name: &str) -> &'a Value {
    stats[list]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["name"] == name))
        .unwrap_or_else(|| panic!("no {list} entry {name} in {stats}"))
}

/// Re-reads `/stats` until `cond` holds for the entry `name` of `list` (bounded by
/// [`PATIENCE`]); returns that entry.
async fn until_stats(
    proxy: &Proxy,
    what: &str,
    list: &str,
    name: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let last = std::sync::Mutex::new(Value::Null);
    let found = crate::support::wait::within(PATIENCE, || async {
        let s = stats(proxy).await;
        let entry = named(&s, list, name).clone();
        let holds = cond(&entry);
        *last.lock().unwrap() = entry.clone();
        holds.then_some(entry)
    })
    .await;
    found.unwrap_or_else(|waited| {
        panic!(
            "{what}: not within {waited:?}; last {list} entry {name}: {}",
            last.lock().unwrap()
        )
    })
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Every outcome label value: the keys of `requests_per_second` and `requests_total`.
const OUTCOMES: [&str; 15] = [
    "forwarded",
    "rate_limited",
    "queue_full",
    "queue_timeout",
    "shed",
    "upstream_error",
    "upstream_timeout",
    "no_route",
    "store_unavailable",
    "client_closed",
    "bad_request",
    "body_too_large",
    "body_timeout",
    "deferred",
    "upstream_pushback",
];

/// Members of a route and an upstream entry, and what each is: `n` a number, `n?` a number or
/// null, `s` a string, `b` a boolean, `o` an object by outcome, `q` p50/p99 quantiles, `a` an
/// array, `d?` deferred task counts or null.
const ROUTE_MEMBERS: [(&str, &str); 19] = [
    ("name", "s"),
    ("upstream", "s"),
    ("priority", "s"),
    ("mode", "s"),
    ("admitted_per_second", "n"),
    ("rejected_per_second", "n"),
    ("requests_per_second", "o"),
    ("shadow_per_second", "o"),
    ("requests_total", "o"),
    ("inflight", "n"),
    ("limit", "n?"),
    ("adaptive", "b"),
    ("queue_depth", "n"),
    ("queue_capacity", "n?"),
    ("queue_wait_seconds", "q"),
    ("upstream_latency_seconds", "q"),
    ("rate_limit_keys", "n"),
    ("rate_limits", "a"),
    ("deferred", "d?"),
];
const UPSTREAM_MEMBERS: [(&str, &str); 16] = [
    ("name", "s"),
    ("routes", "a"),
    ("admitted_per_second", "n"),
    ("rejected_per_second", "n"),
    ("requests_per_second", "o"),
    ("inflight", "n"),
    ("limit", "n?"),
    ("adaptive", "b"),
    ("queue_depth", "n"),
    ("queue_capacity", "n?"),
    ("utilization", "n?"),
    ("queue_wait_seconds", "q"),
    ("upstream_latency_seconds", "q"),
    ("protocol", "s"),
    ("tls", "b"),
    ("endpoints", "a"),
];

/// Checks `entry` has exactly `members`, each of its kind.
fn check_members(what: &str, entry: &Value, members: &[(&str, &str)]) {
    let object = entry
        .as_object()
        .unwrap_or_else(|| panic!("{what}: {entry}"));
    let mut expected: Vec<&str> = members.iter().map(|(m, _)| *m).collect();
    expected.sort_unstable();
    let mut got: Vec<&str> = object.keys().map(String::as_str).collect();
    got.sort_unstable();
    assert_eq!(got, expected, "{what}: members");
    for (member, kind) in members {
        let v = &entry[*member];
        let ok = match *kind {
            "n" => v.is_number(),
            "n?" => v.is_number() || v.is_null(),
            "s" => v.is_string(),
            "b" => v.is_boolean(),
            "a" => v.is_array(),
            "o" => {
                let keys: Vec<&str> = v
                    .as_object()
                    .map(|o| o.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                keys.len() == OUTCOMES.len()
                    && OUTCOMES.iter().all(|o| v[*o].is_number())
                    && keys.iter().all(|k| OUTCOMES.contains(k))
            }
            "d?" => {
                v.is_null()
                    || [
                        "queued",
                        "delivering",
                        "delivered",
                        "dead",
                        "oldest_age_seconds",
                    ]
                    .iter()
                    .all(|c| v[*c].is_number())
            }
            "q" => ["p50", "p99"]
                .iter()
                .all(|p| v[*p].is_number() || v[*p].is_null()),
            _ => unreachable!(),
        };
        assert!(ok, "{what}.{member} is not of kind {kind}: {v}");
    }
}

/// An upstream whose answers wait for a permit of the returned semaphore (none at first), so a
/// test decides when requests finish.
async fn held_upstream() -> (Upstream, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let up = upstream(move |_| {
        let gate = g.clone();
        async move {
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
            Response::new(TestBody::text("held ok"))
        }
    })
    .await;
    (up, gate)
}

/// Pins the schema of `/stats` (every member of the top level, of each route and upstream, of
/// the right kind) and that its figures move with traffic: rates after requests, rejections by
/// reason after 429s and 503s, in flight and queue depth while requests are held, and the
/// quantiles once they finish.
#[tokio::test]
async fn stats_members_and_figures_move_with_traffic() {
    let ok = ok_upstream().await;
    let (held, gate) = held_upstream().await;
    let proxy = start_proxy(&format!(
        "server: {{ listen: 127.0.0.1:0 }}\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         upstreams:\n  ok: {{ endpoints: [{}] }}\n  slow: {{ endpoints: [{}], timeout: 60s }}\n\
         routes:\n\
         - {{ name: held, match: {{ path_prefix: /held }}, upstream: slow, concurrency: {{ max_inflight: 1, queue: 1, queue_timeout: 60s }} }}\n\
         - {{ name: limited, match: {{ path_prefix: /limited }}, upstream: ok, rate_limits: [{{ name: per-ip, key: client_ip, rate: 1/m, burst: 2 }}] }}\n\
         - {{ name: plain, upstream: ok }}\n",
        ok.endpoint(),
        held.endpoint()
    ))
    .await;

    let s = stats(&proxy).await;
    for (member, number) in [
        ("time", true),
        ("window_seconds", true),
        ("generation", true),
        ("started_at", true),
        ("reloaded_at", true),
        ("buffered_bytes", true),
        ("max_buffered_bytes", true),
        ("healthy", false),
        ("ready", false),
    ] {
        assert_eq!(s[member].is_number(), number, "{member}: {s}");
    }
    assert_eq!(s["healthy"], true);
    assert_eq!(s["generation"], 1);
    assert!(s["reloads_total"]["success"].is_number() && s["reloads_total"]["failure"].is_number());
    assert!(
        s["unrouted_per_second"]["no_route"].is_number()
            && s["unrouted_per_second"]["bad_request"].is_number()
    );
    let names: Vec<&str> = s["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["held", "limited", "plain"], "config order");
    for route in s["routes"].as_array().unwrap() {
        check_members(&format!("route {}", route["name"]), route, &ROUTE_MEMBERS);
    }
    for up in s["upstreams"].as_array().unwrap() {
        check_members(&format!("upstream {}", up["name"]), up, &UPSTREAM_MEMBERS);
    }
    let limited = named(&s, "routes", "limited");
    assert_eq!(limited["rate_limits"][0]["name"], "per-ip");
    assert!(limited["rate_limits"][0]["keys"].is_number());
    assert!(limited["rate_limits"][0]["evictions_total"].is_number());
    assert_eq!(
        named(&s, "upstreams", "slow")["routes"],
        serde_json::json!(["held"])
    );

    // Admitted: a rate above 0 and the exact total.
    for _ in 0..6 {
        assert_eq!(get(&proxy.url("/plain")).await.status, StatusCode::OK);
    }
    let plain = until_stats(&proxy, "6 forwarded on plain", "routes", "plain", |r| {
        r["requests_total"]["forwarded"] == 6
    })
    .await;
    assert!(num(&plain["admitted_per_second"]) > 0.0, "{plain}");
    assert!(
        num(&plain["requests_per_second"]["forwarded"]) > 0.0,
        "{plain}"
    );
    assert_eq!(num(&plain["rejected_per_second"]), 0.0, "{plain}");
    assert!(
        plain["upstream_latency_seconds"]["p99"].is_number(),
        "{plain}"
    );
    assert!(num(&named(&stats(&proxy).await, "upstreams", "ok")["admitted_per_second"]) > 0.0);

    // Rejected by reason: 429s.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(get(&proxy.url("/limited")).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    let limited = until_stats(
        &proxy,
        "3 rate-limited on limited",
        "routes",
        "limited",
        |r| r["requests_total"]["rate_limited"] == 3,
    )
    .await;
    assert!(
        num(&limited["requests_per_second"]["rate_limited"]) > 0.0,
        "{limited}"
    );
    assert!(num(&limited["rejected_per_second"]) > 0.0, "{limited}");
    assert_eq!(limited["rate_limit_keys"], 1, "{limited}");

    // In flight and queued while the upstream holds them; then queue-full 503s.
    let client = client();
    let hold = |n: usize| {
        let (client, url) = (client.clone(), proxy.url(&format!("/held/{n}")));
        tokio::spawn(async move {
            send(
                &client,
                Request::get(url).body(Full::new(Bytes::new())).unwrap(),
            )
            .await
            .status
        })
    };
    let first = hold(1);
    until_stats(&proxy, "one held in flight", "routes", "held", |r| {
        r["inflight"] == 1
    })
    .await;
    let second = hold(2);
    let held_route = until_stats(&proxy, "one queued", "routes", "held", |r| {
        r["queue_depth"] == 1
    })
    .await;
    assert_eq!(held_route["inflight"], 1, "{held_route}");
    assert_eq!(held_route["limit"], 1);
    assert_eq!(held_route["queue_capacity"], 1);
    assert_eq!(held_route["adaptive"], false);
    for _ in 0..3 {
        let got = get(&proxy.url("/held/3")).await;
        assert_eq!(
            got.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            got.text()
        );
    }
    let held_route = until_stats(&proxy, "queue-full rate", "routes", "held", |r| {
        r["requests_total"]["queue_full"] == 3
    })
    .await;
    assert!(
        num(&held_route["requests_per_second"]["queue_full"]) > 0.0,
        "{held_route}"
    );
    assert!(
        num(&held_route["rejected_per_second"]) > 0.0,
        "{held_route}"
    );
    let slow = named(&stats(&proxy).await, "upstreams", "slow").clone();
    assert_eq!(slow["inflight"], 1, "{slow}");
    assert!(
        num(&slow["requests_per_second"]["queue_full"]) > 0.0,
        "{slow}"
    );
    assert!(
        slow["limit"].is_null() && slow["utilization"].is_null(),
        "no upstream cap: {slow}"
    );

    // Released: both finish, the second after waiting in the queue.
    gate.add_permits(2);
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    assert_eq!(second.await.unwrap(), StatusCode::OK);
    let held_route = until_stats(&proxy, "queue wait observed", "routes", "held", |r| {
        r["inflight"] == 0 && r["queue_depth"] == 0 && r["queue_wait_seconds"]["p99"].is_number()
    })
    .await;
    assert!(
        held_route["upstream_latency_seconds"]["p99"].is_number(),
        "{held_route}"
    );
    proxy.stop().await;
}

/// The config generation and the time of the last reload: 1 and the start at first, then 2 and
/// a later time after a reload.
#[tokio::test]
async fn generation_and_reload_time_follow_reloads() {
    let up = ok_upstream().await;
    let yaml = format!(
        "server: {{ listen: 127.0.0.1:0 }}\nadmin: {{ listen: 127.0.0.1:0 }}\n\
         upstreams: {{ api: {{ endpoints: [{}] }} }}\nroutes: [{{ name: a, upstream: api }}]\n",
        up.endpoint()
    );
    let file = ConfigFile::new(&yaml);
    let proxy = start_proxy_file(&file).await;
    let before = stats(&proxy).await;
    assert_eq!(before["generation"], 1);
    assert_eq!(before["reloaded_at"], before["started_at"]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    file.write(&yaml.replace("name: a", "name: b"));
    let got = request(Method::POST, &proxy.admin_url("/reload"), &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    let after = stats(&proxy).await;
    assert_eq!(after["generation"], 2);
    assert!(
        num(&after["reloaded_at"]) > num(&before["reloaded_at"]),
        "{after}"
    );
    assert_eq!(after["started_at"], before["started_at"]);
    assert_eq!(after["reloads_total"]["success"], 1);
    assert_eq!(after["routes"][0]["name"], "b");
    proxy.stop().await;
}

/// Absolute URLs a page may contain without loading them: the vendored chart library's banner
/// comment names its home.
const ALLOWED_URLS: [&str; 1] = ["https://github.com/leeoniya/uPlot"];

/// What in `html` would make a browser fetch something from elsewhere: `src`, `href` and the
/// like with an absolute or scheme-relative URL, CSS `url(…)` and `@import` not pointing at
/// `data:`, and any absolute URL outside [`ALLOWED_URLS`].
fn external_references(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut found = Vec::new();
    let value_at = |at: usize| -> String {
        let rest = lower[at..].trim_start_matches(['"', '\'', ' ']);
        rest.chars()
            .take_while(|c| !matches!(c, '"' | '\'' | ')' | ' ' | '>' | '\n'))
            .collect()
    };
    for attr in [
        "src=",
        "href=",
        "srcset=",
        "action=",
        "poster=",
        "data=",
        "xlink:href=",
    ] {
        for (at, _) in lower.match_indices(attr) {
            let v = value_at(at + attr.len());
            if v.starts_with("//") || v.contains("://") || v.starts_with("http") {
                found.push(format!("{attr}{v}"));
            }
        }
    }
    for (at, _) in lower.match_indices("url(") {
        let v = value_at(at + 4);
        if !v.is_empty() && !v.starts_with("data:") && !v.starts_with('#') {
            found.push(format!("url({v}"));
        }
    }
    if lower.contains("@import") {
        found.push("@import".to_owned());
    }
    for scheme in ["http://", "https://"] {
        for (at, _) in lower.match_indices(scheme) {
            let url: String = html[at..]
                .chars()
                .take_while(|c| !c.is_whitespace() && !matches!(c, '"' | '\'' | ')' | '<'))
                .collect();
            if !ALLOWED_URLS.contains(&url.as_str()) {
                found.push(url);
            }
        }
    }
    found
}

/// The check itself catches what it must: a script from a CDN, a stylesheet link, a
/// scheme-relative image, a CSS font URL, an @import.
#[test]
fn external_reference_check_catches_them() {
    for bad in [
        "<script src=\"https://cdn.example/x.js\"></script>",
        "<link rel=stylesheet href='http://cdn.example/x.css'>",
        "<img src=//cdn.example/x.png>",
        "<style>@font-face { src: url(https://fonts.example/f.woff2) }</style>",
        "<style>body { background: url('/x.png') }</style>",
        "<style>@import 'x.css';</style>",
    ] {
        assert!(!external_references(bad).is_empty(), "missed: {bad}");
    }
    let fine = "<a href=\"#top\">x</a><style>.x{background:url(data:image/png;base64,AA)}</style>";
    assert_eq!(external_references(fine), Vec::<String>::new());
}

/// `GET /` is one self-contained HTML page: `text/html`, `no-store`, a policy that lets it load
/// or connect to nothing but its own listener, no external reference in its markup, style or
/// script; it reads `/stats`. `HEAD /` answers the same head without a body.
#[tokio::test]
async fn page_is_self_contained() {
    let up = ok_upstream().await;
    let proxy = start_proxy(&format!(
        "server: {{ listen: 127.0.0.1:0 }}\nadmin: {{ listen: 127.0.0.1:0 }}\n\
         upstreams: {{ api: {{ endpoints: [{}] }} }}\nroutes: [{{ name: a, upstream: api }}]\n",
        up.endpoint()
    ))
    .await;
    let page = get(&proxy.admin_url("/")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    let policy = page.header("content-security-policy").unwrap_or_default();
    for directive in [
        "default-src 'none'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(
            policy.contains(directive),
            "{directive} missing from {policy}"
        );
    }
    assert!(
        !policy.contains("http"),
        "the policy allows no other origin: {policy}"
    );
    let html = page.text();
    assert!(
        html.starts_with("<!doctype html>"),
        "{}",
        &html[..80.min(html.len())]
    );
    assert_eq!(external_references(&html), Vec::<String>::new());
    assert!(html.contains("fetch(\"/stats\""), "the page reads /stats");
    assert!(html.contains("var uPlot="), "the chart library is inlined");
    assert!(html.len() < 256 * 1024, "{} bytes", html.len());

    let head = request(Method::HEAD, &proxy.admin_url("/"), &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(html.len().to_string().as_str())
    );
    proxy.stop().await;
}

/// The admin lock-down applies to `/` and `/stats`: a foreign `Host` or `Origin` gets 403; with
/// `admin.token_file`, no token gets 401 (for `/`, with the sign-in page: HTML without a figure,
/// self-contained too), the token 200.
#[tokio::test]
async fn lockdown_applies_to_page_and_stats() {
    let up = ok_upstream().await;
    let token = ConfigFile::new("dashboard-token-0123456789\n");
    let proxy = start_proxy(&format!(
        "server: {{ listen: 127.0.0.1:0 }}\n\
         admin: {{ listen: 127.0.0.1:0, token_file: {} }}\n\
         upstreams: {{ api: {{ endpoints: [{}] }} }}\nroutes: [{{ name: secret-route, upstream: api }}]\n",
        token.path.display(),
        up.endpoint()
    ))
    .await;
    let bearer = ("authorization", "Bearer dashboard-token-0123456789");
    let port = proxy.admin.unwrap().port();
    for path in ["/", "/stats"] {
        let url = proxy.admin_url(path);
        for host in [
            "attacker.example".to_owned(),
            format!("attacker.example:{port}"),
        ] {
            let got = request(Method::GET, &url, &[("host", &host), bearer]).await;
            assert_eq!(got.status, StatusCode::FORBIDDEN, "{path} Host: {host}");
            assert_eq!(got.header("cache-control"), Some("no-store"));
        }
        let origin = [("origin", "http://attacker.example"), bearer];
        let got = request(Method::GET, &url, &origin).await;
        assert_eq!(
            got.status,
            StatusCode::FORBIDDEN,
            "{path} with a foreign Origin"
        );
        for auth in [None, Some("Bearer wrong"), Some("Basic ZGFzaGJvYXJk")] {
            let fields: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
            let got = request(Method::GET, &url, &fields).await;
            assert_eq!(got.status, StatusCode::UNAUTHORIZED, "{path} {auth:?}");
            assert_eq!(got.header("www-authenticate"), Some("Bearer"));
            assert_eq!(got.header("cache-control"), Some("no-store"));
            assert!(
                !got.text().contains("secret-route"),
                "{path}: {}",
                got.text()
            );
        }
        let got = request(Method::GET, &url, &[bearer]).await;
        assert_eq!(got.status, StatusCode::OK, "{path} with the token");
    }
    let stats = request(Method::GET, &proxy.admin_url("/stats"), &[bearer]).await;
    assert_eq!(stats.json()["routes"][0]["name"], "secret-route");
    let plain = get(&proxy.admin_url("/stats")).await;
    assert_eq!(plain.header("content-type"), Some("text/plain"));

    // The sign-in page: what a browser gets at `/` without the token.
    let sign_in = get(&proxy.admin_url("/")).await;
    assert_eq!(
        sign_in.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(sign_in.header("content-security-policy").is_some());
    let html = sign_in.text();
    assert!(html.contains("id=\"sign-in\""), "{html}");
    assert_eq!(external_references(&html), Vec::<String>::new());
    assert!(
        !html.contains("var uPlot="),
        "the dashboard only with the token"
    );
    proxy.stop().await;
}

// === The browser ===

/// Where chromium is, or `None` (after saying so; a failure under CI) when it is not installed.
fn chromium() -> Option<&'static str> {
    let found = std::process::Command::new("chromium")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("chromium");
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "chromium is missing under CI: .ci/run should have installed it \
         (apt-get install -y --no-install-recommends chromium)"
    );
    eprintln!("SKIPPED: chromium is not installed (Debian: apt-get install chromium); the browser was not tested");
    None
}

/// A fresh chromium profile directory, removed when dropped.
struct Profile(PathBuf);

impl Profile {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "chromium-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Profile(dir)
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs headless chromium on `url` with `action` (`--dump-dom`, `--screenshot=…`) after the
/// page ran for [`VIRTUAL_TIME_MS`] of virtual time; returns stdout. Bounded by
/// [`BROWSER_DEADLINE`]; the browser is killed if the test ends first.
async fn headless(program: &str, url: &str, action: &str) -> String {
    let profile = Profile::new();
    let child = tokio::process::Command::new(program)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1400,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .arg(format!("--virtual-time-budget={VIRTUAL_TIME_MS}"))
        .arg(action)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(BROWSER_DEADLINE, child)
        .await
        .unwrap_or_else(|_| panic!("chromium did not finish within {BROWSER_DEADLINE:?}"))
        .expect("chromium runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "chromium {action} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The value of attribute `name` in the tag that starts at the beginning of `tag`.
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let end = tag.find('>').unwrap_or(tag.len());
    let tag = &tag[..end];
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    tag[at..].split('"').next()
}

/// A rendered row of the dashboard, read off the DOM chromium dumped.
#[derive(Debug)]
struct Row {
    kind: String,
    name: String,
    status: String,
    /// (chart, points, max) of each chart.
    charts: Vec<(String, usize, f64)>,
}

fn rows(dom: &str) -> Vec<Row> {
    dom.split("<section ")
        .skip(1)
        .filter_map(|section| {
            let tag = format!(" {section}");
            let kind = attribute(&tag, "data-kind")?.to_owned();
            let name = attribute(&tag, "data-name")?.to_owned();
            let status = attribute(&tag, "data-status").unwrap_or("").to_owned();
            let body = section.split("</section>").next().unwrap_or("");
            let charts = body
                .match_indices("<div ")
                .filter_map(|(at, _)| {
                    let tag = &body[at + 4..];
                    let chart = attribute(tag, "data-chart")?.to_owned();
                    let points = attribute(tag, "data-points")?.parse().ok()?;
                    let max = attribute(tag, "data-max")?.parse().ok()?;
                    Some((chart, points, max))
                })
                .collect();
            Some(Row {
                kind,
                name,
                status,
                charts,
            })
        })
        .collect()
}

/// Traffic on three routes until dropped: `checkout` answered, `api` beyond its rate limit
/// (429), `batch` beyond its upstream's cap and queue (503). Each loop pauses between requests,
/// so the debug build on a loaded 2-core machine keeps up.
struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(proxy: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (path, loops) in [("/checkout", 1), ("/api/x", 2), ("/batch/x", 8)] {
            for _ in 0..loops {
                let (stop, url) = (stop.clone(), format!("http://{proxy}{path}"));
                tasks.push(tokio::spawn(async move {
                    let client = client();
                    while !stop.load(Ordering::Relaxed) {
                        let req = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
                        let _ = tokio::time::timeout(Duration::from_secs(10), client.request(req))
                            .await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }));
            }
        }
        Traffic { stop, tasks }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A sluice with three routes on one upstream of small capacity (in the spirit of `sluice
/// demo`), an admin listener, and `admin` added to its `admin:` section.
async fn demo_like(admin: &str) -> (Proxy, Upstream) {
    let up = slow_upstream(Duration::from_millis(50)).await;
    let proxy = start_proxy(&format!(
        "server: {{ listen: 127.0.0.1:0 }}\n\
         admin: {{ listen: 127.0.0.1:0{admin} }}\n\
         upstreams:\n  demo-api:\n    endpoints: [{}]\n    concurrency: {{ max_inflight: 2, queue: 2, queue_timeout: 1s }}\n\
         routes:\n\
         - {{ name: checkout, match: {{ path_prefix: /checkout }}, upstream: demo-api, priority: critical }}\n\
         - {{ name: batch, match: {{ path_prefix: /batch }}, upstream: demo-api, priority: low }}\n\
         - {{ name: api, match: {{ path_prefix: /api }}, upstream: demo-api, rate_limits: [{{ name: per-client, key: client_ip, rate: 5/s, burst: 5 }}] }}\n",
        up.endpoint()
    ))
    .await;
    (proxy, up)
}

/// Waits until `/stats` shows the traffic: every route has admitted or rejected something.
async fn until_traffic_shows(proxy: &Proxy) {
    for name in ["checkout", "batch", "api"] {
        until_stats(proxy, "traffic on every route", "routes", name, |r| {
            num(&r["admitted_per_second"]) + num(&r["rejected_per_second"]) > 0.0
        })
        .await;
    }
}

/// A real browser renders the page while traffic flows: a row per route and per upstream, each
/// with its three charts holding several points, the traffic charts with data above 0, and the
/// shedding route marked so; a screenshot is saved (to `$SLUICE_DASHBOARD_SCREENSHOT` when set,
/// e.g. `docs/dashboard.png`, else under the target directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_renders_every_route_with_data() {
    let Some(chromium) = chromium() else { return };
    let (proxy, _up) = demo_like("").await;
    let traffic = Traffic::start(proxy.addr);
    until_traffic_shows(&proxy).await;
    let url = proxy.admin_url("/");

    let dom = headless(chromium, &url, "--dump-dom").await;
    let rows = rows(&dom);
    let names: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.kind.as_str(), r.name.as_str()))
        .collect();
    for expected in [
        ("route", "checkout"),
        ("route", "batch"),
        ("route", "api"),
        ("upstream", "demo-api"),
    ] {
        assert!(
            names.contains(&expected),
            "{expected:?} not rendered: {names:?}\n{dom}"
        );
    }
    for row in &rows {
        let kinds: Vec<&str> = row.charts.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(kinds, ["traffic", "concurrency", "latency"], "{row:?}");
        for (chart, points, _) in &row.charts {
            assert!(
                *points >= 2,
                "{} {chart}: {points} points: {row:?}",
                row.name
            );
        }
        let (_, _, traffic_max) = &row.charts[0];
        assert!(
            *traffic_max > 0.0,
            "{}: an empty traffic chart: {row:?}",
            row.name
        );
    }
    let batch = rows.iter().find(|r| r.name == "batch").unwrap();
    assert_eq!(batch.status, "shedding", "{batch:?}");
    assert!(dom.contains("SHEDDING"), "no shedding badge");

    let screenshot = std::env::var_os("SLUICE_DASHBOARD_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png"));
    let _ = std::fs::remove_file(&screenshot);
    headless(
        chromium,
        &url,
        &format!("--screenshot={}", screenshot.display()),
    )
    .await;
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", screenshot.display());
    drop(traffic);
    proxy.stop().await;
}

/// With `admin.token_file`, the browser gets the sign-in page at `/`; opened as
/// `/#token=<token>` (a fragment: never sent to the server), it fetches the dashboard with the
/// header and the page's `/stats` requests carry it: every route is rendered with data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_signs_in_with_the_token() {
    let Some(chromium) = chromium() else { return };
    let token = ConfigFile::new("browser-token-0123456789\n");
    let (proxy, _up) = demo_like(&format!(", token_file: {}", token.path.display())).await;
    let traffic = Traffic::start(proxy.addr);
    let url = proxy.admin_url("/");

    let dom = headless(chromium, &url, "--dump-dom").await;
    assert!(dom.contains("id=\"sign-in\""), "no sign-in form:\n{dom}");
    assert!(rows(&dom).is_empty(), "figures without the token:\n{dom}");

    let dom = headless(
        chromium,
        &format!("{url}#token=browser-token-0123456789"),
        "--dump-dom",
    )
    .await;
    let rows = rows(&dom);
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    for expected in ["checkout", "batch", "api", "demo-api"] {
        assert!(
            names.contains(&expected),
            "{expected} not rendered: {names:?}\n{dom}"
        );
    }
    assert!(
        rows.iter().all(|r| r.charts.iter().all(|c| c.1 >= 2)),
        "charts without points: {rows:?}"
    );
    drop(traffic);
    proxy.stop().await;
}
