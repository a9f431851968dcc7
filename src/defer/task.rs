//! What a task is made of: its id, the request as stored in Redis, and its state as the status
//! endpoint shows it.

use std::fmt::{self, Write as _};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request};

use crate::client::Origin;
use crate::proxy::forward;

/// `Idempotency-Key`: the client's, or the task's id, on every delivery of a task.
pub(crate) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The longest `Idempotency-Key` a client may send (the contract's 255 characters).
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// A client's `Idempotency-Key`: 1 to 255 visible ASCII characters. Per route, it names at
/// most one task for the task's `ttl`: a repeat is answered with that task, never stored again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IdempotencyKey(String);

/// Why a request's `Idempotency-Key` cannot be used (400 `bad-request`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BadIdempotencyKey {
    /// Sent on more than one line: which one would name the task?
    Repeated,
    /// Empty, longer than 255 characters, or not visible ASCII.
    Malformed,
}

/// A task's id: 128 random bits, written as 32 lowercase hex digits. Only the client that got the
/// 202 knows it: guessing one among the tasks kept is hopeless.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TaskId([u8; 16]);

/// A deferred request, as written to Redis: what its delivery needs to be the same request.
#[derive(Debug)]
pub(crate) struct StoredRequest {
    /// The method.
    pub(crate) method: Method,
    /// Path and query, as the client sent them.
    pub(crate) target: String,
    /// The headers as forwarding sends them (hop-by-hop removed, `X-Forwarded-*` set), minus
    /// the ones the delivery sets itself (`Content-Length`, `Expect`, `Idempotency-Key`), one
    /// `name:value` per line (see [`encode_headers`]).
    pub(crate) headers: Vec<u8>,
    /// The whole body.
    pub(crate) body: Bytes,
    /// The client's address, kept for inspection.
    pub(crate) client: String,
    /// The client's `Idempotency-Key`, if it sent one: delivered unchanged.
    pub(crate) key: Option<IdempotencyKey>,
}

/// A task's state, as `GET /_sluice/tasks/<id>` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskStatus {
    /// The task.
    pub(crate) id: TaskId,
    /// The route that deferred it.
    pub(crate) route: String,
    /// `queued`, `delivering`, `delivered` or `dead`.
    pub(crate) status: String,
    /// Deliveries tried so far (waiting for a slot is not one).
    pub(crate) attempts: u32,
    /// The status of the upstream's last answer, if the last attempt got one.
    pub(crate) code: Option<u16>,
    /// Why the last attempt got no answer (`upstream-unavailable`, `upstream-timeout`), or why
    /// the task died without one (`expired`).
    pub(crate) error: Option<String>,
}

/// A request the route deferred.
#[derive(Debug)]
pub(crate) enum Deferred {
    /// Stored now as this task.
    New(TaskId),
    /// Its `Idempotency-Key` names this task, stored before: answered with it, nothing stored.
    Duplicate(TaskStatus),
}

/// Why a request the route defers was not answered 202.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not stored, for certain: 503 `store-unavailable`.
    NotStored,
    /// Maybe stored as this task: 503 `store-unavailable` naming it. Also a repeat of a key
    /// whose first write's outcome is still unknown.
    Unknown(TaskId),
    /// The route has `max_tasks` tasks: 503 `queue-full`.
    Full,
    /// The key names a task with another body: 422 `idempotency-key-reused`.
    KeyReused,
}

/// A dead task as `GET /tasks` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct DeadTask {
    /// Its id.
    pub(crate) id: String,
    /// Its route.
    pub(crate) route: String,
    /// `dead`.
    pub(crate) status: String,
    /// Deliveries that reached the upstream.
    pub(crate) attempts: u32,
    /// The last answer's status, if the last attempt got one.
    pub(crate) response: Option<DeadResponse>,
    /// Seconds since it was accepted.
    pub(crate) age_seconds: u64,
}

/// `{"status": …}` of a task's last answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) struct DeadResponse {
    /// The upstream's status.
    pub(crate) status: u16,
}

