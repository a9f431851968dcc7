//! The `sluice` binary: exit statuses, `check`, config errors, signals, `demo`, and flat memory
//! while a large body streams through.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::bin::{self, finish, rss_kib, Sluice};
use crate::support::{alone_blocking, free_port, ConfigFile};

/// `sluice run -c <file>`, listening (its address is in `.http`).
fn run(config: &ConfigFile) -> Sluice {
    Sluice::start(bin::command().args(["run", "-c"]).arg(&config.path))
        .unwrap_or_else(|stderr| panic!("sluice run did not start:\n{stderr}"))
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    get_with_host(addr, path, "demo")
}

/// GET on the admin listener, whose gate wants an IP literal or `localhost` as `Host`.
fn admin_get(addr: SocketAddr, path: &str) -> String {
    get_with_host(addr, path, &addr.to_string())
}

fn get_with_host(addr: SocketAddr, path: &str, host: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// `--version` and `--help` exit 0.
#[test]
fn version_and_help() {
    let out = finish(bin::command().arg("--version"));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains(env!("CARGO_PKG_VERSION")));
    let help = finish(bin::command().arg("--help"));
    assert_eq!(help.code, Some(0));
    // What a script and an operator need besides the options (issue 29).
    for needed in [
        "Exit status:",
        "SIGHUP",
        "SIGTERM",
        "RUST_LOG",
        "SLUICE_CONFIG",
        "docs/reference.md",
    ] {
        assert!(
            help.stdout.contains(needed),
            "--help lacks {needed}: {}",
            help.stdout
        );
    }
    let demo = finish(bin::command().args(["demo", "--help"]));
    assert!(
        demo.stdout.contains("127.0.0.1:9000") && demo.stdout.contains("127.0.0.1:9901"),
        "demo --help says where its sample API and dashboard listen: {}",
        demo.stdout
    );
}

/// `check` warns (exit 0, `warning:` lines on stderr) about valid configs that most likely do
/// not do what was meant; the shipped configs have none.
#[test]
fn check_warns_about_footguns() {
    let config = ConfigFile::new(
        "server:\n  listen: 127.0.0.1:8080\nstore:\n  redis:\n    url: redis://127.0.0.1:6379\n    on_error: allow\nupstreams:\n  api:\n    endpoints: [http://127.0.0.1:9000]\n    concurrency: {max_inflight: 4}\nroutes:\n  - name: login\n    match: {path_prefix: /login}\n    upstream: api\n    rate_limits:\n      - {name: per-ip, key: client_ip, rate: 5/m, scope: global}\n  - name: keyed\n    upstream: api\n    priority: critical\n    rate_limits:\n      - {name: per-key, key: \"header:X-API-Key\", rate: 10/s}\n",
    );
    let out = finish(bin::command().arg("check").arg("-c").arg(&config.path));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("warning: "))
        .collect();
    assert_eq!(warnings.len(), 3, "{}", out.stderr);
    for (line, says) in warnings.iter().zip([
        "routes[0].rate_limits[0]: a global limit on a login route",
        "routes[1].rate_limits[0]: a limit keyed by the `x-api-key` header with no `client_ip` limit",
        "upstreams.api.concurrency: route `keyed` is critical, but this cap has no queue",
    ]) {
        assert!(line.contains(says), "{line} does not say {says}");
    }
    let root = env!("CARGO_MANIFEST_DIR");
    for shipped in ["config/sluice.yaml", "config/demo.yaml"] {
        let out = finish(
            bin::command()
                .args(["check", "-c"])
                .arg(format!("{root}/{shipped}")),
        );
        assert!(
            !out.stderr.contains("warning:"),
            "{shipped}: {}",
            out.stderr
        );
    }
}

/// The shipped configs are valid, and `check` prints a summary of routes and upstreams.
#[test]
fn check_accepts_shipped_configs() {
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["config/sluice.yaml", "config/demo.yaml"] {
        let out = finish(
            bin::command()
                .args(["check", "-c"])
                .arg(format!("{root}/{file}")),
        );
        assert_eq!(out.code, Some(0), "{file}: {}", out.stderr);
        assert!(out.stdout.contains("routes"), "{}", out.stdout);
        assert!(out.stdout.contains("upstreams"), "{}", out.stdout);
    }
}

