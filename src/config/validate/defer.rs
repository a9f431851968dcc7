//! `routes[].defer:`: deferred delivery — what is deferred, body size, attempts and their
//! backoff, a task's lifetime and how many a route may hold.

use std::num::NonZeroU32;
use std::time::Duration;

use super::cx::Cx;
use super::join;
use crate::config::raw::RawDefer;
use crate::config::{ByteSize, Config, DeferConfig, DeferWhen, Mode};

// === impl Cx: defer ===

impl Cx {
    /// `routes[].defer` at `at`: needs a task store (`has_store`: `store.tasks` or
    /// `store.redis`) and a route in `mode: enforce`.
    pub(super) fn defer(
        &mut self,
        at: &str,
        raw: &RawDefer,
        has_store: bool,
        mode: Option<Mode>,
    ) -> Option<DeferConfig> {
        self.defer_needs(at, has_store, mode);
        let when = self.choice(
            &join(at, "when"),
            raw.when.as_deref(),
            &[
                ("overflow", DeferWhen::Overflow),
                ("always", DeferWhen::Always),
            ],
            DeferWhen::default(),
        );
        let max_body = self.size(
            &join(at, "max_body"),
            raw.max_body.as_ref(),
            DeferConfig::DEFAULT_MAX_BODY,
            (ByteSize(0), DeferConfig::MAX_MAX_BODY),
        );
        let attempts = self.whole(
            &join(at, "attempts"),
            raw.attempts,
            DeferConfig::DEFAULT_ATTEMPTS.get(),
            (1, DeferConfig::MAX_ATTEMPTS),
        );
        let backoff = self.duration_within(
            &join(at, "backoff"),
            raw.backoff.as_deref(),
            DeferConfig::DEFAULT_BACKOFF,
            (DeferConfig::MIN_BACKOFF, DeferConfig::MAX_BACKOFF),
        );
        let ttl = self.duration_within(
            &join(at, "ttl"),
            raw.ttl.as_deref(),
            DeferConfig::DEFAULT_TTL,
            (DeferConfig::MIN_TTL, DeferConfig::MAX_TTL),
        );
        let max_tasks = self.whole(
            &join(at, "max_tasks"),
            raw.max_tasks,
            DeferConfig::DEFAULT_MAX_TASKS,
            (1, Config::MAX_COUNT as u64),
        );
        let backoff_max = self.backoff_max(&join(at, "backoff_max"), raw, backoff);
        Some(DeferConfig {
            when: when?,
            max_body: max_body?,
            attempts: NonZeroU32::new(attempts?)?,
            backoff: backoff?,
            ttl: ttl?,
            max_tasks: max_tasks?,
            backoff_max: backoff_max?,
        })
    }

    /// What `defer` needs of the rest of the file: the tasks live in Redis, and a shadow route
    /// forwards every request, so it has nothing to defer.
    fn defer_needs(&mut self, at: &str, has_store: bool, mode: Option<Mode>) {
        if !has_store {
            self.error(
                at,
                "defer needs store.redis (or store.tasks), which is not configured: deferred requests are kept in Redis",
            );
        }
        if mode == Some(Mode::Shadow) {
            self.error(
                at,
                "defer does not combine with mode: shadow (a shadow route forwards every request); remove defer or use mode: enforce",
            );
        }
    }

    /// `backoff_max` (at `at`): at least `backoff`, the first of the waits it bounds.
    fn backoff_max(
        &mut self,
        at: &str,
        raw: &RawDefer,
        backoff: Option<Duration>,
    ) -> Option<Duration> {
        let backoff_max = self.duration_within(
            at,
            raw.backoff_max.as_deref(),
            DeferConfig::DEFAULT_BACKOFF_MAX,
            (DeferConfig::MIN_BACKOFF, Config::MAX_DURATION),
        );
        if let (Some(backoff), Some(backoff_max)) = (backoff, backoff_max) {
            if backoff_max < backoff {
                self.error(
                    at,
                    format!(
                        "must be at least backoff ({}): it is the longest of the waits that start at backoff",
                        humantime::format_duration(backoff)
                    ),
                );
            }
        }
        backoff_max
    }
}
