//! A real `redis-server` for tests: started on a free loopback port with persistence off,
//! stopped (SIGKILL) when dropped. `.ci/run` installs redis-server when it is missing.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::until;

/// A redis-server child process on `127.0.0.1:port`.
pub struct RedisServer {
    pub port: u16,
    /// Extra arguments (e.g. `--requirepass`), kept for restarts.
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts redis-server on a free port and waits until it answers PING.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Same, with extra command-line arguments.
    pub async fn start_with(args: &[&str]) -> Self {
        let mut server = Self::stopped_on(free_port(), args);
        server.restart().await;
        server
    }

    /// A server that is not running yet (start it with [`restart`](Self::restart)), on `port`.
    pub fn stopped_on(port: u16, args: &[&str]) -> Self {
        RedisServer {
            port,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
        }
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the process (again) on the same port and waits until it answers PING.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--loglevel", "warning"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}); install it: apt-get install -y redis-server"
                )
            });
        self.child = Some(child);
        let what = format!("redis-server on port {} to answer PING", self.port);
        until(&what, Duration::from_secs(15), || self.ping()).await;
    }

    /// Kills the process (SIGKILL: no goodbye to clients) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A connection for inspecting the server (authenticated with `password`, if given).
    pub async fn connection(&self, password: Option<&str>) -> redis::aio::MultiplexedConnection {
        let url = match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => self.url(),
        };
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis-server")
    }

    /// The `--requirepass` argument, if any.
    fn password(&self) -> Option<&str> {
        let at = self.args.iter().position(|a| a == "--requirepass")?;
        self.args.get(at + 1).map(String::as_str)
    }

    async fn ping(&self) -> bool {
        let url = match self.password() {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => self.url(),
        };
        let Ok(client) = redis::Client::open(url) else {
            return false;
        };
        let attempt = async {
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), attempt).await,
            Ok(Some(_))
        )
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nothing listens on right now (bound to :0, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