/// A reader that closes the pipe before `check` writes (`sluice check | head -0`) is no fault
/// of the config: exit 0, no panic.
#[test]
fn check_survives_a_closed_stdout() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut child = bin::command()
        .args(["check", "-c"])
        .arg(format!("{root}/config/sluice.yaml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Closed at once: the child is still starting, long before it has loaded the config.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// SLUICE_CONFIG names the config when -c is not given.
#[test]
fn check_reads_sluice_config_env() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = finish(
        bin::command()
            .arg("check")
            .env("SLUICE_CONFIG", format!("{root}/config/demo.yaml")),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("demo-api"));
}

/// Config errors exit 2 from both `check` and `run`, naming file, line, column and field path.
#[test]
fn config_errors_exit_2_with_location() {
    let cases = [
        ("unknown-field", "server:\n  listen: 127.0.0.1:0\n  bogus: 1\nupstreams: {}\nroutes: []\n", "server.bogus", ":3:"),
        (
            "bad-rate",
            "server:\n  listen: 127.0.0.1:0\nupstreams:\n  a:\n    endpoints: [http://127.0.0.1:1]\nroutes:\n  - name: r\n    upstream: a\n    rate_limits:\n      - key: global\n        rate: 10/x\n",
            "routes[0].rate_limits[0].rate",
            ":11:",
        ),
        (
            "bad-duration",
            "server:\n  listen: 127.0.0.1:0\n  shutdown_grace: soon\nupstreams: {}\nroutes: []\n",
            "server.shutdown_grace",
            ":3:",
        ),
        (
            "missing-upstream",
            "server:\n  listen: 127.0.0.1:0\nupstreams:\n  a:\n    endpoints: [http://127.0.0.1:1]\nroutes:\n  - name: r\n    upstream: nope\n",
            "routes[0].upstream",
            ":8:",
        ),
        (
            "defer-without-store",
            "server:\n  listen: 127.0.0.1:0\nupstreams:\n  a:\n    endpoints: [http://127.0.0.1:1]\nroutes:\n  - name: r\n    upstream: a\n    defer: {when: always}\n",
            "routes[0].defer",
            ":9:",
        ),
        (
            "duplicate-route",
            "server:\n  listen: 127.0.0.1:0\nupstreams:\n  a:\n    endpoints: [http://127.0.0.1:1]\nroutes:\n  - name: r\n    upstream: a\n  - name: r\n    upstream: a\n",
            "routes[1].name",
            ":9:",
        ),
    ];
    for (name, yaml, field, line) in cases {
        let config = ConfigFile::new(yaml);
        let path = &config.path;
        for cmd in ["check", "run"] {
            let out = finish(bin::command().args([cmd, "-c"]).arg(path));
            let stderr = &out.stderr;
            assert_eq!(out.code, Some(2), "{name} via {cmd}: {stderr}");
            assert!(
                stderr.contains(&*path.to_string_lossy()),
                "{name}: no file name in {stderr}"
            );
            assert!(
                stderr.contains(field),
                "{name}: no field path {field} in {stderr}"
            );
            assert!(stderr.contains(line), "{name}: no line {line} in {stderr}");
        }
    }
}

/// A config file that does not exist is a config error (2).
#[test]
fn missing_config_file_exits_2() {
    let out = finish(bin::command().args(["check", "-c", "/nonexistent/sluice.yaml"]));
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("/nonexistent/sluice.yaml"));
}

/// A listener address in use is a start-up failure (1), not a config error.
#[test]
fn port_in_use_exits_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = ConfigFile::new(&format!(
        "server:\n  listen: {addr}\nupstreams:\n  a:\n    endpoints: [http://127.0.0.1:1]\nroutes:\n  - name: r\n    upstream: a\n"
    ));
    let out = finish(bin::command().args(["run", "-c"]).arg(&config.path));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains(&addr.to_string()));
}

