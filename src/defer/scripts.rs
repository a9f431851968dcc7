//! The Lua scripts of deferred delivery. Each runs atomically in Redis (nothing else runs in
//! between) and reads the clock from Redis' own `TIME`: every instance then measures deadlines
//! and retry times against one clock, whatever the skew between hosts. A script that reads
//! `TIME` and then writes needs effects replication, which the scripts ask for (a no-op since
//! Redis 7, where it is the only mode).
//!
//! Every key a script touches is under one route's hash tag, so one cluster node has them all;
//! most are passed in `KEYS`, and the few a script derives from an id (another task's hash) are
//! built from the route's prefix in `ARGV` — the same slot, which Redis allows.
//!
//! **No command runs long.** A task's body is a hash of pieces of at most [`PIECE`] bytes
//! (fields `0`, `1`, …): each piece is written by a command of its own ([`PIECE_GUARD`]) and
//! read by one `HGET`, and no command copies or allocates the whole body (a string grown piece
//! by piece would be reallocated and copied as it grows; one allocated at its full size costs
//! milliseconds of page faults for a large body). Every loop a script runs is bounded by a count
//! its caller passes. Redis then spends well under a millisecond on each of sluice's commands,
//! and a global limit's call never waits behind a task.
//!
//! Redis refuses a script under `maxmemory` only at its first write (effects replication keeps
//! a script atomic past that point), and every script here reads before it writes: a script that
//! Redis refused wrote nothing.
//!
//! Times are milliseconds since the epoch; Lua's numbers are doubles, exact far beyond them.

use std::sync::LazyLock;

use redis::Script;

/// The largest piece of a body one command carries: 64 KiB.
pub(crate) const PIECE: usize = 64 << 10;

/// Every script starts with this: effects replication, `now` in ms from Redis' clock, and
/// `describe`, the reply about a task an idempotency key already names (see [`ACCEPT`]).
macro_rules! script {
    ($body:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                "if redis.replicate_commands then redis.replicate_commands() end\n",
                "local clock = redis.call('TIME')\n",
                "local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)\n",
                r"
local function describe(prefix, id, sha)
  local f = redis.call('HMGET', prefix .. 't:' .. id, 'status', 'attempts', 'code', 'error', 'sha')
  if not f[1] then return nil end
  if sha ~= '' and f[5] and f[5] ~= sha then return {3, now} end
  if f[1] == 'writing' then return {2, now, id} end
  return {1, now, id, f[1], f[2] or '0', f[3] or '', f[4] or ''}
end
",
                $body
            ))
        })
    };
}

/// A new task whose body fits in one piece, written whole. `KEYS`: stream, task, body, live
/// set, idempotency record (the task's own key again when there is none). `ARGV`: id, method,
/// target, headers, client, ttl (ms), route, max tasks, idempotency key (or empty), body SHA-256
/// (hex, or empty), body, key prefix, not after (ms: a script Redis runs later than this — it
/// waited in a queue past the write's timeout — stores nothing, so that a client told "unknown"
/// can learn the answer once that time has passed).
///
/// Replies (the first item says which, the second is always now):
/// - `{0, now}`: stored, `queued`;
/// - `{1, now, id, status, attempts, code, error}`: the key names task `id`, which exists: a
///   duplicate, nothing written;
/// - `{2, now, id}`: the key names task `id`, whose write is still under way (or was abandoned
///   and has not expired yet): nothing written;
/// - `{3, now}`: the key names a task with another body: nothing written;
/// - `{4, now}`: the route has `max tasks` tasks already: nothing written;
/// - `{5, now}`: too late (past `not after`): nothing written.
pub(super) static ACCEPT: LazyLock<Script> = script!(
    r"
if now > tonumber(ARGV[13]) then return {5, now} end
if ARGV[9] ~= '' then
  local known = redis.call('GET', KEYS[5])
  if known then
    local reply = describe(ARGV[12], known, ARGV[10])
    if reply then return reply end
    redis.call('DEL', KEYS[5])
  end
end
if redis.call('ZCOUNT', KEYS[4], now, '+inf') >= tonumber(ARGV[8]) then return {4, now} end
local deadline = now + tonumber(ARGV[6])
redis.call('HSET', KEYS[2], 'route', ARGV[7], 'method', ARGV[2], 'target', ARGV[3],
  'headers', ARGV[4], 'client', ARGV[5], 'ikey', ARGV[9], 'sha', ARGV[10], 'status', 'queued',
  'attempts', 0, 'tries', 0, 'accepted', now, 'deadline', deadline, 'size', string.len(ARGV[11]))
redis.call('PEXPIREAT', KEYS[2], deadline)
if ARGV[11] ~= '' then
  redis.call('HSET', KEYS[3], '0', ARGV[11])
  redis.call('PEXPIREAT', KEYS[3], deadline)
end
if ARGV[9] ~= '' then redis.call('SET', KEYS[5], ARGV[1], 'PXAT', deadline) end
redis.call('ZADD', KEYS[4], deadline, ARGV[1])
redis.call('XADD', KEYS[1], '*', 'id', ARGV[1])
return {0, now}
"
);

