//! The Lua scripts of deferred delivery. Each runs atomically in Redis (nothing else runs in
//! between), takes every key it touches in `KEYS` (all under one route's hash tag, so one
//! cluster node has them all) and reads the clock from Redis' own `TIME`: every instance then
//! measures deadlines and retry times against one clock, whatever the skew between hosts. A
//! script that reads `TIME` and then writes needs effects replication, which the scripts ask for
//! (a no-op since Redis 7, where it is the only mode).
//!
//! Times are milliseconds since the epoch; Lua's numbers are doubles, exact far beyond them.

use std::sync::LazyLock;

use redis::Script;

/// Every script starts with this: effects replication, and `now` in ms from Redis' clock.
macro_rules! script {
    ($body:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                "if redis.replicate_commands then redis.replicate_commands() end\n",
                "local clock = redis.call('TIME')\n",
                "local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)\n",
                $body
            ))
        })
    };
}

/// A new task. `KEYS`: stream, task. `ARGV`: id, method, target, headers, body, client,
/// ttl (ms), route. Writes the task (state `queued`, expiring at now + ttl) and its stream
/// entry, trimming entries older than ttl. Returns now.
pub(super) static ACCEPT: LazyLock<Script> = script!(
    r"
local ttl = tonumber(ARGV[7])
redis.call('HSET', KEYS[2], 'route', ARGV[8], 'method', ARGV[2], 'target', ARGV[3],
  'headers', ARGV[4], 'body', ARGV[5], 'client', ARGV[6], 'status', 'queued',
  'attempts', 0, 'accepted', now, 'deadline', now + ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
local oldest = now - ttl
if oldest < 0 then oldest = 0 end
redis.call('XADD', KEYS[1], 'MINID', '~', oldest, '*', 'id', ARGV[1])
return now
"
);

/// A deliverer has the slots for a task and is about to send it. `KEYS`: task, sending set.
/// `ARGV`: id. Returns `{0, now}` when the task is gone (expired), `{1, now}` when it has ended
/// already (a duplicate entry after a crash), `{2, now, attempts, code}` when its deadline has
/// passed (with the attempts made and the last answer's status, to keep), else marks
/// it `delivering` and returns `{3, now, attempts, deadline, accepted, method, target, headers,
/// body}`.
pub(super) static START: LazyLock<Script> = script!(
    r"
local f = redis.call('HMGET', KEYS[1], 'status', 'attempts', 'deadline', 'accepted',
  'method', 'target', 'headers', 'body', 'code')
if not f[1] then return {0, now} end
if f[1] ~= 'queued' and f[1] ~= 'delivering' then return {1, now} end
if not f[3] or tonumber(f[3]) <= now or not f[5] then return {2, now, f[2] or '0', f[9] or ''} end
redis.call('HSET', KEYS[1], 'status', 'delivering')
redis.call('ZADD', KEYS[2], f[3], ARGV[1])
return {3, now, f[2], f[3], f[4] or '0', f[5], f[6] or '/', f[7] or '', f[8] or ''}
"
);

/// A task has ended. `KEYS`: task, stream, sending set, the set of its end (`delivered` or
/// `dead`), retry set. `ARGV`: id, entry id, status, attempts, code, error, keep (ms; 0 = until
/// the deadline). Keeps the task's state (and drops its request) until the deadline, or for
/// `keep` when that is sooner; acknowledges and deletes the entry. Returns `{now, accepted}`
/// (`accepted` 0 when the task is gone).
pub(super) static FINISH: LazyLock<Script> = script!(
    r"
local accepted = 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'status', ARGV[3], 'attempts', ARGV[4], 'code', ARGV[5],
    'error', ARGV[6], 'ended', now)
  redis.call('HDEL', KEYS[1], 'method', 'target', 'headers', 'body', 'client')
  local d = redis.call('HMGET', KEYS[1], 'deadline', 'accepted')
  if d[1] then
    local expires = tonumber(d[1])
    local keep = tonumber(ARGV[7])
    if keep > 0 and now + keep < expires then
      expires = now + keep
      redis.call('PEXPIREAT', KEYS[1], expires)
    end
    redis.call('ZADD', KEYS[4], expires, ARGV[1])
  end
  accepted = tonumber(d[2]) or 0
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('XACK', KEYS[2], 'sluice', ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
return {now, accepted}
"
);

/// An attempt failed and may be retried. `KEYS`: task, stream, sending set, retry set, dead
/// set. `ARGV`: id, entry id, attempts, code, error, wait (ms). When the retry would come after
/// the task's deadline the task is `dead` instead. Acknowledges and deletes the entry. Returns
/// `{now, 1}` after scheduling the retry, `{now, 0}` when the task died (or is gone).
pub(super) static RETRY: LazyLock<Script> = script!(
    r"
local retried = 0
local deadline = redis.call('HGET', KEYS[1], 'deadline')
if deadline then
  local due = now + tonumber(ARGV[6])
  if due < tonumber(deadline) then
    redis.call('HSET', KEYS[1], 'status', 'queued', 'attempts', ARGV[3], 'code', ARGV[4],
      'error', ARGV[5])
    redis.call('ZADD', KEYS[4], due, ARGV[1])
    retried = 1
  else
    redis.call('HSET', KEYS[1], 'status', 'dead', 'attempts', ARGV[3], 'code', ARGV[4],
      'error', ARGV[5], 'ended', now)
    redis.call('HDEL', KEYS[1], 'method', 'target', 'headers', 'body', 'client')
    redis.call('ZADD', KEYS[5], deadline, ARGV[1])
  end
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('XACK', KEYS[2], 'sluice', ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
return {now, retried}
"
);

/// A deliverer stops with a task it has not sent: the task goes back to the end of the stream
/// for another. `KEYS`: stream. `ARGV`: id, entry id.
pub(super) static REQUEUE: LazyLock<Script> = script!(
    r"
redis.call('XADD', KEYS[1], '*', 'id', ARGV[1])
redis.call('XACK', KEYS[1], 'sluice', ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return now
"
);

/// A deliverer still holds an entry: resets its idle time, so that no other deliverer takes it
/// over — unless another has already (then it is left alone, and 0 returned). `KEYS`: stream.
/// `ARGV`: consumer, entry id.
pub(super) static HEARTBEAT: LazyLock<Script> = script!(
    r"
local p = redis.call('XPENDING', KEYS[1], 'sluice', ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[1] then return 0 end
redis.call('XCLAIM', KEYS[1], 'sluice', ARGV[1], 0, ARGV[2], 'JUSTID')
return 1
"
);

/// Tasks whose retry is due go back to the stream. `KEYS`: retry set, stream. `ARGV`: most to
/// move. Returns how many moved.
pub(super) static PROMOTE: LazyLock<Script> = script!(
    r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'id', id)
  redis.call('ZREM', KEYS[1], id)
end
return #due
"
);

/// The figures behind the gauges. `KEYS`: stream, retry, sending, delivered, dead. Forgets the
/// ids in the state sets whose task has expired, then returns `{entries, retrying, sending,
/// delivered, dead, age of the oldest entry (ms)}`.
pub(super) static COUNTS: LazyLock<Script> = script!(
    r"
for i = 3, 5 do redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now) end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local oldest = 0
if #first > 0 then
  local ms = tonumber(string.match(first[1][1], '^(%d+)'))
  if ms and ms < now then oldest = now - ms end
end
return {redis.call('XLEN', KEYS[1]), redis.call('ZCARD', KEYS[2]), redis.call('ZCARD', KEYS[3]),
  redis.call('ZCARD', KEYS[4]), redis.call('ZCARD', KEYS[5]), oldest}
"
);
