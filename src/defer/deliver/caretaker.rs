//! The caretaker: every [`TICK`], the tasks whose next try is due go back to the stream, the
//! entries of silent deliverers are taken over, and the figures behind the gauges are read;
//! now and then, consumers of instances that are gone are removed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::streams::{StreamAutoClaimOptions, StreamAutoClaimReply, StreamInfoConsumersReply};
use redis::Cmd;
use tokio::time::Instant;

use super::{entry_of, Pool, CONSUMER_IDLE, TICK, VISIBILITY_MARGIN};
use crate::defer::{scripts, GROUP};
use crate::store::RedisConn;

/// Most entries one takeover claims.
const CLAIM_BATCH: usize = 16;

/// Most tasks one tick puts back into the stream.
const PROMOTE_BATCH: usize = 100;

/// Most expired ids one tick forgets per state set (each a short command, however many expired).
const FORGET_BATCH: usize = 1000;

/// How often the caretaker looks for consumers of instances that are gone.
const CONSUMER_SWEEP: Duration = Duration::from_secs(60);

/// Promotes due tries, takes over abandoned entries, reads the figures: every [`TICK`] until
/// the pool stops.
pub(super) async fn tend(pool: Arc<Pool>) {
    let mut stop = pool.stop.watch();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut swept = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.wait() => return,
        }
        let Some(conn) = pool.ops().await else {
            continue;
        };
        pool.promote(&conn).await;
        if pool.settled() {
            pool.take_over(&conn).await;
        }
        pool.count(&conn).await;
        if swept.elapsed() >= CONSUMER_SWEEP {
            swept = Instant::now();
            pool.sweep(&conn).await;
        }
    }
}

impl Pool {
    /// Puts tasks whose next try is due back into the stream.
    async fn promote(&self, conn: &RedisConn) {
        let mut invocation = scripts::PROMOTE.key(&*self.keys.retry);
        invocation.key(&*self.keys.stream).arg(PROMOTE_BATCH);
        self.call(conn.clone().invoke::<i64>(&invocation)).await;
    }

    /// How long an entry must have gone unrefreshed to be taken over.
    pub(super) fn visibility(&self) -> Duration {
        self.target.load().upstream.config().timeout + VISIBILITY_MARGIN
    }

    /// Takes over entries nobody refreshed for the visibility timeout, as many as there are
    /// idle workers — waiting up to a [`TICK`] for the first, in turn with the reader (the
    /// semaphore is fair), so that takeovers are not starved by a stream that is never empty.
    async fn take_over(self: &Arc<Self>, conn: &RedisConn) {
        let Ok(Ok(first)) = tokio::time::timeout(TICK, self.workers.clone().acquire_owned()).await
        else {
            return;
        };
        let mut permits = vec![first];
        while permits.len() < CLAIM_BATCH {
            match self.workers.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        let from = self
            .claim_from
            .lock()
            .map_or_else(|e| e.into_inner().clone(), |c| c.clone());
        let options = StreamAutoClaimOptions::default().count(permits.len());
        let cmd = Cmd::xautoclaim_options(
            &*self.keys.stream,
            GROUP,
            &self.consumer,
            self.visibility().as_millis() as u64,
            from,
            options,
        );
        let Some(reply) = self
            .call(conn.clone().query::<StreamAutoClaimReply>(&cmd))
            .await
        else {
            return;
        };
        // Redis answers `0-0` once the scan has reached the end: the next starts over.
        *self.claim_from.lock().unwrap_or_else(|e| e.into_inner()) = reply.next_stream_id;
        if !reply.claimed.is_empty() {
            tracing::info!(route = %self.route, tasks = reply.claimed.len(), "took over deferred tasks whose deliverer went silent");
        }
        for entry in &reply.claimed {
            match permits.pop() {
                Some(permit) => self.dispatch(entry_of(entry), permit),
                None => break,
            }
        }
    }

    /// Reads the figures behind the gauges.
    async fn count(&self, conn: &RedisConn) {
        let mut invocation = scripts::COUNTS.key(&*self.keys.stream);
        invocation
            .key(&*self.keys.retry)
            .key(&*self.keys.sending)
            .key(&*self.keys.delivered)
            .key(&*self.keys.dead)
            .key(&*self.keys.live)
            .arg(FORGET_BATCH);
        let Some(figures) = self
            .call(conn.clone().invoke::<Vec<i64>>(&invocation))
            .await
        else {
            return;
        };
        let [entries, retrying, sending, delivered, dead, oldest] = match figures[..] {
            [a, b, c, d, e, f] => [a, b, c, d, e, f],
            _ => return,
        };
        let values = [
            (entries + retrying - sending).max(0),
            sending,
            delivered,
            dead,
            oldest,
        ];
        for (gauge, value) in self.counts.iter().zip(values) {
            gauge.store(value, Ordering::Relaxed);
        }
        self.known.store(true, Ordering::Release);
    }

    /// Removes consumers of instances that are gone: nothing pending, idle for an hour.
    async fn sweep(&self, conn: &RedisConn) {
        let cmd = Cmd::xinfo_consumers(&*self.keys.stream, GROUP);
        let Some(reply) = self
            .call(conn.clone().query::<StreamInfoConsumersReply>(&cmd))
            .await
        else {
            return;
        };
        for consumer in reply.consumers {
            if consumer.name != self.consumer
                && consumer.pending == 0
                && consumer.idle as u128 >= CONSUMER_IDLE.as_millis()
            {
                let cmd = Cmd::xgroup_delconsumer(&*self.keys.stream, GROUP, &consumer.name);
                self.call(conn.clone().query::<redis::Value>(&cmd)).await;
            }
        }
    }
}
