//! One request's context (pingora's per-request `CTX` and its logging phase): what the stages
//! learn of a request — its client, its route, the `RateLimit` fields its limits answered, when
//! it started — travels in one value, and one [`RequestContext::finish`] turns the stages'
//! [`Answer`] into the response and records it: the metrics and the access line, for every
//! request, rejected before routing, lookups of deferred tasks and requests whose client went
//! away included (the latter when the context is dropped unfinished).

use http::{Method, Request, Response};
use tokio::time::Instant;

use super::rate::Fields;
use crate::body::ProxyBody;
use crate::client::Origin;
use crate::metrics::Outcome;
use crate::proxy::connect::Spoken;
use crate::rescue::{self, Rejection};
use crate::router::Target;
use crate::runtime::{Route, Runtime};

/// What the stages made of a request.
pub(super) enum Answer {
    /// The upstream's response.
    Forwarded(Response<ProxyBody>),
    /// A 202: the request is (or was already) a task of its route.
    Deferred(Response<ProxyBody>),
    /// A stage refused it.
    Rejected(Rejection),
    /// A lookup of a deferred task (`/_sluice/tasks/…`): not a request of any route.
    TaskLookup(Response<ProxyBody>),
}

/// One request's context (see the module docs).
pub(super) struct RequestContext<'rt> {
    /// The runtime the request is served by.
    pub(super) rt: &'rt Runtime,
    /// Its client.
    pub(super) origin: Origin,
    /// Its route, once the route stage found one.
    pub(super) route: Option<&'rt Route>,
    /// The `RateLimit` items its limits answered (the rate stage fills them).
    pub(super) fields: Fields,
    /// What the access line needs, copied only when the log is on.
    line: Option<Line>,
    /// A gRPC request: sluice's own problems are answered as gRPC statuses
    /// ([`rescue::grpc`]).
    grpc: bool,
    /// Set by [`RequestContext::finish`]: a context dropped unfinished with a route is a request
    /// whose client went away while queued or while the upstream was answering.
    finished: bool,
}

/// The access line's facts of a request, taken when it arrives.
struct Line {
    method: Method,
    path: String,
    started: Instant,
}

// === impl RequestContext ===

impl<'rt> RequestContext<'rt> {
    /// The context of `req` from `origin`, served by `rt`.
    pub(super) fn new<B>(rt: &'rt Runtime, origin: Origin, req: &Request<B>) -> Self {
        let line = rt.config.server.access_log.then(|| Line {
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            started: Instant::now(),
        });
        RequestContext {
            rt,
            origin,
            route: None,
            fields: Fields::default(),
            line,
            grpc: rescue::grpc::is_grpc(req.headers()),
            finished: false,
        }
    }

    /// The response for `answer`, recorded: `sluice_requests_total` (with the route, or
    /// `route=""` before routing; a task lookup is not a request of any route and is not
    /// counted there), `sluice_responses_total`, and the access line.
    pub(super) fn finish(mut self, answer: Answer) -> Response<ProxyBody> {
        self.finished = true;
        let mut fields = std::mem::take(&mut self.fields);
        let answer_rejection = match &answer {
            Answer::Rejected(rejection) => Some(*rejection),
            _ => None,
        };
        let (res, outcome) = match (answer, self.route) {
            (Answer::Forwarded(mut res), Some(route)) => {
                fields.charge(route, res.headers_mut());
                (fields.decorate(res, route), Some(Outcome::Forwarded))
            }
            // A 202 carries the route's `RateLimit` fields like any answer of the route.
            (Answer::Deferred(res), Some(route)) => {
                (fields.decorate(res, route), Some(Outcome::Deferred))
            }
            (Answer::Rejected(rejection), Some(route)) => {
                tracing::debug!(route = %route.name, client = %self.origin.peer, reason = rejection.reason(), "rejected");
                let res = route.problems.respond(rejection);
                // A 429 carries its own fields: only the limit that rejected, with `r=0`.
                let res = match rejection {
                    Rejection::RateLimited { .. } => res,
                    _ => fields.decorate(res, route),
                };
                (res, Some(rejection.outcome()))
            }
            (Answer::Rejected(rejection), None) => {
                (rescue::unrouted(rejection), Some(rejection.outcome()))
            }
            (Answer::TaskLookup(res), _) => (res, None),
            // A forwarded or deferred request always has a route.
            (Answer::Forwarded(res) | Answer::Deferred(res), None) => (res, None),
        };
        // Counted and logged with the problem's HTTP status, whatever the client is answered.
        let status = res.status().as_u16();
        let res = match answer_rejection {
            Some(rejection) if self.grpc => rescue::grpc::answer(res, &rejection),
            _ => res,
        };
        match (self.route, outcome) {
            (Some(route), Some(outcome)) => {
                route.metrics.outcome(outcome, false);
                if let Some(Rejection::RateLimited { limit, .. }) = answer_rejection {
                    if let Some(l) = route.limits.get(limit) {
                        l.rejected.inc();
                    }
                }
                route.metrics.response(status);
            }
            (None, Some(outcome)) => self.rt.metrics.unrouted(outcome),
            (_, None) => {}
        }
        let spoken = res.extensions().get::<Spoken>().copied();
        self.log(
            status,
            outcome.map_or("task_lookup", Outcome::as_str),
            spoken,
        );
        res
    }

    /// The routing facts of a request refused before routing, for its debug line.
    pub(super) fn refused_before_routing<B>(&self, req: &Request<B>, rejection: Rejection) {
        tracing::debug!(client = %self.origin.peer, host = ?Target::of(req).host, path = req.uri().path(), reason = rejection.reason(), "rejected");
    }

    /// One line per request (`server.access_log`), at info level on target `sluice::access`:
    /// the duration in ms with three decimals; `upstream_protocol` is `http1` or `http2` for a
    /// forwarded request, empty otherwise.
    fn log(&self, status: u16, outcome: &str, spoken: Option<Spoken>) {
        let Some(line) = &self.line else {
            return;
        };
        let route = self.route.map_or("", |r| &*r.name);
        let ms = line.started.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            target: "sluice::access",
            route,
            client = %self.origin.peer,
            method = %line.method,
            path = line.path,
            status,
            outcome,
            duration_ms = format_args!("{ms:.3}"),
            upstream_protocol = spoken.map_or("", Spoken::as_str),
        );
    }
}

impl Drop for RequestContext<'_> {
    fn drop(&mut self) {
        if let (false, Some(route)) = (self.finished, self.route) {
            tracing::debug!(route = %route.name, reason = "client-closed", "client went away before the response");
            route.metrics.outcome(Outcome::ClientClosed, false);
        }
    }
}
