//! Dead tasks, for the operator: listed (`GET /tasks` on the admin listener) and put back in
//! the queue (`POST /tasks/requeue`) once the upstream is fixed. A dead task keeps its request
//! until its `ttl` ends, so it can come back until then; a requeued task starts with no
//! attempts made and keeps its deadline.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value;

use super::accept::{int, text};
use super::task::{DeadResponse, DeadTask};
use super::{scripts, RouteDefer, TaskId, LIST_MAX};
use crate::store::CallError;

/// Ids one requeue script takes: each costs a few short commands.
const REQUEUE_BATCH: usize = 100;

/// Bound on each call of a listing or a requeue (they come from an operator, not a client).
const ADMIN_CALL: Duration = Duration::from_secs(5);

/// Why a requeue could not be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequeueError {
    /// Redis did not answer.
    #[error("Redis did not answer: {0}")]
    Store(#[from] CallError),
}

impl RouteDefer {
    /// The route's dead tasks still within their `ttl`, oldest first, at most `most`.
    ///
    /// # Errors
    /// [`CallError`] when Redis did not answer.
    pub(crate) async fn dead(&self, most: usize) -> Result<Vec<DeadTask>, CallError> {
        let ids = self.dead_ids(0, most.min(LIST_MAX)).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("TIME");
        for id in &ids {
            pipe.cmd("HMGET")
                .arg(self.keys.task(id))
                .arg("status")
                .arg("attempts")
                .arg("code")
                .arg("accepted");
        }
        let key = self.keys.dead.clone();
        let replies: Vec<Value> = self
            .store
            .call(&key, ADMIN_CALL, |conn| async move {
                conn.pipeline(&pipe).await
            })
            .await?;
        let mut replies = replies.into_iter();
        let now_ms = match replies.next() {
            Some(Value::Array(clock)) => {
                let part = |i: usize| clock.get(i).and_then(int).unwrap_or(0);
                part(0) * 1000 + part(1) / 1000
            }
            _ => 0,
        };
        Ok(ids
            .iter()
            .zip(replies)
            .filter_map(|(id, fields)| self.dead_task(id, &fields, now_ms))
            .collect())
    }

    /// One listed task from its `HMGET` reply; `None` unless it is (still) dead.
    fn dead_task(&self, id: &TaskId, fields: &Value, now_ms: i64) -> Option<DeadTask> {
        let Value::Array(fields) = fields else {
            return None;
        };
        let field = |i: usize| fields.get(i).and_then(text);
        (field(0)? == "dead").then_some(())?;
        let accepted = field(3)
            .and_then(|a| a.parse::<i64>().ok())
            .unwrap_or(now_ms);
        Some(DeadTask {
            id: id.to_string(),
            route: self.route.to_string(),
            status: "dead".to_owned(),
            attempts: field(1).and_then(|a| a.parse().ok()).unwrap_or(0),
            response: field(2)
                .and_then(|c| c.parse().ok())
                .map(|status| DeadResponse { status }),
            age_seconds: u64::try_from((now_ms - accepted).max(0) / 1000).unwrap_or(0),
        })
    }

    /// Ids of the dead set whose deadline has not passed, oldest first, from `offset`.
    async fn dead_ids(&self, offset: usize, count: usize) -> Result<Vec<TaskId>, CallError> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut cmd = redis::cmd("ZRANGEBYSCORE");
        cmd.arg(&*self.keys.dead)
            .arg(format!("({now_ms}"))
            .arg("+inf")
            .arg("LIMIT")
            .arg(offset)
            .arg(count);
        let key = self.keys.dead.clone();
        let ids: Vec<String> = self
            .store
            .call(
                &key,
                ADMIN_CALL,
                |conn| async move { conn.query(&cmd).await },
            )
            .await?;
        Ok(ids.iter().filter_map(|id| TaskId::parse(id)).collect())
    }

    /// Puts dead tasks back in the queue: those of `ids`, or every dead task of the route when
    /// `None`. Returns how many went back (a task not dead, past its `ttl` or unknown is left).
    ///
    /// # Errors
    /// [`RequeueError`] when Redis did not answer (some tasks may have gone back already).
    pub(crate) async fn requeue(&self, ids: Option<&[TaskId]>) -> Result<u64, RequeueError> {
        let mut requeued = 0;
        match ids {
            Some(ids) => {
                for batch in ids.chunks(REQUEUE_BATCH) {
                    requeued += self.requeue_batch(batch).await?;
                }
            }
            None => {
                // Those that do not go back (their body expired) stay in the set: skip them.
                let mut skipped = 0;
                loop {
                    let batch = self.dead_ids(skipped, REQUEUE_BATCH).await?;
                    if batch.is_empty() {
                        break;
                    }
                    let back = self.requeue_batch(&batch).await?;
                    requeued += back;
                    skipped += batch.len() - usize::try_from(back).unwrap_or(batch.len());
                }
            }
        }
        self.metrics.requeued.inc_by(requeued);
        Ok(requeued)
    }

    /// [`scripts::REQUEUE_DEAD`] on one batch.
    async fn requeue_batch(&self, ids: &[TaskId]) -> Result<u64, CallError> {
        let mut invocation = scripts::REQUEUE_DEAD.key(&*self.keys.stream);
        invocation.key(&*self.keys.dead).arg(&*self.keys.prefix);
        for id in ids {
            invocation.arg(id.to_string());
        }
        let key = self.keys.stream.clone();
        let back: i64 = self
            .store
            .call(&key, ADMIN_CALL, |conn| async move {
                conn.invoke::<i64>(&invocation).await
            })
            .await?;
        Ok(u64::try_from(back).unwrap_or(0))
    }
}
