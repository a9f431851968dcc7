//! Dead deferred tasks, for the operator: `GET /tasks?route=…&status=dead` lists them (at most
//! 1000, oldest first), `POST /tasks/requeue` puts them back in the queue once the upstream is
//! fixed (see `crate::defer`). Both answer JSON; an error is `{"error": "…"}` with 400 (a bad
//! query or body), 404 (no deferring route of that name) or 503 (Redis did not answer).

use std::sync::Arc;

use http::StatusCode;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use super::reply;
use crate::body::ProxyBody;
use crate::defer::{RouteDefer, TaskId};
use crate::runtime::Runtime;

/// The largest `POST /tasks/requeue` body read: a thousand ids take under 40 KiB.
const MAX_BODY: usize = 1 << 20;

/// Most ids one requeue names (the listing shows as many).
const MAX_IDS: usize = 10_000;

/// `POST /tasks/requeue`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Requeue {
    /// The deferring route.
    route: String,
    /// Which tasks: `dead` (the only state that can go back). Default `dead`.
    status: Option<String>,
    /// Which of them; all when absent.
    ids: Option<Vec<String>>,
}

/// `GET /tasks`: the dead tasks of `route` (every deferring route when the query names none).
pub(super) async fn list(rt: Arc<Runtime>, query: Option<&str>) -> http::Response<ProxyBody> {
    let mut route = None;
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*name {
            "route" => route = Some(value.into_owned()),
            "status" if value == "dead" => {}
            "status" => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "status: only dead tasks are listed",
                )
            }
            other => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("unknown parameter {other:?}: expected route and status"),
                )
            }
        }
    }
    let routes: Vec<&RouteDefer> = match &route {
        Some(name) => match deferring(&rt, name) {
            Some(defer) => vec![defer],
            None => return no_route(name),
        },
        None => rt.routes.iter().filter_map(|r| r.defer.as_ref()).collect(),
    };
    let mut tasks = Vec::new();
    for defer in routes {
        let left = crate::defer::LIST_MAX.saturating_sub(tasks.len());
        if left == 0 {
            break;
        }
        match defer.dead(left).await {
            Ok(found) => tasks.extend(found),
            Err(err) => return error(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
        }
    }
    tasks.sort_by_key(|t| std::cmp::Reverse(t.age_seconds));
    let body = serde_json::json!({ "tasks": tasks });
    reply(StatusCode::OK, "application/json", body.to_string())
}

/// `POST /tasks/requeue`: puts dead tasks of a route back in the queue.
pub(super) async fn requeue(rt: Arc<Runtime>, body: Incoming) -> http::Response<ProxyBody> {
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "the body must be JSON of at most 1 MiB",
            )
        }
    };
    let asked: Requeue = match serde_json::from_slice(&bytes) {
        Ok(asked) => asked,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"route\": …, \"status\": \"dead\", \"ids\": […]}}: {err}"),
            )
        }
    };
    if asked.status.as_deref().is_some_and(|s| s != "dead") {
        return error(
            StatusCode::BAD_REQUEST,
            "status: only dead tasks can be requeued",
        );
    }
    let ids = match &asked.ids {
        None => None,
        Some(ids) if ids.len() > MAX_IDS => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("at most {MAX_IDS} ids at once"),
            )
        }
        Some(ids) => match ids
            .iter()
            .map(|id| TaskId::parse(id))
            .collect::<Option<Vec<_>>>()
        {
            Some(ids) => Some(ids),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "ids: each must be a task id (32 hex digits)",
                )
            }
        },
    };
    let Some(defer) = deferring(&rt, &asked.route) else {
        return no_route(&asked.route);
    };
    match defer.requeue(ids.as_deref()).await {
        Ok(requeued) => {
            tracing::info!(route = %asked.route, requeued, "dead deferred tasks requeued");
            let body = serde_json::json!({ "requeued": requeued });
            reply(StatusCode::OK, "application/json", body.to_string())
        }
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
    }
}

/// The deferral of route `name` in the running config.
fn deferring<'a>(rt: &'a Runtime, name: &str) -> Option<&'a RouteDefer> {
    rt.routes
        .iter()
        .find(|r| &*r.name == name)
        .and_then(|r| r.defer.as_ref())
}

/// 404 for a name that is no deferring route.
fn no_route(name: &str) -> http::Response<ProxyBody> {
    error(
        StatusCode::NOT_FOUND,
        &format!("no route {name:?} with defer in the running config"),
    )
}

/// `{"error": message}` with `status`.
fn error(status: StatusCode, message: &str) -> http::Response<ProxyBody> {
    let body = serde_json::json!({ "error": message });
    reply(status, "application/json", body.to_string())
}