/// The figures behind `sluice_deferred_tasks` and `sluice_deferred_oldest_age_seconds`, as the
/// caretaker last read them from Redis: the whole fleet's, the same on every instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Waiting: in the stream (not being sent) or waiting for a retry.
    pub(crate) queued: i64,
    /// Being sent now.
    pub(crate) delivering: i64,
    /// Ended delivered, kept until their deadline.
    pub(crate) delivered: i64,
    /// Ended dead, kept until their deadline.
    pub(crate) dead: i64,
    /// Age of the oldest entry of the stream, ms.
    pub(crate) oldest_ms: i64,
}

// === impl TaskId ===

impl TaskId {
    /// A fresh id from the OS's random source; `None` if it has none to give. (Only tasks
    /// written to Redis need one.)
    #[cfg(feature = "redis")]
    pub(crate) fn random() -> Option<TaskId> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).ok()?;
        Some(TaskId(bytes))
    }

    /// Parses 32 hex digits (either case).
    pub(crate) fn parse(text: &str) -> Option<TaskId> {
        let text = text.as_bytes();
        if text.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        }
        Some(TaskId(bytes))
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({self})")
    }
}

/// The value of one hex digit.
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

// === impl IdempotencyKey ===

impl IdempotencyKey {
    /// The key `headers` carry: `Ok(None)` without one.
    ///
    /// # Errors
    /// [`BadIdempotencyKey`] when it is repeated, empty, too long or not visible ASCII.
    pub(crate) fn of(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, BadIdempotencyKey> {
        let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(BadIdempotencyKey::Repeated);
        }
        let bytes = value.as_bytes();
        if bytes.is_empty()
            || bytes.len() > MAX_IDEMPOTENCY_KEY
            || !bytes.iter().all(u8::is_ascii_graphic)
        {
            return Err(BadIdempotencyKey::Malformed);
        }
        // Visible ASCII: valid UTF-8.
        Ok(std::str::from_utf8(bytes)
            .ok()
            .map(|text| IdempotencyKey(text.to_owned())))
    }

    /// The key as the client sent it.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

// === impl StoredRequest ===

impl StoredRequest {
    /// The request of `parts` from `origin` with `body`, rewritten as forwarding would rewrite
    /// it (`crate::proxy::forward`; `trusted`: the peer is a trusted proxy): the delivery is then
    /// the request the upstream would have got at once.
    pub(crate) fn new(
        parts: Parts,
        origin: Origin,
        trusted: bool,
        body: Bytes,
        key: Option<IdempotencyKey>,
    ) -> StoredRequest {
        let mut req = Request::from_parts(parts, ());
        forward::request(&mut req, origin, trusted);
        let (parts, ()) = req.into_parts();
        let target = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        StoredRequest {
            method: parts.method,
            target,
            headers: encode_headers(&parts.headers),
            body,
            client: origin.peer.to_string(),
            key,
        }
    }
}

/// The headers a delivery sets itself, whatever the client sent: the body's length (the body is
/// whole), `Expect` (nothing waits for a `100 Continue`), and the key.
fn set_by_delivery(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH || name == header::EXPECT || name == IDEMPOTENCY_KEY
}

/// `name:value\n` per field, in order (repeated names repeated). Unambiguous: a name holds no
/// `:`, a value no line break (`HeaderValue` forbids both).
pub(crate) fn encode_headers(headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.len() * 32);
    for (name, value) in headers {
        if set_by_delivery(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out
}

/// The fields of [`encode_headers`]' text; a line that is not a field (which sluice never
/// writes) is skipped.
pub(crate) fn decode_headers(text: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in text.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            if !set_by_delivery(&name) {
                headers.append(name, value);
            }
        }
    }
    headers
}

// === impl TaskStatus ===

impl TaskStatus {
    /// The state from the hash fields `status`, `attempts`, `code`, `error` (in that order);
    /// `None` when there is no status (no such task). A task still being written is `writing`:
    /// its outcome is not known yet.
    pub(crate) fn from_fields(
        id: TaskId,
        route: &str,
        fields: Vec<Option<String>>,
    ) -> Option<TaskStatus> {
        let mut fields = fields.into_iter();
        let status = fields.next().flatten()?;
        let attempts = fields.next().flatten().and_then(|a| a.parse().ok());
        let code = fields.next().flatten().and_then(|c| c.parse().ok());
        let error = fields.next().flatten().filter(|e| !e.is_empty());
        Some(TaskStatus {
            id,
            route: route.to_owned(),
            status,
            attempts: attempts.unwrap_or(0),
            code,
            error,
        })
    }

