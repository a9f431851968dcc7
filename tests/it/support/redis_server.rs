//! A real `redis-server` for tests: started on a free loopback port with persistence off (or,
//! [`RedisServer::start_durable`], on disk and losing nothing it acknowledged), stopped
//! (SIGKILL) when dropped; a server speaking only TLS with a certificate from a test CA
//! made at test time ([`TestPki`]); and a Redis Cluster of such servers in the test's own
//! temporary directory ([`RedisCluster`], made with `redis-cli --cluster create`). `.ci/run`
//! installs redis-server and redis-cli when they are missing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::support::{free_port, temp_dir, until};

/// A per-call timeout for tests that count admissions: a loaded 2-core machine must not turn a
/// slow answer into a fallback. With `on_error: deny` a fallback shows as a 503.
pub(crate) const PATIENT: &str = "2s";

/// The timeout of the fault tests, and the margin a request may take beyond it: generous (a
/// loaded 2-core debug build), yet a request that waited on a dead Redis for longer than a
/// couple of timeouts (a missing deadline, a reconnect in the request path) still fails.
pub(crate) const FAULT_TIMEOUT: Duration = Duration::from_millis(500);
pub(crate) const MARGIN: Duration = Duration::from_millis(1500);

/// The listeners (the proxy's and the admin's, on port 0) and `store.redis` with the fields
/// `store` (YAML flow mapping entries, e.g. `url: "redis://…"`), `timeout` and `on_error`:
/// how every config of a test with Redis starts.
pub(crate) fn store_head(store: &str, timeout: &str, on_error: &str) -> String {
    format!(
        r#"
server:
  listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
store:
  redis: {{{store}, timeout: {timeout}, on_error: {on_error}}}
"#
    )
}

/// [`store_head`], then `routes` (list items, indented 2) to the upstream `api` at `upstream`.
pub(crate) fn store_config(
    store: &str,
    timeout: &str,
    on_error: &str,
    upstream: &str,
    routes: &str,
) -> String {
    let head = store_head(store, timeout, on_error);
    format!(
        r#"{head}upstreams:
  api:
    endpoints: [{upstream}]
routes:
{routes}"#
    )
}

/// A redis-server child process on `127.0.0.1:port`.
pub(crate) struct RedisServer {
    pub(crate) port: u16,
    /// Extra arguments (e.g. `--requirepass`), kept for restarts.
    args: Vec<String>,
    /// For a TLS-only server: the CA certificate (PEM) its certificate is signed by, to check
    /// that it answers.
    tls_ca: Option<Vec<u8>>,
    /// The server's own directory (`--dir`), removed when dropped.
    dir: Option<PathBuf>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts redis-server on a free port and waits until it answers PING.
    pub(crate) async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Same, with extra command-line arguments.
    pub(crate) async fn start_with(args: &[&str]) -> Self {
        let mut server = Self::stopped_on(free_port(), args);
        server.restart().await;
        server
    }

    /// A server that is not running yet (start it with [`restart`](Self::restart)), on `port`.
    pub(crate) fn stopped_on(port: u16, args: &[&str]) -> Self {
        RedisServer {
            port,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            tls_ca: None,
            dir: None,
            child: None,
        }
    }

    /// Starts a redis-server that keeps every write it acknowledged across a kill and a
    /// [`restart`](Self::restart) on the same port: append-only file with `appendfsync always`,
    /// in a directory of its own.
    pub(crate) async fn start_durable() -> Self {
        let dir = temp_dir("redis-aof");
        let dir_text = dir.display().to_string();
        let args = [
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            &dir_text,
        ];
        let mut server = Self::stopped_on(free_port(), &args);
        server.dir = Some(dir);
        server.restart().await;
        server
    }

    /// Starts a redis-server that speaks only TLS (`--port 0 --tls-port`) with the server
    /// certificate of `pki`, not asking clients for certificates; waits until it answers PING
    /// over TLS.
    pub(crate) async fn start_tls(pki: &TestPki) -> Self {
        let port = free_port();
        let port_text = port.to_string();
        let (cert, key, ca) = (
            pki.cert.display().to_string(),
            pki.key.display().to_string(),
            pki.ca.display().to_string(),
        );
        let mut server = Self::stopped_on(
            port,
            &[
                "--port",
                "0",
                "--tls-port",
                &port_text,
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                "no",
            ],
        );
        server.tls_ca = Some(pki.ca_pem.as_bytes().to_vec());
        server.restart().await;
        server
    }

