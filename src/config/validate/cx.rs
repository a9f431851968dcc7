//! The validation context [`Cx`]: where errors go and how they are placed in the file, and the
//! checks of the value formats every section uses (names, numbers, durations, sizes, choices,
//! addresses, file paths). The bounds every field of a kind shares are [`Config`]'s.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::canonical::EscapedSlashes;
use crate::config::error::{ConfigError, FieldError};
use crate::config::locate::Locator;
use crate::config::raw::{Int, Size};
use crate::config::{ByteSize, Config};

/// The validation context: where errors go, and how they are placed in the file.
pub(super) struct Cx {
    locator: Locator,
    errors: Vec<FieldError>,
    /// `server.escaped_slashes` once read: route paths are normalised under it.
    pub(super) escaped_slashes: EscapedSlashes,
}

// === impl Cx: errors ===

impl Cx {
    /// A context for the YAML `text`, with no error yet.
    pub(super) fn new(text: &str) -> Self {
        Cx {
            locator: Locator::new(text),
            errors: Vec::new(),
            escaped_slashes: EscapedSlashes::default(),
        }
    }

    /// Records an error at the field `path`, placed at that field (or its nearest parent).
    pub(super) fn error(&mut self, path: &str, message: impl Into<String>) {
        let place = self.locator.find(path);
        self.errors.push(FieldError {
            line: place.map(|(line, _)| line),
            column: place.map(|(_, column)| column),
            path: path.to_owned(),
            message: message.into(),
        });
    }

    /// Records an error and returns `None`, for `return cx.fail(..)`.
    pub(super) fn fail<T>(&mut self, path: &str, message: impl Into<String>) -> Option<T> {
        self.error(path, message);
        None
    }

    /// A required field is absent.
    pub(super) fn missing<T>(&mut self, path: &str, expected: &str) -> Option<T> {
        self.fail(
            path,
            format!("required field is missing; expected {expected}"),
        )
    }

    /// Reports every name used a second time; `names` yields (path of the name, name).
    pub(super) fn unique<'a>(
        &mut self,
        names: impl Iterator<Item = (String, &'a str)>,
        what: &str,
    ) {
        let mut seen: HashMap<&str, String> = HashMap::new();
        for (path, name) in names {
            match seen.get(name) {
                Some(first) => {
                    let message = format!("duplicate {what} name {name:?} (first used at {first})");
                    self.error(&path, message);
                }
                None => {
                    seen.insert(name, path);
                }
            }
        }
    }

    /// The outcome: `config` when it was built and no check failed, else every error recorded,
    /// sorted by position in the file at `path`.
    pub(super) fn finish(self, config: Option<Config>, path: &Path) -> Result<Config, ConfigError> {
        let mut errors = match config {
            Some(config) if self.errors.is_empty() => return Ok(config),
            _ => self.errors,
        };
        if errors.is_empty() {
            // Every failed check pushes an error; this only guards that invariant.
            errors.push(FieldError {
                line: None,
                column: None,
                path: String::new(),
                message: "invalid config".to_owned(),
            });
        }
        errors.sort_by_key(|e| (e.line.is_none(), e.line, e.column));
        Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            errors,
        })
    }
}

// === impl Cx: values ===

