//! The chaos run's child processes: a redis-server and the sluice instances. Each runs under
//! `timeout` (so that it ends by itself, [`LIFETIME`] later, even if the bench is killed), which
//! makes a process group of its own: a kill goes to the group, so SIGKILL reaches the server
//! itself and not only `timeout`.

use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest life of a child process.
const LIFETIME: Duration = Duration::from_secs(1200);

/// How long a process may take to be ready.
const START_LIMIT: Duration = Duration::from_secs(20);

/// A child process (under `timeout`) whose output goes to a log file.
struct Proc {
    child: Child,
}

/// A redis-server on a fixed port, append-only with `appendfsync always` in its own directory:
/// killed and started again on the same port, it has every write it acknowledged.
pub(crate) struct Redis {
    pub(crate) port: u16,
    dir: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
}

/// A sluice instance: `sluice --log-format json run -c <config>`, listening where its config
/// says, so that a restart serves on the same addresses.
pub(crate) struct Sluice {
    pub(crate) name: &'static str,
    pub(crate) http: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    binary: PathBuf,
    proc: Option<Proc>,
    /// The consumer name of its deliverers (`<pid>-<random>`), from its log: the entries it
    /// holds in the stream's pending list carry it.
    pub(crate) consumer: String,
}

// === impl Proc ===

impl Proc {
    /// Starts `program args` under `timeout`, appending its output to `log`.
    fn start(program: &Path, args: &[&str], log: &Path) -> Result<Proc, String> {
        let out = append(log)?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot share {}: {e}", log.display()))?;
        let child = Command::new("timeout")
            .args(["-k", "5", &format!("{}s", LIFETIME.as_secs())])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        Ok(Proc { child })
    }

    /// SIGKILL to the process group, then waits for `timeout` to end.
    fn kill(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// True while `timeout` (and so the server) runs.
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn append(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))
}

/// A free port on 127.0.0.1 (bound, then released for a child to bind).
pub(crate) fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// Waits until `ready` holds, polling every 50 ms, at most [`START_LIMIT`].
async fn wait_for(
    what: &str,
    mut ready: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let deadline = Instant::now() + START_LIMIT;
    while Instant::now() < deadline {
        if ready()? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{what} was not ready within {START_LIMIT:?}"))
}

// === impl Redis ===

impl Redis {
    /// Starts redis-server on a free port with its files in `dir/redis`.
    pub(crate) async fn start(dir: &Path) -> Result<Redis, String> {
        let data = dir.join("redis");
        std::fs::create_dir_all(&data)
            .map_err(|e| format!("cannot create {}: {e}", data.display()))?;
        let mut redis = Redis {
            port: free_port()?,
            dir: data,
            log: dir.join("redis.log"),
            proc: None,
        };
        redis.restart().await?;
        Ok(redis)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on its port and data directory; waits until it accepts connections.
    pub(crate) async fn restart(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let dir = self.dir.display().to_string();
        let args = [
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            &dir,
        ];
        self.proc = Some(Proc::start(Path::new("redis-server"), &args, &self.log)?);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let proc = self.proc.as_mut().ok_or("no redis-server")?;
        wait_for("redis-server", || {
            if !proc.alive() {
                return Err("redis-server exited (is it installed?)".into());
            }
            Ok(TcpStream::connect(addr).is_ok())
        })
        .await
    }

    /// SIGKILL: no goodbye to clients, nothing written after its last acknowledged write.
    pub(crate) fn kill(&mut self) {
        self.proc = None;
    }
}

// === impl Sluice ===

impl Sluice {
    /// Writes `yaml` (which must listen on `http`) to `dir/<name>.yaml` and starts `binary`
    /// with it; waits until its deliverers have started.
    pub(crate) async fn start(
        name: &'static str,
        binary: &Path,
        dir: &Path,
        http: SocketAddr,
        yaml: &str,
    ) -> Result<Sluice, String> {
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, yaml)
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let mut sluice = Sluice {
            name,
            http,
            config,
            log: dir.join(format!("{name}.log")),
            binary: binary.to_owned(),
            proc: None,
            consumer: String::new(),
        };
        sluice.restart().await?;
        Ok(sluice)
    }

    /// Starts it (again); waits until it has logged a new consumer name and its HTTP listener
    /// accepts connections.
    pub(crate) async fn restart(&mut self) -> Result<(), String> {
        let config = self.config.display().to_string();
        let known = consumers(&self.log).len();
        let args = ["--log-format", "json", "run", "-c", &config];
        self.proc = Some(Proc::start(&self.binary, &args, &self.log)?);
        let (log, http) = (self.log.clone(), self.http);
        let proc = self.proc.as_mut().ok_or("no sluice")?;
        let mut consumer = None;
        wait_for(self.name, || {
            if !proc.alive() {
                return Err(format!("sluice exited; see {}", log.display()));
            }
            consumer = consumers(&log).into_iter().nth(known);
            Ok(consumer.is_some() && TcpStream::connect(http).is_ok())
        })
        .await?;
        self.consumer = consumer.unwrap_or_default();
        Ok(())
    }

    /// SIGKILL: the deliveries under way end without a word to Redis.
    pub(crate) fn kill(&mut self) {
        self.proc = None;
    }

    /// The process id of the sluice its consumer name carries.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.consumer.split('-').next()?.parse().ok()
    }
}

/// The consumer names a sluice log announces (`deferred delivery started`), in order.
fn consumers(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["fields"]["message"] == "deferred delivery started")
        .filter_map(|line| line["fields"]["consumer"].as_str().map(str::to_owned))
        .collect()
}

/// Waits (at most 5 s) until process `pid` has ended: gone, or a zombie nobody reaped yet.
pub(crate) async fn wait_gone(pid: u32) {
    let stat = PathBuf::from(format!("/proc/{pid}/stat"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        // `pid (comm) S …`: the state follows the last `)`.
        let text = std::fs::read_to_string(&stat).unwrap_or_default();
        let state = text
            .rsplit(')')
            .next()
            .and_then(|rest| rest.trim().chars().next());
        if matches!(state, None | Some('Z' | 'X')) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