/// The start of a task whose body takes several pieces: the task's record in state `writing`,
/// the body's first piece, its idempotency record and its place in the live set, all expiring
/// after `window` unless [`COMMIT`] comes first. `KEYS`: task, body, live set, idempotency
/// record (or the task's key). `ARGV`: id, idempotency key, body SHA-256, max tasks, window
/// (ms), first piece, key prefix, not after (ms). Replies as [`ACCEPT`]'s (`{0, now}`: begun).
pub(super) static BEGIN: LazyLock<Script> = script!(
    r"
if now > tonumber(ARGV[8]) then return {5, now} end
if ARGV[2] ~= '' then
  local known = redis.call('GET', KEYS[4])
  if known then
    local reply = describe(ARGV[7], known, ARGV[3])
    if reply then return reply end
    redis.call('DEL', KEYS[4])
  end
end
if redis.call('ZCOUNT', KEYS[3], now, '+inf') >= tonumber(ARGV[4]) then return {4, now} end
local window = tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'status', 'writing', 'sha', ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
redis.call('HSET', KEYS[2], '0', ARGV[6])
redis.call('PEXPIRE', KEYS[2], window)
if ARGV[2] ~= '' then redis.call('SET', KEYS[4], ARGV[1], 'PX', window) end
redis.call('ZADD', KEYS[3], now + window, ARGV[1])
return {0, now}
"
);

/// One more piece of a body being written (pieces may arrive in any order): written only while
/// the write is still under way (a late piece of an abandoned write must not recreate the body
/// without an expiry). `KEYS`: body, task. `ARGV`: the piece's index, the piece. Returns 1, or
/// -1 when the write was abandoned.
pub(super) static PIECE_GUARD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[2], 'status') ~= 'writing' or redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
",
    )
});

/// The end of a write begun by [`BEGIN`]: the task becomes `queued` with its deadline, its body
/// and idempotency record expire with it, and its stream entry is added — only if the record is
/// still `writing` and every piece is there. `KEYS`: stream, task, body, live set,
/// idempotency record (or the task's key). `ARGV`: id, method, target, headers, client, ttl
/// (ms), route, idempotency key, pieces, not after (ms), body size. Returns `{0, now}` when
/// stored, `{5, now}` when the write had been abandoned (expired, aborted, or too late): nothing
/// stored.
pub(super) static COMMIT: LazyLock<Script> = script!(
    r"
if now > tonumber(ARGV[10]) or redis.call('HGET', KEYS[2], 'status') ~= 'writing'
  or redis.call('HLEN', KEYS[3]) ~= tonumber(ARGV[9]) then
  return {5, now}
end
local deadline = now + tonumber(ARGV[6])
redis.call('HSET', KEYS[2], 'route', ARGV[7], 'method', ARGV[2], 'target', ARGV[3],
  'headers', ARGV[4], 'client', ARGV[5], 'ikey', ARGV[8], 'status', 'queued',
  'attempts', 0, 'tries', 0, 'accepted', now, 'deadline', deadline, 'size', ARGV[11])
redis.call('PEXPIREAT', KEYS[2], deadline)
redis.call('PEXPIREAT', KEYS[3], deadline)
if ARGV[8] ~= '' then redis.call('PEXPIREAT', KEYS[5], deadline) end
redis.call('ZADD', KEYS[4], deadline, ARGV[1])
redis.call('XADD', KEYS[1], '*', 'id', ARGV[1])
return {0, now}
"
);