/// `run` serves, logs its listener (the real address) at info level, and exits 0 on SIGTERM.
#[test]
fn run_serves_and_exits_0_on_sigterm() {
    let config = ConfigFile::new(
        "server:\n  listen: 127.0.0.1:0\nupstreams:\n  a:\n    endpoints: [http://127.0.0.1:1]\nroutes:\n  - name: r\n    match: { path_prefix: /only }\n    upstream: a\n",
    );
    let mut sluice = run(&config);
    let line = sluice.wait_for_log("http listener up").unwrap();
    assert!(line.contains("INFO"), "not at info level: {line}");
    // The address came from that line: the request reaching it proves the log names the
    // listener.
    let got = http_get(sluice.http, "/nothing");
    assert!(got.starts_with("HTTP/1.1 404"), "{got}");
    sluice.signal("TERM");
    assert_eq!(sluice.wait_exit(), Some(0), "{}", sluice.stderr(true));
}

/// The access line (`server.access_log: true`) gives its duration in ms to three decimals
/// (before: `duration_ms=3.9001270000000003`), and a piped log carries no colour codes.
#[test]
fn access_lines_are_rounded_and_plain() {
    let config = ConfigFile::new(
        "server:\n  listen: 127.0.0.1:0\n  access_log: true\nupstreams:\n  a:\n    endpoints: [http://127.0.0.1:1]\nroutes:\n  - name: r\n    match: { path_prefix: /only }\n    upstream: a\n",
    );
    let mut sluice = run(&config);
    let got = http_get(sluice.http, "/nothing");
    assert!(got.starts_with("HTTP/1.1 404"), "{got}");
    let line = sluice.wait_for_log("duration_ms=").unwrap();
    let ms = line
        .split("duration_ms=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default();
    let decimals = ms.split_once('.').map_or(0, |(_, d)| d.len());
    assert!(
        ms.parse::<f64>().is_ok() && decimals == 3,
        "duration_ms={ms} in {line}"
    );
    assert!(
        !line.contains('\u{1b}'),
        "colour codes in a piped log: {line:?}"
    );
    sluice.signal("TERM");
    assert_eq!(sluice.wait_exit(), Some(0), "{}", sluice.stderr(true));
}

/// Pins the bounds: a config with every number and duration at the largest value `check`
/// accepts runs and serves (before, `max_connections: 9223372036854775807` aborted `run` on a
/// semaphore assertion, and a huge `header_read_timeout` on hyper's timer).
#[test]
fn largest_accepted_values_run_and_serve() {
    let config = ConfigFile::new(
        "server:
  listen: 127.0.0.1:0
  max_connections: 10000000
  header_read_timeout: 24h
  shutdown_grace: 24h
  max_concurrent_streams: 4294967295
  ipv6_key_prefix: 128
  max_header_bytes: 1GiB
  max_request_body: 1GiB
  request_buffer: 1GiB
  request_body_timeout: 24h
  response_buffer: 1GiB
  send_timeout: 24h
  max_buffered_bytes: 1GiB
  max_connections_per_ip: 10000000
upstreams:
  a:
    endpoints: [http://127.0.0.1:1]
    connect_timeout: 24h
    timeout: 24h
    concurrency: {max_inflight: 10000000, queue: 10000000, queue_timeout: 24h}
routes:
  - name: r
    match: { path_prefix: /only }
    upstream: a
    concurrency: {max_inflight: 10000000, queue: 10000000, queue_timeout: 24h}
    rate_limits:
      - {key: client_ip, rate: 1000000000/s, burst: 4294967295}
",
    );
    let checked = finish(bin::command().args(["check", "-c"]).arg(&config.path));
    assert_eq!(checked.code, Some(0), "{}", checked.stderr);
    let mut sluice = run(&config);
    let got = http_get(sluice.http, "/nothing");
    assert!(got.starts_with("HTTP/1.1 404"), "{got}");
    sluice.signal("TERM");
    assert_eq!(sluice.wait_exit(), Some(0), "{}", sluice.stderr(true));
}

/// `sluice demo` starts its sample upstream, the proxy and the admin listener, prints the
/// dashboard's address first and then the commands (with the proxy's address), serves the
/// dashboard, and shows 200 and then 429 once the per-client burst is spent.
#[test]
fn demo_shows_200_and_429() {
    let demo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.yaml")).unwrap();
    assert!(
        demo.contains("127.0.0.1:8080")
            && demo.contains("127.0.0.1:9000")
            && demo.contains("127.0.0.1:9901")
    );
    // The sample upstream's port is written in the config (its endpoint), so it comes from the
    // racy `free_port`: when another process takes it first, the demo exits at start-up, and
    // the attempt is repeated with another port (at most 3 times). The proxy listens on port 0.
    let mut attempt = 0;
    let (mut sluice, config, sample_port) = loop {
        attempt += 1;
        let sample_port = free_port();
        let yaml = demo
            .replace("127.0.0.1:8080", "127.0.0.1:0")
            .replace("127.0.0.1:9901", "127.0.0.1:0")
            .replace("127.0.0.1:9000", &format!("127.0.0.1:{sample_port}"));
        let config = ConfigFile::new(&yaml);
        match Sluice::start(bin::command().args(["demo", "-c"]).arg(&config.path)) {
            Ok(sluice) => break (sluice, config, sample_port),
            Err(stderr) if attempt < 3 => eprintln!("demo did not start, retrying:\n{stderr}"),
            Err(stderr) => panic!("demo did not start in {attempt} attempts:\n{stderr}"),
        }
    };
    let config_path = config.path.clone();
    let addr = sluice.http;
    let admin = sluice.admin();
    let page = admin_get(admin, "/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<title>sluice dashboard</title>"), "{page}");
    let first = http_get(addr, "/api/hello");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let statuses: Vec<String> = (0..60)
        .map(|_| http_get(addr, "/api/hello")[9..12].to_owned())
        .collect();
    assert!(
        statuses.iter().any(|s| s == "429"),
        "no 429 in {statuses:?}"
    );
    sluice.signal("TERM");
    assert_eq!(sluice.wait_exit(), Some(0), "{}", sluice.stderr(true));
    let stdout = sluice.stdout(true);
    assert!(
        stdout.starts_with(&format!("dashboard: http://{admin}/")),
        "the dashboard's address comes first: {stdout}"
    );
    assert!(stdout.contains("wrk"), "{stdout}");
    assert!(stdout.contains("curl"), "{stdout}");
    assert!(stdout.contains(&format!("http://{addr}")), "{stdout}");
    // The hints name the config the demo runs and where its sample API listens.
    let named = config_path.display().to_string();
    assert!(
        stdout.contains(&format!("configured by {named}")),
        "{stdout}"
    );
    assert!(!stdout.contains("config/demo.yaml"), "{stdout}");
    assert!(
        stdout.contains(&format!("a sample API on 127.0.0.1:{sample_port}")),
        "{stdout}"
    );
    // stderr is a pipe here: no colour codes in the log.
    assert!(
        !sluice.stderr(true).contains('\u{1b}'),
        "colour codes in a piped log"
    );
}

/// 1 GiB.
const GIB: u64 = 1 << 30;

/// The RSS bound for a process that streams 1 GiB: far below the body.
const RSS_LIMIT_KIB: u64 = 128 * 1024;

/// `sluice run` with one route to `upstream` (a long timeout: the whole body passes before the
/// response head) on two workers.
fn streaming_proxy(upstream: SocketAddr) -> (Sluice, ConfigFile) {
    let config = ConfigFile::new(&format!(
        "server:\n  listen: 127.0.0.1:0\n  workers: 2\n  max_request_body: 1GiB\nupstreams:\n  a:\n    endpoints: [http://{upstream}]\n    timeout: 600s\nroutes:\n  - name: r\n    upstream: a\n"
    ));
    (run(&config), config)
}

/// 1 GiB response streams through the proxy process with flat memory (RSS stays far below the
/// body).
#[test]
fn gigabyte_body_streams_with_flat_memory() {
    // Streams 1 GiB through two busy cores: not beside a test that measures against the clock.
    let _alone = alone_blocking();
    // A raw upstream that sends 1 GiB with Content-Length.
    let up = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = up.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = up.accept() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {GIB}\r\n\r\n");
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..(GIB >> 20) {
                if s.write_all(&chunk).is_err() {
                    return;
                }
            }
        }
    });
    let (mut sluice, _config) = streaming_proxy(up_addr);
    let mut s = TcpStream::connect(sluice.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut received = 0u64;
    let mut max_rss = 0;
    let mut reads = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received += n as u64,
            Err(e) => panic!("read failed after {received} bytes: {e}"),
        }
        reads += 1;
        if reads.is_multiple_of(256) {
            max_rss = max_rss.max(rss_kib(sluice.pid()));
        }
    }
    sluice.assert_running();
    assert!(received > GIB, "received {received} bytes");
    assert!(
        max_rss > 0 && max_rss < RSS_LIMIT_KIB,
        "proxy RSS reached {max_rss} KiB while streaming 1 GiB"
    );
}

