//! `admin:`: the admin listener, the host names it answers to and its bearer token.

use std::path::Path;

use super::cx::{is_host_name, Cx};
use crate::config::raw::RawAdmin;
use crate::config::{AdminConfig, AdminToken};

// === impl Cx: admin ===

impl Cx {
    pub(super) fn admin(&mut self, raw: &RawAdmin) -> Option<AdminConfig> {
        let listen = self.socket_addr(
            "admin.listen",
            raw.listen.as_deref(),
            "an address like 127.0.0.1:9901",
        );
        let allowed_hosts: Vec<Option<String>> = raw
            .allowed_hosts
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, host)| self.allowed_host(&format!("admin.allowed_hosts[{i}]"), host))
            .collect();
        let at = "admin.token_file";
        let token_file = match raw.token_file.as_deref() {
            None => Some(None),
            Some(path) => self
                .file(
                    at,
                    Some(path),
                    "the path of a file holding the bearer token",
                )
                .map(Some),
        };
        // Read now, like the TLS files: `sluice check` and a reload catch a missing or empty
        // file, and a reload is what makes a new token count.
        let token = match &token_file {
            Some(Some(path)) => self.token(at, path).map(Some),
            _ => Some(None),
        };
        Some(AdminConfig {
            listen: listen?,
            allowed_hosts: allowed_hosts.into_iter().collect::<Option<_>>()?,
            token_file: token_file?,
            token: token?,
        })
    }

    /// An `admin.allowed_hosts` entry: a host name, lower-cased, one trailing dot dropped.
    fn allowed_host(&mut self, at: &str, raw: &str) -> Option<String> {
        let host = raw.trim().to_ascii_lowercase();
        let host = host.strip_suffix('.').unwrap_or(&host);
        if host.len() > AdminConfig::MAX_HOST_NAME_LEN || !is_host_name(host) {
            return self.fail(
                at,
                format!(
                    "expected a host name like sluice.internal, without scheme, port or path (IP literals and localhost are always allowed), found {raw:?}"
                ),
            );
        }
        Some(host.to_owned())
    }

    /// The bearer token in the file at `path` (`at` = its field): text, surrounding whitespace
    /// trimmed, not empty, printable ASCII without spaces (it travels in a header field). The
    /// messages never quote the file's content.
    fn token(&mut self, at: &str, path: &Path) -> Option<AdminToken> {
        use std::io::Read as _;
        const MAX: u64 = AdminConfig::MAX_TOKEN_FILE_BYTES;
        let mut text = Vec::new();
        // One byte past the bound tells a file that is too long from one that fits; the bound
        // also keeps a mistaken path (a device, a huge file) from being read whole.
        let read =
            std::fs::File::open(path).and_then(|file| file.take(MAX + 1).read_to_end(&mut text));
        let shown = path.display();
        if let Err(err) = read {
            return self.fail(at, format!("cannot read {shown}: {err}"));
        }
        if text.len() as u64 > MAX {
            return self.fail(
                at,
                format!(
                    "{shown} is larger than {MAX} bytes; expected a file holding only the token"
                ),
            );
        }
        let Ok(text) = std::str::from_utf8(&text) else {
            return self.fail(at, format!("{shown} is not UTF-8 text"));
        };
        let token = text.trim();
        if token.is_empty() {
            return self.fail(
                at,
                format!("{shown} is empty; expected a file holding the bearer token"),
            );
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return self.fail(
                at,
                format!("the token in {shown} must be printable ASCII without spaces or control characters (it is sent as `Authorization: Bearer <token>`)"),
            );
        }
        Some(AdminToken::new(token))
    }
}
