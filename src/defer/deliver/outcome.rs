//! What one try at delivering a task comes to: delivered, dead, or another try after a wait.
//!
//! Only a try that reached the upstream and failed is an **attempt** (`defer.attempts` of them
//! make a task dead): a 5xx, 408 or 429, a timeout after the request was sent, a broken
//! exchange. A refused or failed connection reached nothing, and a 503 with `Retry-After` is
//! the upstream asking to wait: the task waits and is tried again, however long the upstream is
//! away, until its `ttl` ends. Every wait doubles from `backoff` up to `backoff_max` with the
//! tries made (a `Retry-After` sets the wait itself, at most `backoff_max`).

use std::time::Duration;

use http::StatusCode;

use crate::config::DeferConfig;

/// How one try went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Try {
    /// The upstream answered with this status, and `Retry-After` if it sent one.
    Answered(StatusCode, Option<Duration>),
    /// Nothing reached the upstream: no endpoint accepted a connection.
    Unreached,
    /// The request was sent and no answer came: `upstream-timeout` or `upstream-unavailable`.
    Unanswered(&'static str),
}

/// What to record of a try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The upstream took it.
    Delivered { attempts: u32, code: u16 },
    /// Its attempts are spent.
    Dead {
        attempts: u32,
        tries: u32,
        code: Option<u16>,
        error: &'static str,
    },
    /// Tried again after `wait` (no later than shortly before its deadline).
    Again {
        attempts: u32,
        tries: u32,
        code: Option<u16>,
        error: &'static str,
        wait: Duration,
    },
}

/// The verdict on `tried` for a task that had made `attempts` attempts and `tries` tries
/// before, under `config`.
pub(super) fn judge(tried: Try, (attempts, tries): (u32, u32), config: &DeferConfig) -> Verdict {
    let tries = tries.saturating_add(1);
    let again = |attempts, code, error| Verdict::Again {
        attempts,
        tries,
        code,
        error,
        wait: backoff(config, tries),
    };
    let attempted = |code: Option<u16>, error| {
        let attempts = attempts.saturating_add(1);
        if attempts >= config.attempts.get() {
            Verdict::Dead {
                attempts,
                tries,
                code,
                error,
            }
        } else {
            again(attempts, code, error)
        }
    };
    match tried {
        Try::Answered(status, _) if is_final(status) => Verdict::Delivered {
            attempts: attempts.saturating_add(1),
            code: status.as_u16(),
        },
        Try::Answered(StatusCode::SERVICE_UNAVAILABLE, Some(retry_after)) => Verdict::Again {
            attempts,
            tries,
            code: Some(503),
            error: "",
            wait: retry_after.min(config.backoff_max),
        },
        Try::Answered(status, _) => attempted(Some(status.as_u16()), ""),
        Try::Unreached => again(attempts, None, "upstream-unavailable"),
        Try::Unanswered(error) => attempted(None, error),
    }
}

/// The wait after the `tries`-th failed try: `backoff` × 2^(tries − 1), at most `backoff_max`.
pub(super) fn backoff(config: &DeferConfig, tries: u32) -> Duration {
    let doublings = tries.saturating_sub(1).min(30);
    config
        .backoff
        .saturating_mul(1 << doublings)
        .min(config.backoff_max)
}

/// True when an answer ends the task: anything but a 5xx, 408 or 429, which say "later".
pub(super) fn is_final(code: StatusCode) -> bool {
    !(code.is_server_error()
        || code == StatusCode::REQUEST_TIMEOUT
        || code == StatusCode::TOO_MANY_REQUESTS)
}

/// How long before a task's deadline its last try is scheduled, at the latest: time for the
/// caretaker to put it back in the stream and a deliverer to start it.
pub(super) fn last_try_margin(config: &DeferConfig) -> Duration {
    (config.ttl / 4).min(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::config::DeferWhen;

    fn config(attempts: u32) -> DeferConfig {
        DeferConfig {
            when: DeferWhen::Always,
            max_body: crate::config::ByteSize(1 << 20),
            attempts: NonZeroU32::new(attempts).unwrap(),
            backoff: Duration::from_secs(1),
            ttl: Duration::from_secs(3600),
            max_tasks: 100,
            backoff_max: Duration::from_secs(300),
        }
    }

    /// Pins: the wait doubles from `backoff` and stops at `backoff_max`.
    #[test]
    fn waits_double_up_to_backoff_max() {
        let c = config(4);
        let s = Duration::from_secs;
        assert_eq!(backoff(&c, 1), s(1));
        assert_eq!(backoff(&c, 2), s(2));
        assert_eq!(backoff(&c, 4), s(8));
        assert_eq!(backoff(&c, 9), s(256));
        assert_eq!(backoff(&c, 10), s(300));
        assert_eq!(backoff(&c, 1000), s(300));
    }

    /// Pins: which answers end a task (2xx, 3xx, 4xx but 408/429) and which are retried.
    #[test]
    fn final_answers() {
        for code in [200, 201, 204, 301, 400, 404, 409, 422] {
            assert!(is_final(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(!is_final(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    /// Pins: a refused connection is never an attempt, however many times it happens (the task
    /// waits, doubling up to `backoff_max`); a 503 with `Retry-After` is not one either and
    /// waits that long; a 500 or a timeout after sending is, and the last one kills the task.
    #[test]
    fn only_tries_that_reached_the_upstream_count() {
        let c = config(2);
        let mut state = (0, 0);
        for n in 1..=50u32 {
            match judge(Try::Unreached, state, &c) {
                Verdict::Again {
                    attempts,
                    tries,
                    wait,
                    error,
                    ..
                } => {
                    assert_eq!((attempts, tries), (0, n));
                    assert_eq!(error, "upstream-unavailable");
                    assert!(wait <= c.backoff_max);
                    state = (attempts, tries);
                }
                other => panic!("try {n}: {other:?}"),
            }
        }
        let pushback = judge(
            Try::Answered(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(Duration::from_secs(7)),
            ),
            state,
            &c,
        );
        assert!(
            matches!(pushback, Verdict::Again { attempts: 0, wait, .. } if wait == Duration::from_secs(7))
        );
        let long = judge(
            Try::Answered(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(Duration::from_secs(3600)),
            ),
            state,
            &c,
        );
        assert!(matches!(long, Verdict::Again { wait, .. } if wait == c.backoff_max));
        let first = judge(
            Try::Answered(StatusCode::INTERNAL_SERVER_ERROR, None),
            state,
            &c,
        );
        assert!(matches!(
            first,
            Verdict::Again {
                attempts: 1,
                code: Some(500),
                ..
            }
        ));
        let last = judge(Try::Unanswered("upstream-timeout"), (1, 51), &c);
        assert!(matches!(
            last,
            Verdict::Dead {
                attempts: 2,
                code: None,
                error: "upstream-timeout",
                ..
            }
        ));
        let busy = judge(
            Try::Answered(StatusCode::SERVICE_UNAVAILABLE, None),
            (0, 0),
            &c,
        );
        assert!(
            matches!(busy, Verdict::Again { attempts: 1, .. }),
            "a plain 503 is an attempt"
        );
        assert_eq!(
            judge(Try::Answered(StatusCode::CREATED, None), (1, 9), &c),
            Verdict::Delivered {
                attempts: 2,
                code: 201
            }
        );
    }
}