/// Reads a request body as HTTP/1.1 frames it (Content-Length or chunked) and discards it;
/// returns how many body bytes there were.
fn discard_body(r: &mut BufReader<TcpStream>, head: &str) -> std::io::Result<u64> {
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut skip = |r: &mut BufReader<TcpStream>, mut n: u64| -> std::io::Result<u64> {
        let want = n;
        while n > 0 {
            let len = buf.len().min(n as usize);
            let got = r.read(&mut buf[..len])?;
            if got == 0 {
                return Ok(want - n); // the client went away early
            }
            n -= got as u64;
        }
        Ok(want)
    };
    if let Some(len) = header("content-length") {
        return skip(r, len.parse().expect("a Content-Length"));
    }
    assert!(
        header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")),
        "neither Content-Length nor chunked:\n{head}"
    );
    let mut total = 0;
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let size = line.trim().split(';').next().unwrap_or("");
        let size = u64::from_str_radix(size, 16).expect("a chunk size");
        if size == 0 {
            // Trailers, up to the empty line.
            while line != "\r\n" && !line.is_empty() {
                line.clear();
                r.read_line(&mut line)?;
            }
            return Ok(total);
        }
        let got = skip(r, size)?;
        total += got;
        if got < size {
            return Ok(total);
        }
        line.clear();
        r.read_line(&mut line)?; // the CRLF after the chunk
    }
}