    /// `rediss://127.0.0.1:port` (the test certificate names 127.0.0.1 and localhost).
    pub(crate) fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// True while the process runs.
    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `redis://127.0.0.1:port`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the process (again) on the same port and waits until it answers PING.
    pub(crate) async fn restart(&mut self) {
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
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A connection for inspecting the server (authenticated with `password`, if given).
    pub(crate) async fn connection(
        &self,
        password: Option<&str>,
    ) -> redis::aio::MultiplexedConnection {
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
        let client = match &self.tls_ca {
            Some(ca) => redis::Client::build_with_tls(
                self.tls_url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            None => {
                let url = match self.password() {
                    Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
                    None => self.url(),
                };
                redis::Client::open(url)
            }
        };
        let Ok(client) = client else {
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
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A TCP proxy in front of a redis-server that can hold back the server's replies while it
/// still passes the clients' commands on: Redis runs a command whose client then does not get
/// the reply in time — as when a reply is slow on the way, or Redis stalls once it has run it.
pub(crate) struct ReplyStall {
    pub(crate) port: u16,
    /// True while replies are held.
    held: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl ReplyStall {
    /// Starts the proxy on a free port, in front of the redis-server on `port`.
    pub(crate) async fn start(port: u16) -> ReplyStall {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap().port();
        let held = Arc::new(AtomicBool::new(false));
        let holding = held.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", port)).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, holding.clone()));
            }
        });
        ReplyStall {
            port: proxy,
            held,
            task,
        }
    }

    /// `redis://127.0.0.1:<proxy port>`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The switch: replies are held while it is true (from the next one read).
    pub(crate) fn switch(&self) -> Arc<AtomicBool> {
        self.held.clone()
    }
}

impl Drop for ReplyStall {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Commands from `client` to `server` as they come; replies back while `held` is false.
async fn relay(client: TcpStream, server: TcpStream, held: Arc<AtomicBool>) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let commands = tokio::io::copy(&mut from_client, &mut to_server);
    let replies = async move {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = match from_server.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            while held.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if to_client.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = commands => {}
        () = replies => {}
    }
}

/// A test CA made at test time and a server certificate it signed for `127.0.0.1` and
/// `localhost`, as PEM files in a directory of their own (removed when dropped).
pub(crate) struct TestPki {
    dir: PathBuf,
    /// The CA certificate: what a client must trust.
    pub(crate) ca: PathBuf,
    /// The same, as text.
    pub(crate) ca_pem: String,
    /// The server's certificate and key (PKCS#8).
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

impl TestPki {
    pub(crate) fn new() -> TestPki {
        let dir = temp_dir("pki");
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "sluice test Redis CA");
        let ca = params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        TestPki {
            ca: write("ca.pem", &ca.pem()),
            ca_pem: ca.pem(),
            cert: write("redis.pem", &leaf.pem()),
            key: write("redis.key", &key.serialize_pem()),
            dir,
        }
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of masters without replicas, each a redis-server on a free port with its
/// `nodes.conf` in a directory of the test's own (so that a killed node restarted on its port
/// rejoins with its slots, empty). `cluster-require-full-coverage no`: while a node is down,
/// the others keep serving their slots (the default would refuse every key once the node is
/// judged failed, which a production cluster avoids with replicas).
pub(crate) struct RedisCluster {
    pub(crate) nodes: Vec<RedisServer>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts `masters` nodes, joins them with `redis-cli --cluster create` and waits until
    /// every node says `cluster_state:ok`.
    pub(crate) async fn start(masters: usize) -> RedisCluster {
        let dir = temp_dir("redis-cluster");
        let mut nodes = Vec::new();
        for _ in 0..masters {
            let port = free_port();
            let conf = format!("nodes-{port}.conf");
            let dir_text = dir.display().to_string();
            let mut node = RedisServer::stopped_on(
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-require-full-coverage",
                    "no",
                    "--dir",
                    &dir_text,
                ],
            );
            node.restart().await;
            nodes.push(node);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-cli ({e}); install it: apt-get install -y redis-tools")
            });
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        let cluster = RedisCluster { nodes, dir };
        cluster.wait_ok().await;
        cluster
    }

    /// Waits (bounded) until every running node says `cluster_state:ok`.
    pub(crate) async fn wait_ok(&self) {
        until(
            "the cluster to be ok on every node",
            Duration::from_secs(30),
            || async {
                for node in self.nodes.iter().filter(|n| n.is_running()) {
                    let mut conn = node.connection(None).await;
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut conn)
                        .await
                        .unwrap_or_default();
                    if !info.contains("cluster_state:ok") {
                        return false;
                    }
                }
                true
            },
        )
        .await;
    }

    /// The seed list for `store.redis.cluster`, as YAML: `["redis://127.0.0.1:p", …]`.
    pub(crate) fn seeds_yaml(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"{}\"", n.url()))
            .collect();
        format!("[{}]", seeds.join(", "))
    }

    /// The index of the node serving `key`'s slot (asked of a running node).
    pub(crate) async fn node_of(&self, key: &str) -> usize {
        let asked = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a running node");
        let mut conn = asked.connection(None).await;
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let ranges: Vec<(i64, i64, (String, i64))> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<Vec<redis::Value>>(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .map(|range| redis::from_redis_value(range).unwrap())
            .map(|(start, end, master): (i64, i64, Vec<redis::Value>)| {
                let (host, port): (String, i64) =
                    redis::from_redis_value(redis::Value::Array(master[..2].to_vec())).unwrap();
                (start, end, (host, port))
            })
            .collect();
        let (_, _, (_, port)) = ranges
            .iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .unwrap_or_else(|| panic!("no node serves slot {slot}: {ranges:?}"));
        self.nodes
            .iter()
            .position(|n| i64::from(n.port) == *port)
            .unwrap()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
