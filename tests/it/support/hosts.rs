//! A name of a test's (or a bench's) own in `/etc/hosts`, standing for the addresses it is
//! given: how the fleet tests and `benches/fleet` make endpoints come and go. Std only, so that
//! the bench can include it (`#[path]`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Serialises the read-modify-writes of `/etc/hosts` by the tests of this process (each test
/// writes only lines of its own name, but two rewrites at once would lose one).
static HOSTS: Mutex<()> = Mutex::new(());
/// Makes each name unique in this process.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A name of this test's own in `/etc/hosts`, standing for the addresses last [`Hosts::set`].
/// Its lines are removed when dropped, also when the test panics; other lines are untouched.
pub(crate) struct Hosts {
    pub(crate) name: String,
}

impl Hosts {
    /// A fresh name (`<what>-<pid>-<n>.fleet.test`), resolving to `ips`.
    pub(crate) fn new(what: &str, ips: &[&str]) -> Hosts {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let hosts = Hosts {
            name: format!("{what}-{}-{n}.fleet.test", std::process::id()),
        };
        hosts.set(ips);
        hosts
    }

    /// The name now stands for `ips` (and nothing else): its lines are rewritten in place.
    pub(crate) fn set(&self, ips: &[&str]) {
        let _guard = HOSTS.lock().unwrap_or_else(|e| e.into_inner());
        let text = std::fs::read_to_string("/etc/hosts").expect("read /etc/hosts");
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !self.is_ours(l))
            .map(str::to_owned)
            .collect();
        lines.extend(ips.iter().map(|ip| format!("{ip} {}", self.name)));
        let text = lines.join("\n") + "\n";
        // Renamed over, so that a lookup meanwhile (another test's, or sluice's resolver) reads
        // the old file or the new one, never half of one; written in place where /etc/hosts is
        // a mount point and cannot be renamed over.
        let tmp = format!("/etc/.hosts.{}.tmp", std::process::id());
        let renamed =
            std::fs::write(&tmp, &text).and_then(|()| std::fs::rename(&tmp, "/etc/hosts"));
        if renamed.is_err() {
            let _ = std::fs::remove_file(&tmp);
            std::fs::write("/etc/hosts", text).expect("write /etc/hosts");
        }
    }

    fn is_ours(&self, line: &str) -> bool {
        line.split_whitespace().nth(1) == Some(self.name.as_str())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.set(&[]);
    }
}