/// A 1 GiB request body (Content-Length, written 1 MiB at a time) streams through the proxy
/// process to the upstream with flat memory: RSS stays far below the body while it uploads, and
/// the upstream gets every byte.
#[test]
fn gigabyte_upload_streams_with_flat_memory() {
    // Streams 1 GiB through two busy cores: not beside a test that measures against the clock.
    let _alone = alone_blocking();
    // A raw upstream that reads the body, discards it, and answers with the byte count.
    let up = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = up.local_addr().unwrap();
    let upstream_got = Arc::new(AtomicU64::new(0));
    let got = upstream_got.clone();
    std::thread::spawn(move || {
        let Ok((s, _)) = up.accept() else { return };
        let mut r = BufReader::new(s);
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            if r.read_line(&mut head).unwrap_or(0) == 0 {
                return;
            }
        }
        let Ok(n) = discard_body(&mut r, &head) else {
            return;
        };
        got.store(n, Ordering::SeqCst);
        let count = n.to_string();
        let _ = write!(
            r.get_mut(),
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{count}",
            count.len()
        );
    });
    let (mut sluice, _config) = streaming_proxy(up_addr);
    let (addr, pid) = (sluice.http, sluice.pid());
    // The client: a std thread writing 1 MiB chunks and sampling the proxy's RSS as it goes.
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {GIB}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let chunk = vec![b'u'; 1 << 20];
        let mut max_rss = 0;
        for i in 0..(GIB >> 20) {
            if let Err(e) = s.write_all(&chunk) {
                panic!("upload failed after {i} MiB: {e}");
            }
            if i % 8 == 0 {
                max_rss = max_rss.max(rss_kib(pid));
            }
        }
        let mut response = String::new();
        s.read_to_string(&mut response).expect("the response");
        (max_rss, response)
    });
    let (max_rss, response) = client.join().expect("the uploading client");
    sluice.assert_running();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(
        upstream_got.load(Ordering::SeqCst),
        GIB,
        "bytes at the upstream"
    );
    assert!(
        response.ends_with(&format!("\r\n\r\n{GIB}")),
        "the upstream did not count 1 GiB: {response}"
    );
    assert!(
        max_rss > 0 && max_rss < RSS_LIMIT_KIB,
        "proxy RSS reached {max_rss} KiB while uploading 1 GiB"
    );
}
