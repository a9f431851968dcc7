//! The reader: new entries for idle workers (`XREADGROUP … BLOCK`), on a connection of its own.

use std::sync::Arc;
use std::time::Duration;

use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::Cmd;

use super::{entry_of, Pool, CALL_TIMEOUT, REDIS_PAUSE};
use crate::defer::GROUP;
use crate::shutdown::ShutdownWatch;
use crate::store::{open_dedicated, RedisConn};

/// Longest wait of one `XREADGROUP` for new entries; also how soon the reader sees a stop.
const READ_BLOCK: Duration = Duration::from_secs(1);

/// Reads new entries for idle workers until the pool stops.
pub(super) async fn read(pool: Arc<Pool>) {
    let mut stop = pool.stop.watch();
    let mut conn: Option<RedisConn> = None;
    let mut grouped = false;
    loop {
        // An idle worker first: nothing is read that no worker can take now. One entry per
        // read: a reader holding more idle workers through its blocking wait would keep them
        // from the caretaker's takeovers.
        let permit = tokio::select! {
            permit = pool.workers.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = stop.wait() => return,
        };
        let Some(c) = pool.reading_connection(&mut conn, &mut grouped).await else {
            drop(permit);
            pause(&mut stop, REDIS_PAUSE).await;
            continue;
        };
        let options = StreamReadOptions::default()
            .group(GROUP, &pool.consumer)
            .count(1)
            .block(READ_BLOCK.as_millis() as usize);
        let cmd = Cmd::xread_options(&[&*pool.keys.stream], &[">"], &options);
        let read = c.query::<Option<StreamReadReply>>(&cmd);
        match tokio::time::timeout(READ_BLOCK + CALL_TIMEOUT, read).await {
            Ok(Ok(reply)) => {
                pool.succeeded();
                let first = reply
                    .and_then(|r| r.keys.into_iter().next())
                    .and_then(|k| k.ids.into_iter().next());
                if let Some(entry) = first {
                    pool.dispatch(entry_of(&entry), permit);
                }
            }
            Ok(Err(err)) if err.code() == Some("NOGROUP") => grouped = false,
            Ok(Err(err)) => {
                pool.failed(&err);
                drop(permit);
                pause(&mut stop, REDIS_PAUSE).await;
            }
            Err(_) => {
                pool.failed(&"no answer to XREADGROUP in time");
                // The connection may be stuck: open another.
                conn = None;
                drop(permit);
                pause(&mut stop, REDIS_PAUSE).await;
            }
        }
    }
}

/// Sleeps `d` or until the stop.
pub(super) async fn pause(stop: &mut ShutdownWatch, d: Duration) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = stop.wait() => {}
    }
}

impl Pool {
    /// The reader's own connection (`conn`, opened when `None`), with the consumer group made
    /// (`grouped`); `None` after counting a failure.
    async fn reading_connection(
        &self,
        conn: &mut Option<RedisConn>,
        grouped: &mut bool,
    ) -> Option<RedisConn> {
        let c = match conn {
            Some(c) => c.clone(),
            None => match open_dedicated(&self.link, READ_BLOCK + CALL_TIMEOUT).await {
                Ok(c) => conn.insert(c).clone(),
                Err(err) => {
                    self.failed(&err);
                    return None;
                }
            },
        };
        if !*grouped {
            *grouped = self.create_group(&c).await;
        }
        grouped.then_some(c)
    }

    /// Creates the consumer group (reading from the stream's start, so that tasks accepted
    /// before any deliverer ran are delivered too); true when it exists.
    async fn create_group(&self, conn: &RedisConn) -> bool {
        let cmd = Cmd::xgroup_create_mkstream(&*self.keys.stream, GROUP, "0");
        match tokio::time::timeout(CALL_TIMEOUT, conn.clone().query::<()>(&cmd)).await {
            Ok(Ok(())) => true,
            Ok(Err(err)) if err.code() == Some("BUSYGROUP") => true,
            Ok(Err(err)) => {
                self.failed(&err);
                false
            }
            Err(_) => {
                self.failed(&"no answer to XGROUP CREATE in time");
                false
            }
        }
    }
}