/// A write begun by [`BEGIN`] is given up: its record, body, place in the live set and
/// idempotency record go, if it is still `writing`. `KEYS`: task, body, live set, idempotency
/// record (or the task's key). `ARGV`: id, whether there is an idempotency record (`1`/`0`).
pub(super) static ABORT: LazyLock<Script> = script!(
    r"
if redis.call('HGET', KEYS[1], 'status') ~= 'writing' then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[2] == '1' and redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
return 1
"
);

/// What an idempotency key names, for a request that may not be deferred at all
/// (`when: overflow`). `KEYS`: idempotency record. `ARGV`: key prefix. Replies `{6, now}` when
/// the key names no task, else as [`ACCEPT`]'s duplicate and pending replies.
pub(super) static NAMED: LazyLock<Script> = script!(
    r"
local known = redis.call('GET', KEYS[1])
if not known then return {6, now} end
return describe(ARGV[1], known, '') or {6, now}
"
);

/// A deliverer has the slots for a task and is about to send it. `KEYS`: task, sending set.
/// `ARGV`: id, visibility (ms). Replies:
/// - `{0, now}`: the task is gone (expired);
/// - `{1, now}`: it has ended already, or is being written (a duplicate entry);
/// - `{2, now, attempts, code}`: its deadline has passed;
/// - `{4, now}`: another deliverer started it less than `visibility` ago: not ours to send;
/// - `{3, now, attempts, tries, deadline, accepted, method, target, headers, ikey, body length}`:
///   marked `delivering`, to send (the body is read piece by piece after).
pub(super) static START: LazyLock<Script> = script!(
    r"
local f = redis.call('HMGET', KEYS[1], 'status', 'attempts', 'deadline', 'accepted',
  'method', 'target', 'headers', 'code', 'tries', 'ikey', 'started', 'size')
if not f[1] then return {0, now} end
if f[1] ~= 'queued' and f[1] ~= 'delivering' then return {1, now} end
if not f[3] or tonumber(f[3]) <= now or not f[5] then return {2, now, f[2] or '0', f[8] or ''} end
if f[1] == 'delivering' and f[11] and tonumber(f[11]) + tonumber(ARGV[2]) > now then
  return {4, now}
end
redis.call('HSET', KEYS[1], 'status', 'delivering', 'started', now)
redis.call('ZADD', KEYS[2], f[3], ARGV[1])
return {3, now, f[2] or '0', f[9] or '0', f[3], f[4] or '0', f[5], f[6] or '/', f[7] or '',
  f[10] or '', f[12] or '0'}
"
);

/// A task has been delivered. `KEYS`: task, body, stream, sending set, delivered set, retry
/// set, live set. `ARGV`: id, entry id, attempts, code. Its state is kept (its request and body
/// dropped) until its deadline; the entry is acknowledged and deleted. Returns `{now, accepted}`
/// (`accepted` 0 when the task is gone).
pub(super) static DELIVERED: LazyLock<Script> = script!(
    r"
local accepted = 0
local d = redis.call('HMGET', KEYS[1], 'deadline', 'accepted')
if d[1] then
  redis.call('HSET', KEYS[1], 'status', 'delivered', 'attempts', ARGV[3], 'code', ARGV[4],
    'error', '', 'ended', now)
  redis.call('HDEL', KEYS[1], 'method', 'target', 'headers', 'client', 'started')
  redis.call('ZADD', KEYS[5], d[1], ARGV[1])
  accepted = tonumber(d[2]) or 0
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
redis.call('XACK', KEYS[3], 'sluice', ARGV[2])
redis.call('XDEL', KEYS[3], ARGV[2])
return {now, accepted}
"
);