impl Cx {
    /// Route, limit and upstream names: they appear in metric labels (which the exposition
    /// does not escape), problem JSON and `RateLimit` header fields (quoted strings), so they
    /// are kept to characters that need no escaping anywhere: letters, digits and `-_.:/~`.
    pub(super) fn name(&mut self, at: &str, raw: &str) -> Option<Arc<str>> {
        if raw.is_empty() {
            return self.fail(at, "a name must not be empty");
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/' | '~'))
        {
            return self.fail(
                at,
                format!(
                    "a name may hold ASCII letters, digits and - _ . : / ~ only, found {raw:?}"
                ),
            );
        }
        Some(Arc::from(raw))
    }

    /// A duration with a unit, at most [`Config::MAX_DURATION`]; `None` in → `default`.
    /// `zero_ok` is for settings where zero means "none", such as a grace period; a zero
    /// timeout would fail everything.
    pub(super) fn duration(
        &mut self,
        at: &str,
        raw: Option<&str>,
        default: Duration,
        zero_ok: bool,
    ) -> Option<Duration> {
        let Some(raw) = raw else {
            return Some(default);
        };
        match self.parse_duration(at, raw)? {
            d if d.is_zero() && !zero_ok => {
                self.fail(at, format!("must be greater than 0, found {raw:?}"))
            }
            d if d > Config::MAX_DURATION => {
                self.fail(at, format!("must be at most 24h, found {raw:?}"))
            }
            d => Some(d),
        }
    }

    /// A duration with a unit within `bounds` (both included), for fields whose range is not
    /// the usual `> 0, ≤ 24h`; `None` in → `default`.
    pub(super) fn duration_within(
        &mut self,
        at: &str,
        raw: Option<&str>,
        default: Duration,
        (min, max): (Duration, Duration),
    ) -> Option<Duration> {
        let Some(raw) = raw else {
            return Some(default);
        };
        let show = |d: Duration| humantime::format_duration(d).to_string();
        match self.parse_duration(at, raw)? {
            d if d < min => self.fail(at, format!("must be at least {}, found {raw:?}", show(min))),
            d if d > max => self.fail(at, format!("must be at most {}, found {raw:?}", show(max))),
            d => Some(d),
        }
    }

    /// A duration with a unit (humantime's syntax), of any length.
    fn parse_duration(&mut self, at: &str, raw: &str) -> Option<Duration> {
        humantime::parse_duration(raw.trim()).ok().or_else(|| {
            self.fail(
                at,
                format!("expected a duration with a unit like 250ms, 2s, 1m or 1h, found {raw:?}"),
            )
        })
    }

    /// An integer in `min..=max`, as `T`.
    pub(super) fn number<T>(&mut self, at: &str, raw: i64, min: T, max: T) -> Option<T>
    where
        T: TryFrom<i64> + PartialOrd + Display + Copy,
    {
        match T::try_from(raw) {
            Ok(n) if n < min => self.fail(at, format!("must be at least {min}, found {raw}")),
            // Below what `T` holds: below `min` too.
            Err(_) if raw < 0 => self.fail(at, format!("must be at least {min}, found {raw}")),
            Ok(n) if n <= max => Some(n),
            _ => self.fail(at, format!("must be at most {max}, found {raw}")),
        }
    }

    /// [`Self::number`] of a field that may be absent; `None` in → `default`.
    pub(super) fn whole<T>(
        &mut self,
        at: &str,
        raw: Option<Int>,
        default: T,
        (min, max): (T, T),
    ) -> Option<T>
    where
        T: TryFrom<i64> + PartialOrd + Display + Copy,
    {
        match raw {
            None => Some(default),
            Some(n) => self.number(at, n.0, min, max),
        }
    }

    /// A count in `1..=max`.
    pub(super) fn nonzero_usize(&mut self, at: &str, raw: i64, max: usize) -> Option<NonZeroUsize> {
        self.number::<usize>(at, raw, 1, max)
            .and_then(NonZeroUsize::new)
    }

    /// A count in `1..=max` that may be absent; `None` in → `default`.
    pub(super) fn nonzero_usize_or(
        &mut self,
        at: &str,
        raw: Option<Int>,
        default: NonZeroUsize,
        max: usize,
    ) -> Option<NonZeroUsize> {
        self.whole(at, raw, default.get(), (1, max))
            .and_then(NonZeroUsize::new)
    }

    /// A size in `min..=max`: a bare number of bytes, or a number with a unit (`B`, `KiB`
    /// `MiB`, `GiB`; `K`/`KB`, `M`/`MB`, `G`/`GB` mean the same binary units); `None` in →
    /// `default`.
    pub(super) fn size(
        &mut self,
        at: &str,
        raw: Option<&Size>,
        default: ByteSize,
        (min, max): (ByteSize, ByteSize),
    ) -> Option<ByteSize> {
        let bytes = match raw {
            None => return Some(default),
            Some(Size::Bytes(n)) => u64::try_from(*n).ok(),
            Some(Size::Text(text)) => parse_size(text),
        };
        let shown = |raw: Option<&Size>| match raw {
            Some(Size::Bytes(n)) => n.to_string(),
            Some(Size::Text(t)) => format!("{t:?}"),
            None => String::new(),
        };
        match bytes.map(ByteSize) {
            None => self.fail(
                at,
                format!(
                    "expected a size like 512, 64KiB, 16MiB or 1GiB, found {}",
                    shown(raw)
                ),
            ),
            Some(n) if n < min => {
                self.fail(at, format!("must be at least {min}, found {}", shown(raw)))
            }
            Some(n) if n > max => {
                self.fail(at, format!("must be at most {max}, found {}", shown(raw)))
            }
            Some(n) => Some(n),
        }
    }

    /// One of a fixed set of words; `None` in → `default`.
    pub(super) fn choice<T: Copy>(
        &mut self,
        at: &str,
        raw: Option<&str>,
        options: &[(&str, T)],
        default: T,
    ) -> Option<T> {
        let Some(raw) = raw else {
            return Some(default);
        };
        match options.iter().find(|(word, _)| *word == raw.trim()) {
            Some((_, value)) => Some(*value),
            None => {
                let words: Vec<&str> = options.iter().map(|(word, _)| *word).collect();
                self.fail(
                    at,
                    format!("expected one of {}; found {raw:?}", words.join(", ")),
                )
            }
        }
    }

    /// A listener's address; `None` in → a missing-field error saying `expected`.
    pub(super) fn socket_addr(
        &mut self,
        at: &str,
        raw: Option<&str>,
        expected: &str,
    ) -> Option<SocketAddr> {
        let Some(raw) = raw else {
            return self.missing(at, expected);
        };
        raw.trim().parse().ok().or_else(|| {
            self.fail(
                at,
                format!(
                    "expected an IP address and port like 0.0.0.0:8080 or [::]:8080, found {raw:?}"
                ),
            )
        })
    }

    /// A file path; `None` in → a missing-field error saying `expected`.
    pub(super) fn file(&mut self, at: &str, raw: Option<&str>, expected: &str) -> Option<PathBuf> {
        match raw.map(str::trim) {
            None => self.missing(at, expected),
            Some("") => self.fail(at, format!("must not be empty; expected {expected}")),
            Some(path) => Some(PathBuf::from(path)),
        }
    }
}

/// Dot-separated labels of ASCII letters, digits, `-` and `_`, none of them empty: a host name
/// as routes and `admin.allowed_hosts` take it (lower-cased, wildcard and trailing dot removed).
pub(super) fn is_host_name(name: &str) -> bool {
    name.split('.').all(|label| {
        !label.is_empty()
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// `64KiB` → 65536. `None` for anything that is not a whole number with a known unit, or that
/// overflows.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KB" | "KiB" | "k" => 10,
        "M" | "MB" | "MiB" | "m" => 20,
        "G" | "GB" | "GiB" | "g" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}
