//! SIGHUP reloads the config, sent to a real `sluice` process. It signals that child, never the
//! test process: a SIGHUP to the test process would reach every in-process proxy of the test
//! binary (all of `tests/it`, running in parallel) and upset the tests that count reloads. So it
//! needs no binary of its own.

use crate::support::bin::{self, Sluice, PATIENCE};
use crate::support::wait::within;
use crate::support::*;
use http::StatusCode;

fn config(upstream: &str, with_new_route: bool) -> String {
    let new_route = if with_new_route {
        "  - name: new\n    match: { path_prefix: /new }\n    upstream: api\n"
    } else {
        ""
    };
    format!(
        "server: {{ listen: 127.0.0.1:0 }}\nadmin: {{ listen: 127.0.0.1:0 }}\nupstreams: {{ api: {{ endpoints: [{upstream}] }} }}\nroutes:\n  - name: kept\n    match: {{ path_prefix: /kept }}\n    upstream: api\n{new_route}"
    )
}

/// GETs `url` until it answers `want` (bounded by [`PATIENCE`]; panics with the process's
/// stderr, as `context` says, if it does not, or if the process exits meanwhile).
async fn poll_until(url: &str, want: StatusCode, sluice: &mut Sluice, context: &str) {
    let answered = within(PATIENCE, || {
        sluice.assert_running();
        async move { get(url).await.status == want }
    })
    .await;
    if let Err(waited) = answered {
        panic!(
            "{context}: {url} did not answer {want} within {waited:?}:\n{}",
            sluice.stderr(false)
        );
    }
}

/// Pins: SIGHUP re-reads the config file — a route added to it answers, without a restart — and
/// counts the reload; the handler is in place once /readyz says 200 (SIGHUP's default action
/// would terminate the process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file() {
    let up = ok_upstream().await;
    let file = ConfigFile::new(&config(&up.endpoint(), false));
    let mut sluice = Sluice::start(bin::command().args(["run", "-c"]).arg(&file.path))
        .unwrap_or_else(|stderr| panic!("sluice did not start:\n{stderr}"));
    let admin = sluice.admin();
    let http = sluice.http;
    let url = |path: &str| format!("http://{http}{path}");
    let readyz = format!("http://{admin}/readyz");
    poll_until(&readyz, StatusCode::OK, &mut sluice, "never ready").await;
    assert_eq!(get(&url("/kept")).await.status, StatusCode::OK);
    assert_eq!(get(&url("/new")).await.status, StatusCode::NOT_FOUND);

    file.write(&config(&up.endpoint(), true));
    sluice.signal("HUP");
    let new = url("/new");
    poll_until(
        &new,
        StatusCode::OK,
        &mut sluice,
        "the route added to the file never answered",
    )
    .await;
    assert_eq!(get(&url("/kept")).await.status, StatusCode::OK);
    let metrics = get(&format!("http://{admin}/metrics")).await.text();
    assert_eq!(
        expect_metric(&metrics, "sluice_config_reloads_total{result=\"success\"}"),
        1.0
    );

    sluice.signal("TERM");
    assert_eq!(sluice.wait_exit(), Some(0), "{}", sluice.stderr(true));
}