/// A task has failed for good, or will be tried again: `KEYS`: task, stream, sending set,
/// retry set, dead set. `ARGV`: id, entry id, attempts, tries, code, error, wait (ms; -1 = dead
/// now), margin (ms), started (ms, as [`START`] replied). Only the delivery [`START`] began
/// then is settled: a repeat of a settle whose reply was lost, or a settle late enough that
/// the task has been started again (taken over), changes nothing and returns `{now, 2}` (a
/// task that is gone is settled as before: its entry goes). The next try comes after `wait`,
/// but no later than `margin` before the task's deadline, so that a task whose upstream comes
/// back before its `ttl` ends gets a try then; when even that is past, the task is `dead` with
/// error `expired`. A dead task keeps its request and body until its deadline (it can be put
/// back: [`REQUEUE_DEAD`]). The entry is acknowledged and deleted. Returns `{now, 1}` after
/// scheduling a try, `{now, 0}` when the task died (or is gone).
pub(super) static SETTLE: LazyLock<Script> = script!(
    r"
local started = redis.call('HGET', KEYS[1], 'started')
if started ~= ARGV[9] and redis.call('EXISTS', KEYS[1]) == 1 then return {now, 2} end
local retried = 0
local deadline = tonumber(redis.call('HGET', KEYS[1], 'deadline'))
if deadline then
  local wait = tonumber(ARGV[7])
  local due = now + wait
  local latest = deadline - tonumber(ARGV[8])
  if due > latest then due = latest end
  if wait >= 0 and due > now then
    redis.call('HSET', KEYS[1], 'status', 'queued', 'attempts', ARGV[3], 'tries', ARGV[4],
      'code', ARGV[5], 'error', ARGV[6])
    redis.call('ZADD', KEYS[4], due, ARGV[1])
    retried = 1
  else
    local err = ARGV[6]
    if wait >= 0 then err = 'expired' end
    redis.call('HSET', KEYS[1], 'status', 'dead', 'attempts', ARGV[3], 'tries', ARGV[4],
      'code', ARGV[5], 'error', err, 'ended', now)
    redis.call('ZADD', KEYS[5], deadline, ARGV[1])
  end
  redis.call('HDEL', KEYS[1], 'started')
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('XACK', KEYS[2], 'sluice', ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
return {now, retried}
"
);

/// A task found past its deadline by [`START`]: `dead`, error `expired`, its attempts and last
/// answer kept. `KEYS`: task, stream, sending set, dead set. `ARGV`: id, entry id.
pub(super) static EXPIRE: LazyLock<Script> = script!(
    r"
local deadline = redis.call('HGET', KEYS[1], 'deadline')
if deadline then
  redis.call('HSET', KEYS[1], 'status', 'dead', 'error', 'expired', 'ended', now)
  redis.call('ZADD', KEYS[4], deadline, ARGV[1])
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('XACK', KEYS[2], 'sluice', ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
return now
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

/// Dead tasks put back in the queue, their attempts and tries reset, their deadline unchanged.
/// `KEYS`: stream, dead set. `ARGV`: key prefix, then the ids (at most a batch). A task that is
/// not dead, is past its deadline or has lost its body is left alone. Returns how many went
/// back.
pub(super) static REQUEUE_DEAD: LazyLock<Script> = script!(
    r"
local requeued = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local task = ARGV[1] .. 't:' .. id
  local f = redis.call('HMGET', task, 'status', 'deadline', 'method')
  if f[1] == 'dead' and f[3] and tonumber(f[2]) > now then
    redis.call('HSET', task, 'status', 'queued', 'attempts', 0, 'tries', 0, 'code', '',
      'error', '')
    redis.call('HDEL', task, 'ended')
    redis.call('ZREM', KEYS[2], id)
    redis.call('XADD', KEYS[1], '*', 'id', id)
    requeued = requeued + 1
  end
end
return requeued
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

/// The figures behind the gauges. `KEYS`: stream, retry, sending, delivered, dead, live.
/// `ARGV`: most ids to forget per set. Forgets (at most that many per set) the ids whose task
/// has expired, then returns `{entries, retrying, sending, delivered, dead, age of the oldest
/// entry (ms)}`.
pub(super) static COUNTS: LazyLock<Script> = script!(
    r"
local most = tonumber(ARGV[1])
for i = 3, 6 do
  local expired = redis.call('ZCOUNT', KEYS[i], '-inf', now)
  if expired > 0 then
    if expired > most then expired = most end
    redis.call('ZREMRANGEBYRANK', KEYS[i], 0, expired - 1)
  end
end
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
