//! The `sluice` binary as a child process, for what needs a process of its own: exit statuses,
//! signals, the process's memory. The listeners bind port 0 and the addresses are read from the
//! log lines that announce them, so no port has to be guessed.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the binary may take to start or to exit (generous: a loaded 2-core debug build).
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// The `sluice` binary cargo built for these tests.
pub(crate) fn command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

/// A running `sluice`. Killed (SIGKILL) and reaped when dropped — also when the test panics —
/// so no test leaves a process behind.
pub(crate) struct Sluice {
    child: Child,
    /// The plain HTTP listener, as the process logged it.
    pub(crate) http: SocketAddr,
    stdout: Output,
    stderr: Output,
    /// One message per stderr line read: wakes [`Sluice::wait_for_log`].
    lines: Receiver<()>,
}

/// A pipe of the child, read to its end by a thread into `text`.
struct Output {
    text: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Output {
    fn read(pipe: impl Read + Send + 'static, notify: Option<mpsc::Sender<()>>) -> Output {
        let text = Arc::new(Mutex::new(String::new()));
        let t = text.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut text = t.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
                drop(text);
                if let Some(notify) = &notify {
                    let _ = notify.send(());
                }
            }
        });
        Output {
            text,
            reader: Some(reader),
        }
    }

    /// What was read so far; all of it when `ended` (the child has exited).
    fn text(&mut self, ended: bool) -> String {
        if ended {
            if let Some(reader) = self.reader.take() {
                let _ = reader.join();
            }
        }
        self.text.lock().unwrap().clone()
    }
}

impl Sluice {
    /// Spawns `cmd` (a [`command`] with its arguments; stdin, stdout and stderr are set here) and
    /// waits for the log line announcing the HTTP listener.
    ///
    /// # Errors
    /// The process's stderr when it exited (or went silent for [`PATIENCE`]) before that.
    pub(crate) fn start(cmd: &mut Command) -> Result<Sluice, String> {
        let mut sluice = Sluice::spawn(cmd);
        match sluice.wait_for_log("http listener up") {
            Some(line) => {
                sluice.http = address_in(&line)
                    .unwrap_or_else(|| panic!("no address in the listener line: {line}"));
                Ok(sluice)
            }
            None => {
                // Killed in case it is only slow, so that its stderr ends.
                let _ = sluice.child.kill();
                let _ = sluice.child.wait();
                Err(sluice.stderr(true))
            }
        }
    }

    /// Spawns `cmd` with stdin closed and stdout and stderr read by threads.
    fn spawn(cmd: &mut Command) -> Sluice {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice");
        let (notify, lines) = mpsc::channel();
        let stdout = Output::read(child.stdout.take().unwrap(), None);
        let stderr = Output::read(child.stderr.take().unwrap(), Some(notify));
        Sluice {
            child,
            http: "0.0.0.0:0".parse().unwrap(),
            stdout,
            stderr,
            lines,
        }
    }

    /// The admin listener, from its log line (which follows the HTTP listener's).
    pub(crate) fn admin(&mut self) -> SocketAddr {
        let line = self
            .wait_for_log("admin listener up")
            .unwrap_or_else(|| panic!("no admin listener logged:\n{}", self.stderr(false)));
        address_in(&line).unwrap_or_else(|| panic!("no address in the admin line: {line}"))
    }

    /// The first stderr line logged so far that contains `needle`.
    fn logged(&self, needle: &str) -> Option<String> {
        self.stderr
            .text
            .lock()
            .unwrap()
            .lines()
            .find(|l| l.contains(needle))
            .map(str::to_owned)
    }

    /// The first stderr line containing `needle`, waiting up to [`PATIENCE`] for it; `None` when
    /// the process ended (closed stderr) or stayed silent that long without logging it.
    pub(crate) fn wait_for_log(&mut self, needle: &str) -> Option<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            // Lines are appended before they are announced: check, then wait for the next one.
            let found = self.logged(needle);
            if found.is_some() {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => {
                    return self.logged(needle);
                }
            }
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (a name kill(1) knows: `TERM`, `HUP`) to the process.
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Panics (with its stderr) if the process has exited.
    pub(crate) fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("sluice exited ({status}):\n{}", self.stderr(true));
        }
    }

    /// Waits up to [`PATIENCE`] for the process to exit; its exit code (`None`: killed by a
    /// signal). Panics if it is still running then.
    pub(crate) fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "sluice did not exit within {PATIENCE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its stderr so far; all of it once `exited` (call after [`Sluice::wait_exit`]).
    pub(crate) fn stderr(&mut self, exited: bool) -> String {
        self.stderr.text(exited)
    }

    /// Its stdout so far; all of it once `exited` (call after [`Sluice::wait_exit`]).
    pub(crate) fn stdout(&mut self, exited: bool) -> String {
        self.stdout.text(exited)
    }
}

/// How a command that is expected to end by itself (`check`, a config error, `--version`) ended.
#[derive(Debug)]
pub(crate) struct Finished {
    /// The exit code (`None`: killed by a signal).
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs `cmd` to its end, like `Command::output` but bounded: a process still running after
/// [`PATIENCE`] (a bug that made it serve) fails the test and is killed.
pub(crate) fn finish(cmd: &mut Command) -> Finished {
    let mut sluice = Sluice::spawn(cmd);
    let code = sluice.wait_exit();
    Finished {
        code,
        stdout: sluice.stdout(true),
        stderr: sluice.stderr(true),
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The first socket address in a log line (`listen=127.0.0.1:41234`, possibly with ANSI colour
/// codes around the field name): the first run of digits, dots and colons that parses as one.
fn address_in(line: &str) -> Option<SocketAddr> {
    line.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .find_map(|token| token.parse().ok())
}

/// The resident set size of process `pid` in KiB (`VmRSS` of /proc/<pid>/status), 0 if it cannot
/// be read.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
