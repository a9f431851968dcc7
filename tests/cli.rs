//! The `sluice` binary: exit statuses, `check`, config errors, signals, `demo`, and flat memory
//! while a large body streams through.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

fn write_config(name: &str, yaml: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sluice.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A port that is free now (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(addr: SocketAddr, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "sluice exited early");
        assert!(Instant::now() < deadline, "sluice did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn terminate(child: &Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
}

fn wait_exit(child: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sluice did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `--version` and `--help` exit 0.
#[test]
fn version_and_help() {
    let out = sluice().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    assert!(sluice().arg("--help").output().unwrap().status.success());
}

/// The shipped configs are valid, and `check` prints a summary of routes and upstreams.
#[test]
fn check_accepts_shipped_configs() {
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["config/sluice.yaml", "config/demo.yaml"] {
        let out = sluice()
            .args(["check", "-c"])
            .arg(format!("{root}/{file}"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("routes"), "{stdout}");
        assert!(stdout.contains("upstreams"), "{stdout}");
    }
}

/// SLUICE_CONFIG names the config when -c is not given.
#[test]
fn check_reads_sluice_config_env() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = sluice()
        .arg("check")
        .env("SLUICE_CONFIG", format!("{root}/config/demo.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("demo-api"));
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
            "duplicate-route",
            "server:\n  listen: 127.0.0.1:0\nupstreams:\n  a:\n    endpoints: [http://127.0.0.1:1]\nroutes:\n  - name: r\n    upstream: a\n  - name: r\n    upstream: a\n",
            "routes[1].name",
            ":9:",
        ),
    ];
    for (name, yaml, field, line) in cases {
        let path = write_config(name, yaml);
        for cmd in ["check", "run"] {
            let out = sluice().args([cmd, "-c"]).arg(&path).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{name} via {cmd}: {stderr}");
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
    let out = sluice()
        .args(["check", "-c", "/nonexistent/sluice.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/sluice.yaml"));
}

/// A listener address in use is a start-up failure (1), not a config error.
#[test]
fn port_in_use_exits_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let path = write_config(
        "in-use",
        &format!("server:\n  listen: {addr}\nupstreams:\n  a:\n    endpoints: [http://127.0.0.1:1]\nroutes:\n  - name: r\n    upstream: a\n"),
    );
    let out = sluice().args(["run", "-c"]).arg(&path).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(&addr.to_string()));
}

/// `run` serves, logs its listener at info level, and exits 0 on SIGTERM.
#[test]
fn run_serves_and_exits_0_on_sigterm() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let path = write_config(
        "sigterm",
        &format!("server:\n  listen: {addr}\nupstreams:\n  a:\n    endpoints: [http://127.0.0.1:1]\nroutes:\n  - name: r\n    match: {{ path_prefix: /only }}\n    upstream: a\n"),
    );
    let mut child = sluice()
        .args(["run", "-c"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_port(addr, &mut child);
    assert!(http_get(addr, "/nothing").starts_with("HTTP/1.1 404"));
    terminate(&child);
    assert_eq!(wait_exit(&mut child), Some(0));
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains(&addr.to_string()),
        "no listener line in: {stderr}"
    );
}

/// `sluice demo` starts its sample upstream and the proxy, prints the commands, and the demo
/// shows 200 and then 429 once the per-client burst is spent.
#[test]
fn demo_shows_200_and_429() {
    let (proxy_port, upstream_port) = (free_port(), free_port());
    let demo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.yaml")).unwrap();
    let yaml = demo
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{proxy_port}"))
        .replace("127.0.0.1:9000", &format!("127.0.0.1:{upstream_port}"));
    let path = write_config("demo", &yaml);
    let mut child = sluice()
        .args(["demo", "-c"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{proxy_port}").parse().unwrap();
    wait_for_port(addr, &mut child);
    let first = http_get(addr, "/api/hello");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let statuses: Vec<String> = (0..60)
        .map(|_| http_get(addr, "/api/hello")[9..12].to_owned())
        .collect();
    assert!(
        statuses.iter().any(|s| s == "429"),
        "no 429 in {statuses:?}"
    );
    terminate(&child);
    assert_eq!(wait_exit(&mut child), Some(0));
    let mut stdout = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        stdout.push_str(&line.unwrap());
        stdout.push('\n');
    }
    assert!(stdout.contains("wrk"), "{stdout}");
    assert!(stdout.contains("curl"), "{stdout}");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// 1 GiB streams through the proxy process with flat memory (RSS stays far below the body).
#[test]
fn gigabyte_body_streams_with_flat_memory() {
    const TOTAL: u64 = 1 << 30;
    // A raw upstream that sends 1 GiB with Content-Length.
    let up = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = up.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = up.accept() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {TOTAL}\r\n\r\n");
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..(TOTAL >> 20) {
                if s.write_all(&chunk).is_err() {
                    return;
                }
            }
        }
    });
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let path = write_config(
        "big",
        &format!("server:\n  listen: {addr}\n  workers: 2\nupstreams:\n  a:\n    endpoints: [http://{up_addr}]\nroutes:\n  - name: r\n    upstream: a\n"),
    );
    let mut child = sluice()
        .args(["run", "-c"])
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(addr, &mut child);
    let mut s = TcpStream::connect(addr).unwrap();
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
        if reads % 256 == 0 {
            max_rss = max_rss.max(rss_kib(child.id()));
        }
    }
    terminate(&child);
    wait_exit(&mut child);
    assert!(received > TOTAL, "received {received} bytes");
    assert!(
        max_rss > 0 && max_rss < 128 * 1024,
        "proxy RSS reached {max_rss} KiB while streaming 1 GiB"
    );
}