    /// The JSON `GET /_sluice/tasks/<id>` answers: `id`, `route`, `status`, `attempts`,
    /// `response` (`{"status": …}` or `null`), and `error` when the last attempt got no answer.
    pub(crate) fn to_json(&self) -> String {
        let mut body = serde_json::json!({
            "id": self.id.to_string(),
            "route": self.route,
            "status": self.status,
            "attempts": self.attempts,
            "response": self.code.map(|code| serde_json::json!({ "status": code })),
        });
        if let (Some(error), Some(map)) = (&self.error, body.as_object_mut()) {
            map.insert("error".to_owned(), serde_json::Value::from(error.as_str()));
        }
        body.to_string()
    }
}

/// `{"id":"<id>","status":"queued"}`: the body of the 202.
pub(crate) fn accepted_json(id: &TaskId) -> String {
    let mut out = String::with_capacity(64);
    let _ = write!(out, "{{\"id\":\"{id}\",\"status\":\"queued\"}}");
    out
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::*;

    /// Pins: ids print as 32 lowercase hex digits and parse back (either case); anything else
    /// is not an id; two fresh ids differ.
    #[test]
    fn ids_are_32_hex_digits() {
        let id = TaskId::random().expect("the OS has randomness");
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(TaskId::parse(&text), Some(id));
        assert_eq!(TaskId::parse(&text.to_uppercase()), Some(id));
        assert_ne!(TaskId::random(), Some(id));
        for bad in [
            "",
            "abc",
            &text[..31],
            &format!("{text}0"),
            &text.replace(&text[..1], "g"),
        ] {
            assert_eq!(TaskId::parse(bad), None, "{bad:?}");
        }
    }

    /// Pins: headers survive the round trip through Redis in order, repeated names included,
    /// non-UTF-8 bytes too; the ones a delivery sets itself are dropped.
    #[test]
    fn headers_round_trip() {
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("two: with colon"));
        headers.append("x-bin", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        headers.append("content-length", HeaderValue::from_static("5"));
        headers.append("idempotency-key", HeaderValue::from_static("client's"));
        let back = decode_headers(&encode_headers(&headers));
        let a: Vec<_> = back.get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "two: with colon"]);
        assert_eq!(back["x-bin"].as_bytes(), b"caf\xe9");
        assert!(!back.contains_key("content-length"));
        assert!(!back.contains_key("idempotency-key"));
        assert_eq!(back.len(), 3);
    }

    /// Pins: the status JSON has the contract's members, `response` null until an answer, and
    /// `error` only when the last attempt got no answer.
    #[test]
    fn status_json_members() {
        let id = TaskId([7; 16]);
        let fields = |s: &[Option<&str>]| s.iter().map(|f| f.map(str::to_owned)).collect();
        let queued = TaskStatus::from_fields(
            id,
            "hooks",
            fields(&[Some("queued"), Some("0"), None, None]),
        )
        .unwrap();
        let json: serde_json::Value = serde_json::from_str(&queued.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": id.to_string(), "route": "hooks", "status": "queued",
                "attempts": 0, "response": null})
        );
        let failed = TaskStatus::from_fields(
            id,
            "hooks",
            fields(&[
                Some("queued"),
                Some("1"),
                Some(""),
                Some("upstream-timeout"),
            ]),
        )
        .unwrap();
        let json: serde_json::Value = serde_json::from_str(&failed.to_json()).unwrap();
        assert_eq!(json["error"], "upstream-timeout");
        assert_eq!(json["response"], serde_json::Value::Null);
        let done = TaskStatus::from_fields(
            id,
            "hooks",
            fields(&[Some("delivered"), Some("2"), Some("201"), Some("")]),
        )
        .unwrap();
        let json: serde_json::Value = serde_json::from_str(&done.to_json()).unwrap();
        assert_eq!(json["response"]["status"], 201);
        assert!(json.get("error").is_none());
        assert_eq!(
            TaskStatus::from_fields(id, "hooks", fields(&[None, None, None, None])),
            None
        );
        let accepted: serde_json::Value = serde_json::from_str(&accepted_json(&id)).unwrap();
        assert_eq!(
            accepted,
            serde_json::json!({"id": id.to_string(), "status": "queued"})
        );
    }
}
