"""The Redis store: jobs shared by every server process, kept across restarts.

Use it when the app runs in several processes (``gunicorn -w 4``) or must keep
its jobs' history across restarts::

    app = BackgroundMiddleware(app, store="redis://localhost:6379/0",
                               namespace="shop")   # + WSGI_BG_SECRET_KEY

Key layout, for namespace ``N`` (every key starts with ``N:``, so apps sharing
one Redis never see each other's jobs)::

    N:job:{id}      hash    the record: each field JSON, but state (plain)
    N:out:{id}      string  the output: all of it, or its tail past the limit
    N:head:{id}     string  the head of the output, once past the limit
    N:result:{id}   string  the pickled result, signed (see signing.py)
    N:call:{id}     string  the pickled call (fn, args, kwargs), signed: what
                            an RQ work horse runs (the RQ job holds only the id)
    N:lease:{id}    string  TTL: the supervisor running the job is alive
    N:owner:{o}     string  TTL: server process o, holding queued jobs, is alive
                            (a job queued on RQ has no owner: it waits in RQ)
    N:jobs          zset    every job, by created_at (the list)
    N:state:{s}     zset    the jobs in state s, by created_at (counts, sweeps)
    N:finished      zset    ended jobs, by ended_at (retention by max_jobs)
    N:suspects      hash    job id -> when its lease or owner was first missed

Each state change is one Lua script, so it is atomic whoever runs it. Ended
jobs' keys expire after ``job_ttl`` (Redis expiry) and the same scripts drop
ended jobs past ``max_jobs``. The scripts compute their keys, so Redis Cluster
is not supported (one Redis, or a primary with replicas, is).

Liveness (nothing says "running" for ever): the supervisor of a running job
renews its lease with every relay (several times a second); each server
process that started the engine renews its owner key every 2 s. Every process
sweeps every 5 s: a running job whose lease is gone, or a queued job whose
owner is gone, is marked a suspect, and ends ``crashed`` if it still is at a
sweep 4 s later. So a job whose process was killed ends within
``LEASE_SECONDS`` + 10 s, and a supervisor that was cut off from Redis for a
while has 4 s after Redis returns to renew its lease.

Unreachable Redis: calls time out after ``socket_timeout`` (2 s by default)
and raise :exc:`~wsgi_bg.exceptions.StoreUnavailable`, a ``503`` with
``Retry-After`` for requests. Supervisors keep a job's output meanwhile
(bounded) and deliver it when Redis is back. A hung Redis runs what it was
sent once it resumes: a create carries a deadline on Redis's clock (when its
client gives up; the clocks' offset is read with ``TIME`` at every beat) and
does nothing past it, so a submit answered 503 leaves no job behind.
"""

from __future__ import annotations

import builtins
import functools
import json
import logging
import pickle
import secrets
import threading
import time
from collections.abc import Callable
from multiprocessing.context import BaseContext
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.retry import Retry

from ..exceptions import ResultUnavailable, StoreUnavailable, UnreadableRecord
from ..jobs import JobState
from .memory import dropped_marker, encode_output, tail_cut
from .protocol import SEARCH_SCAN, Page, Record, Store, check_page
from .signing import BadSignature, Signer, resolve_secret_key

logger = logging.getLogger("wsgi_bg")

#: Seconds a running job's lease lasts without renewal.
LEASE_SECONDS = 15.0
#: Seconds a server process's owner key lasts, and how often it is renewed.
OWNER_SECONDS, BEAT_SECONDS = 15.0, 2.0
#: Seconds between two sweeps by one process; a suspect must stay one this long.
SWEEP_SECONDS, SUSPECT_SECONDS = 5.0, 4.0
#: Socket timeouts used unless the client given has its own.
SOCKET_TIMEOUT = 2.0
#: Seconds before a client gives up on a create after which Redis refuses it
#: (at most a quarter of the timeout): time for the answer to travel back.
_ANSWER_MARGIN = 0.25
#: A reading of Redis's clock whose round trip took longer is not trusted.
_CLOCK_ROUND_TRIP = 0.05

_CRASHED_RUNNING = (
    "the process running this job stopped (its server process or pool worker"
    " was killed, or the job's supervisor lost the store for longer than"
    f" {LEASE_SECONDS:g} s): nothing renewed its lease, so it ended crashed"
)
_CRASHED_QUEUED = (
    "the server process that queued this job stopped before it started (killed,"
    " restarted or recycled): a queued job waits in the pool of the server"
    " process that submitted it"
)

# -- Lua ------------------------------------------------------------------------------
# Every script gets ARGV[1..6] = prefix, now, max_output_bytes, max_jobs,
# job_ttl in ms, lease in ms; its own arguments follow from ARGV[7].
_LIB = """
local P = ARGV[1]
local NOW = tonumber(ARGV[2])
local LIMIT = tonumber(ARGV[3])
local MAX_JOBS = tonumber(ARGV[4])
local TTL_MS = tonumber(ARGV[5])
local LEASE_MS = tonumber(ARGV[6])
local STATES = {'queued', 'running', 'succeeded', 'failed', 'cancelled',
                'timed_out', 'crashed'}
local TERMINAL = {succeeded = true, failed = true, cancelled = true,
                  timed_out = true, crashed = true}

local function k(kind, id) return P .. kind .. ':' .. id end

local function move(id, from, to)
  local score = redis.call('ZSCORE', P .. 'jobs', id) or ARGV[2]
  redis.call('ZREM', P .. 'state:' .. from, id)
  redis.call('ZADD', P .. 'state:' .. to, score, id)
end

local function drop(id)
  redis.call('DEL', k('job', id), k('out', id), k('head', id), k('result', id),
             k('lease', id), k('call', id))
  redis.call('ZREM', P .. 'jobs', id)
  redis.call('ZREM', P .. 'finished', id)
  redis.call('HDEL', P .. 'suspects', id)
  for _, s in ipairs(STATES) do redis.call('ZREM', P .. 'state:' .. s, id) end
end

local function prune()
  local cutoff = NOW - TTL_MS / 1000
  local old = redis.call('ZRANGEBYSCORE', P .. 'finished', '-inf',
                         '(' .. string.format('%.6f', cutoff), 'LIMIT', 0, 1000)
  for _, id in ipairs(old) do drop(id) end
  local n = redis.call('ZCARD', P .. 'finished')
  if n > MAX_JOBS then
    for _, id in ipairs(redis.call('ZRANGE', P .. 'finished', 0, n - MAX_JOBS - 1)) do
      drop(id)
    end
  end
end

local function expire(id)
  local ms = math.max(TTL_MS, 1)
  for _, kind in ipairs({'job', 'out', 'head', 'result', 'call'}) do
    redis.call('PEXPIRE', k(kind, id), ms)
  end
end

-- A number field of job id's record; default if it has none (nil: it must
-- have one). A record changed outside wsgi_bg ('abc' as its output_size)
-- fails the script with an error naming the job and the field, which the
-- store raises as UnreadableRecord, instead of Lua's own error.
local function num(id, field, default)
  local v = redis.call('HGET', k('job', id), field)
  local n = tonumber(v)
  if n then return n end
  if not v and default then return default end
  error({err = 'UNREADABLE ' .. id .. ' ' .. field})
end

local function is_cont(s, i)
  local b = string.byte(s, i)
  return b ~= nil and b >= 128 and b < 192
end

-- Drop the start of the tail, at a character boundary, to keep only what
-- reads show: LIMIT bytes with the head. SET stores it in a fresh value of
-- its own size (APPEND's values keep room to grow: up to twice their size).
-- Whether there was anything to drop.
local function trim(id, total, tail_start)
  local key, out = k('job', id), k('out', id)
  local keep = LIMIT - redis.call('STRLEN', k('head', id))
  local rel = total - keep - tail_start
  if rel <= 0 then return false end
  local tail = redis.call('GETRANGE', out, rel, -1)
  local skip = 0
  while skip < #tail and is_cont(tail, skip + 1) do skip = skip + 1 end
  redis.call('SET', out, string.sub(tail, skip + 1))
  redis.call('HSET', key, 'tail_start', tail_start + rel + skip)
  return true
end

-- Output past LIMIT keeps a head and a tail cut at character boundaries; the
-- tail may grow by LIMIT / 4 before it is trimmed (in batches), reads show at
-- most LIMIT bytes in all. The same rules as memory.py's _Output.
local function append(id, data, expected)
  local key, out = k('job', id), k('out', id)
  local size = num(id, 'output_size', 0)
  if expected ~= '' and size > tonumber(expected) then
    data = string.sub(data, size - tonumber(expected) + 1)  -- landed already
  end
  if #data == 0 then return end
  local total = size + #data
  redis.call('APPEND', out, data)
  if redis.call('HGET', key, 'truncated') ~= 'true' then
    if total > LIMIT then
      local full = redis.call('GET', out)
      local cut = math.floor(LIMIT / 2)
      while cut > 0 and is_cont(full, cut + 1) do cut = cut - 1 end
      redis.call('SET', k('head', id), string.sub(full, 1, cut))
      local start = #full - (LIMIT - cut)
      while start < #full and is_cont(full, start + 1) do start = start + 1 end
      redis.call('SET', out, string.sub(full, start + 1))
      redis.call('HSET', key, 'truncated', 'true', 'tail_start', start)
    end
  else
    local tail_start = num(id, 'tail_start')
    local keep = LIMIT - redis.call('STRLEN', k('head', id))
    if total - tail_start > keep + math.floor(LIMIT / 4) then
      trim(id, total, tail_start)
    end
  end
  redis.call('HSET', key, 'output_size', total)
end

-- A job's end: its output shrinks to what reads show, in values of their own
-- size, so that a finished job holds about LIMIT bytes of output.
local function compact(id)
  local key, out = k('job', id), k('out', id)
  if redis.call('HGET', key, 'truncated') == 'true' and trim(
      id, num(id, 'output_size'), num(id, 'tail_start')) then
    return
  end
  local data = redis.call('GET', out)
  if data then redis.call('SET', out, data) end
end

local function ended(id, from, state, ended_at)
  compact(id)
  move(id, from, state)
  redis.call('ZADD', P .. 'finished', ended_at, id)
  redis.call('DEL', k('lease', id))
  redis.call('HDEL', P .. 'suspects', id)
  expire(id)
end

-- {head part, bytes dropped before the tail part (-1: none), tail part, total}
local function read(id, since)
  local key, out = k('job', id), k('out', id)
  local total = num(id, 'output_size', 0)
  if since >= total then return {'', -1, '', total} end
  if redis.call('HGET', key, 'truncated') ~= 'true' then
    return {'', -1, redis.call('GETRANGE', out, since, -1), total}
  end
  local head = redis.call('GET', k('head', id)) or ''
  local tail_start = num(id, 'tail_start')
  local visible = math.max(tail_start, total - (LIMIT - #head))
  local head_part = ''
  if since < #head then head_part = string.sub(head, since + 1) end
  if since < visible then
    return {head_part, visible - #head,
            redis.call('GETRANGE', out, visible - tail_start, -1), total}
  end
  return {head_part, -1, redis.call('GETRANGE', out, since - tail_start, -1), total}
end
"""

# ARGV[7] id, [8] max_queued, [9] created_at, [10] signed call or '',
# [11] id of the job this one runs again or '', [12] deadline on Redis's clock
# or '', [13...] field, value pairs. 1: created; 0: max_queued are waiting;
# -1: the id is another job's; -2: past the deadline, nothing done.
_CREATE = """
if ARGV[12] ~= '' then
  -- Past it, the client has given up (its socket timeout) and told its
  -- caller the job was not created: landing now would leave a job that
  -- nothing runs, holding a max_queued slot.
  local t = redis.call('TIME')
  if tonumber(t[1]) + tonumber(t[2]) / 1000000 > tonumber(ARGV[12]) then
    return -2
  end
end
local id = ARGV[7]
if redis.call('EXISTS', k('job', id)) == 1 then
  -- The same create again (redis-py retries once on a dropped connection,
  -- and the first try may have landed): done already.
  if redis.call('HGET', k('job', id), 'created_at') == ARGV[9] then return 1 end
  return -1
end
prune()
if redis.call('ZCARD', P .. 'state:queued') >= tonumber(ARGV[8]) then return 0 end
local fields = {}
for i = 13, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', k('job', id), 'state', 'queued', 'output_size', '0', unpack(fields))
if ARGV[11] ~= '' and redis.call('EXISTS', k('job', ARGV[11])) == 1 then
  redis.call('HSET', k('job', ARGV[11]), 'rerun_as', '"' .. id .. '"')
end
if ARGV[10] ~= '' then redis.call('SET', k('call', id), ARGV[10]) end
redis.call('ZADD', P .. 'jobs', ARGV[9], id)
redis.call('ZADD', P .. 'state:queued', ARGV[9], id)
return 1
"""

# a[1] id, [2] pid, [3] started_at
_START_FN = """
local function start(a)
  local id = a[1]
  local key = k('job', id)
  local now = redis.call('HMGET', key, 'state', 'pid')
  -- the same process again: a retry of this start, whose answer was lost
  if now[1] == 'running' and now[2] == a[2] then return 1 end
  if now[1] ~= 'queued' then return 0 end
  redis.call('HSET', key, 'state', 'running', 'started_at', a[3], 'pid', a[2])
  move(id, 'queued', 'running')
  redis.call('SET', k('lease', id), '1', 'PX', LEASE_MS)
  return 1
end
"""
# ARGV[7...9]: start's a[1...3]
_START = _START_FN + "return start({unpack(ARGV, 7, 9)})\n"

# ARGV[7] id, [8] text, [9] progress JSON or '', [10] expected offset or ''
_RELAY = """
local id = ARGV[7]
local key = k('job', id)
if redis.call('HGET', key, 'state') ~= 'running' then return {1, '0'} end
append(id, ARGV[8], ARGV[10])
if ARGV[9] ~= '' then redis.call('HSET', key, 'progress', ARGV[9]) end
redis.call('SET', k('lease', id), '1', 'PX', LEASE_MS)
redis.call('HDEL', P .. 'suspects', id)
local f = redis.call('HMGET', key, 'cancel_requested', 'stop_requested', 'cancel_grace')
local stop = 0
if f[1] == 'true' or f[2] == 'true' then stop = 1 end
return {stop, f[3] or 'null'}
"""

# a[1] id, [2] state, [3] error JSON, [4] error if it was cancelled JSON,
# [5] text, [6] progress JSON or '', [7] shown JSON, [8] signed result,
# [9] '1' if there is a result, [10] ended_at, [11] expected offset or ''
_FINISH_FN = """
local function finish(a)
  local id = a[1]
  local key = k('job', id)
  local old = redis.call('HGET', key, 'state')
  if not old or TERMINAL[old] then return false end
  append(id, a[5], a[11])
  if a[6] ~= '' then redis.call('HSET', key, 'progress', a[6]) end
  local state, err, how = a[2], a[3], 'null'
  if state == 'cancelled' then
    if old == 'queued' then how = '"before_start"' else how = '"killed"' end
  elseif redis.call('HGET', key, 'cancel_requested') == 'true' then
    state, err, how = 'cancelled', a[4], '"stopped"'
  end
  local shown = 'null'
  if state == 'succeeded' then
    shown = a[7]
    if a[9] == '1' then redis.call('SET', k('result', id), a[8]) end
  end
  redis.call('HSET', key, 'state', state, 'ended_at', a[10], 'error', err,
             'pid', 'null', 'result', shown, 'cancelled_how', how)
  ended(id, old, state, a[10])
  prune()
  return state
end
"""
# ARGV[7...17]: finish's a[1...11]
_FINISH = _FINISH_FN + "return finish({unpack(ARGV, 7, 17)})\n"
# ARGV[7...17]: finish's a[1...11], [18...20]: start's a[1...3]. The state
# stored ('' if the job had ended: false would end the reply's array) and 1
# if the next job started.
_FINISH_AND_START = _FINISH_FN + _START_FN + """
local state = finish({unpack(ARGV, 7, 17)})
return {state or '', start({unpack(ARGV, 18, 20)})}
"""

# ARGV[7] id, [8] grace or '', [9] '1' for a shutdown, [10] now JSON
_CANCEL = """
local id = ARGV[7]
local key = k('job', id)
local state = redis.call('HGET', key, 'state')
if not state or TERMINAL[state] then return '' end
if state == 'queued' then
  redis.call('HSET', key, 'state', 'cancelled', 'ended_at', ARGV[10],
             'error', '"cancelled before it started"', 'cancel_requested', 'true',
             'cancel_requested_at', ARGV[10], 'cancelled_how', '"before_start"')
  ended(id, 'queued', 'cancelled', ARGV[10])
  return 'cancelled'
end
if ARGV[9] == '1' then
  redis.call('HSET', key, 'stop_requested', 'true')
else
  if redis.call('HGET', key, 'cancel_requested') ~= 'true' then
    redis.call('HSET', key, 'cancel_requested_at', ARGV[10])
  end
  redis.call('HSET', key, 'cancel_requested', 'true')
end
if ARGV[8] ~= '' then
  local old = redis.call('HGET', key, 'cancel_grace')
  if not tonumber(old) or tonumber(ARGV[8]) < tonumber(old) then
    redis.call('HSET', key, 'cancel_grace', ARGV[8])
  end
end
return 'requested'
"""

# ARGV[7] id, [8] since
_VIEW = """
local id = ARGV[7]
local fields = redis.call('HGETALL', k('job', id))
if #fields == 0 then return false end
return {fields, read(id, tonumber(ARGV[8]))}
"""

# ARGV[7] id, [8] since
_READ = """
if redis.call('EXISTS', k('job', ARGV[7])) == 0 then return false end
return read(ARGV[7], tonumber(ARGV[8]))
"""

# ARGV[7] how many (0: all)
_LIST = """
prune()
local ids = redis.call('ZREVRANGE', P .. 'jobs', 0, tonumber(ARGV[7]) - 1)
local records = {}
for _, id in ipairs(ids) do
  local fields = redis.call('HGETALL', k('job', id))
  if #fields > 0 then records[#records + 1] = fields end
end
return records
"""

# ARGV[7] query as it is stored (JSON-escaped, lower case) or '', [8] the
# query as given (an id), [9] offset, [10] limit, [11] how many names a
# search reads at most, [12...] states (none: all). Without a query: ZCARD
# and ZREVRANGE ... LIMIT on the state zsets (merged when several); with one,
# the names of the newest [11] jobs (in those states) are read here, in
# Redis, never sent back, and an id is looked up wherever it is.
# {total, records, 1 if the search left older jobs out}
_PAGE = """
prune()
local q, qid = ARGV[7], ARGV[8]
local offset, limit, scan = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local keys = {}
for i = 12, #ARGV do keys[#keys + 1] = P .. 'state:' .. ARGV[i] end
if #keys == 0 then keys = {P .. 'jobs'} end
local function newer(a, b)
  if a[1] ~= b[1] then return a[1] > b[1] end
  return a[2] > b[2]
end
local found, total, partial = {}, 0, 0
if q == '' then
  for _, key in ipairs(keys) do
    total = total + redis.call('ZCARD', key)
    if limit > 0 then  -- (ZREVRANGE 0 -1 would be everything)
      local got = redis.call('ZREVRANGE', key, #keys == 1 and offset or 0,
                             offset + limit - 1, 'WITHSCORES')
      for i = 1, #got, 2 do found[#found + 1] = {tonumber(got[i + 1]), got[i]} end
    end
  end
  if #keys > 1 then
    table.sort(found, newer)
  else
    offset = 0  -- ZREVRANGE skipped it
  end
else
  local newest = {}
  for _, key in ipairs(keys) do
    if redis.call('ZCARD', key) > scan then partial = 1 end
    local got = redis.call('ZREVRANGE', key, 0, scan - 1, 'WITHSCORES')
    for i = 1, #got, 2 do newest[#newest + 1] = {tonumber(got[i + 1]), got[i]} end
  end
  if #keys > 1 then
    table.sort(newest, newer)
    if #newest > scan then partial = 1 end
  end
  for i = 1, math.min(#newest, scan) do
    local id = newest[i][2]
    local name = redis.call('HGET', k('job', id), 'name')
    if id ~= qid and name and string.find(string.lower(name), q, 1, true) then
      found[#found + 1] = newest[i]
    end
  end
  for _, key in ipairs(keys) do  -- an id, exactly: wherever it is
    local score = redis.call('ZSCORE', key, qid)
    if score then
      found[#found + 1] = {tonumber(score), qid}
      table.sort(found, newer)
      break
    end
  end
  total = #found
end
local records = {}
for i = offset + 1, math.min(offset + limit, #found) do
  local fields = redis.call('HGETALL', k('job', found[i][2]))
  if #fields > 0 then records[#records + 1] = fields end
end
return {total, records, partial}
"""

_COUNTS = """
prune()
local counts = {}
for i, s in ipairs(STATES) do counts[i] = redis.call('ZCARD', P .. 'state:' .. s) end
return counts
"""

# ARGV[7] error for running jobs JSON, [8] error for queued jobs JSON,
# [9] seconds a suspect waits
_SWEEP = """
local wait = tonumber(ARGV[9])
local ended_n = 0
local function suspect(id)
  -- (not a number: changed outside wsgi_bg; missed from now on, as if new)
  local first = tonumber(redis.call('HGET', P .. 'suspects', id))
  if not first then
    redis.call('HSET', P .. 'suspects', id, ARGV[2])
    return false
  end
  return NOW - first >= wait
end
local function crash(id, from, err)
  redis.call('HSET', k('job', id), 'state', 'crashed', 'ended_at', ARGV[2],
             'error', err, 'pid', 'null')
  ended(id, from, 'crashed', ARGV[2])
  ended_n = ended_n + 1
end
for _, id in ipairs(redis.call('ZRANGE', P .. 'state:running', 0, -1)) do
  if redis.call('EXISTS', k('job', id)) == 0 then
    drop(id)
  elseif redis.call('EXISTS', k('lease', id)) == 1 then
    redis.call('HDEL', P .. 'suspects', id)
  elseif suspect(id) then
    crash(id, 'running', ARGV[7])
  end
end
for _, id in ipairs(redis.call('ZRANGE', P .. 'state:queued', 0, -1)) do
  local owner = redis.call('HGET', k('job', id), 'owner')
  if not owner then
    drop(id)
  elseif owner ~= 'null' then
    if redis.call('EXISTS', P .. 'owner:' .. string.sub(owner, 2, -2)) == 1 then
      redis.call('HDEL', P .. 'suspects', id)
    elseif suspect(id) then
      crash(id, 'queued', ARGV[8])
    end
  end
end
return ended_n
"""

_STATES = [s.value for s in JobState]
_RAW_FIELDS = ("state",)
_INTERNAL_FIELDS = ("truncated", "tail_start", "owner")

T = TypeVar("T")


def _reaching(method: Callable[..., T]) -> Callable[..., T]:
    """Turn the errors of an unreachable (or full) Redis into
    StoreUnavailable, and a script's error for a record changed outside
    wsgi_bg into UnreadableRecord."""

    @functools.wraps(method)
    def call(self: RedisStore, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(
                f"the Redis store ({self.where}) cannot be reached: {exc}."
                " Try again shortly."
            ) from exc
        except redis.exceptions.OutOfMemoryError as exc:
            # maxmemory reached with noeviction: writes are refused, reads
            # still work; finished jobs expire or are dropped past max_jobs.
            raise StoreUnavailable(
                f"the Redis store ({self.where}) is full ({exc}): raise its"
                " maxmemory, or lower max_jobs or max_output_bytes. Try again"
                " later."
            ) from exc
        except redis.ResponseError as exc:
            # A script's own error for a record changed outside wsgi_bg
            # (see num() in _LIB): "UNREADABLE <id> <field> script: ...".
            words = str(exc).split()
            if len(words) < 3 or words[0] != "UNREADABLE":
                raise
            raise UnreadableRecord(
                words[1], f"its {words[2]} is not a number") from None

    return call


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _dump_progress(progress: dict[str, Any] | None) -> str:
    if progress is None:
        return ""
    try:
        return _dump(progress)
    except (TypeError, ValueError) as exc:  # e.g. an int too long for JSON
        return _dump({"done": None, "total": None,
                      "message": f"progress could not be stored: {exc}"})


_NUMBER, _INT, _TEXT = (int, float), (int,), (str,)
#: What each field must hold (types, whether null is allowed), for a record
#: changed outside wsgi_bg to be told apart, not taken for a job.
_FIELD_KINDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "id": (_TEXT, False), "name": (_TEXT, False), "created_at": (_NUMBER, False),
    "started_at": (_NUMBER, True), "ended_at": (_NUMBER, True),
    "timeout": (_NUMBER, True), "cancel_grace": (_NUMBER, True),
    "cancel_requested_at": (_NUMBER, True), "output_size": (_INT, False),
    "pid": (_INT, True), "cancel_requested": ((bool,), False),
    "stop_requested": ((bool,), False), "progress": ((dict,), True),
    "error": (_TEXT, True), "result": (_TEXT, True), "url": (_TEXT, True),
    "args": (_TEXT, True), "cancelled_how": (_TEXT, True),
    "rerun_of": (_TEXT, True), "rerun_as": (_TEXT, True),
}
#: Fields every record has had since the first version.
_REQUIRED = ("id", "name", "state", "created_at", "started_at", "ended_at",
             "result", "error", "progress", "timeout", "cancel_requested",
             "cancel_grace", "url", "pid", "output_size")
#: What stands for a field found unreadable in a record listed anyway.
_STAND_INS: dict[str, Any] = {"name": "(unreadable record)", "created_at": 0.0,
                              "output_size": 0, "cancel_requested": False,
                              "state": JobState.CRASHED.value}


def _field_problem(name: str, value: Any) -> str | None:
    if name == "state":
        return None if value in _STATES else f"its state {value!r:.40} is no state"
    kind = _FIELD_KINDS.get(name)
    if kind is None:
        return None
    types, nullable = kind
    if value is None and nullable:
        return None
    if isinstance(value, types) and (bool in types or not isinstance(value, bool)):
        return None
    what = ("a number" if types is _NUMBER else "an integer" if types is _INT
            else "text" if types is _TEXT else types[0].__name__)
    return f"its {name} is {value!r:.40}, not {what}"


def _decode_record(fields: list[bytes], job_id: str | None = None, *,
                   listed: bool = False) -> Record:
    """A record from its hash's fields.

    :param listed: for a list: a record found unreadable is kept, its bad
        fields replaced (see _STAND_INS) and its error saying what is wrong,
        so that one record changed outside wsgi_bg leaves the list readable.
    :raises UnreadableRecord: for a field that holds what wsgi_bg never
        writes there (not ``listed``).
    """
    record: Record = {}
    problems: list[str] = []
    for i in range(0, len(fields), 2):
        name = fields[i].decode("utf-8", "replace")
        if name in _INTERNAL_FIELDS:
            continue
        try:
            raw = fields[i + 1].decode()
            value = raw if name in _RAW_FIELDS else json.loads(raw)
        except ValueError:  # (not UTF-8, not JSON)
            problems.append(f"its {name} is {fields[i + 1]!r:.40}, not JSON")
            continue
        problem = _field_problem(name, value)
        if problem is None:
            record[name] = value
        else:
            problems.append(problem)
    problems += [f"it has no {name}" for name in _REQUIRED if name not in record
                 and not any(p.startswith(f"its {name} ") for p in problems)]
    if not problems:
        return record
    job_id = job_id or record.get("id")
    error = UnreadableRecord(job_id or "?", "; ".join(problems))
    if not listed or not job_id:
        raise error
    return {**dict.fromkeys(_REQUIRED), **_STAND_INS, **record, "id": job_id,
            "error": str(error)}


def _decode_output(parts: list[Any], limit: int) -> tuple[str, int]:
    head, dropped, tail, total = parts
    if dropped < 0:
        return (head + tail).decode("utf-8", "replace"), int(total)
    # The tail was cut at a byte offset: start it at a character boundary.
    start = tail_cut(tail, 0)
    text = (head.decode("utf-8", "replace")
            + dropped_marker(int(dropped) + start, limit)
            + tail[start:].decode("utf-8", "replace"))
    return text, int(total)


class RedisStore:
    """The :class:`~wsgi_bg.stores.Store` protocol on Redis; see the module
    docstring for the key layout. Built by :class:`RedisBackend`."""

    def __init__(
        self, client: redis.Redis, *, namespace: str, signer: Signer,
        max_jobs: int, job_ttl: float, max_output_bytes: int,
        owner: str | None = None, where: str = "redis",
    ) -> None:
        self._r = client
        self.namespace = namespace
        self._prefix = namespace + ":"
        self._signer = signer
        self.max_jobs = max_jobs
        self.job_ttl = job_ttl
        self.max_output_bytes = max_output_bytes
        self.owner = owner
        self.where = where
        self._next_sweep = 0.0
        #: Redis's clock minus this host's, in seconds (None: not read yet).
        self._clock_offset: float | None = None
        script = client.register_script
        self._create = script(_LIB + _CREATE)
        self._start = script(_LIB + _START)
        self._relay = script(_LIB + _RELAY)
        self._finish = script(_LIB + _FINISH)
        self._finish_and_start = script(_LIB + _FINISH_AND_START)
        self._cancel = script(_LIB + _CANCEL)
        self._view = script(_LIB + _VIEW)
        self._read = script(_LIB + _READ)
        self._list = script(_LIB + _LIST)
        self._counts = script(_LIB + _COUNTS)
        self._page = script(_LIB + _PAGE)
        self._sweep = script(_LIB + _SWEEP)

    def _args(self, *extra: Any) -> list[Any]:
        return [self._prefix, repr(time.time()), self.max_output_bytes,
                self.max_jobs, int(self.job_ttl * 1000), int(LEASE_SECONDS * 1000),
                *extra]

    # -- writes ---------------------------------------------------------------
    @_reaching
    def create(
        self, record: Record, max_queued: int, call: bytes | None = None
    ) -> bool:
        fields: list[str] = []
        for name, value in record.items():
            if name not in ("state", "output_size"):
                fields += [name, _dump(value)]
        fields += ["owner", _dump(self.owner), "cancel_requested_at", "null",
                   "cancelled_how", "null", "rerun_as", "null"]
        signed = b"" if call is None else self._signer.sign(
            "call", record["id"], call, namespace=self.namespace)
        deadline = self._deadline()
        created = self._create(args=self._args(
            record["id"], max_queued, repr(float(record["created_at"])), signed,
            record.get("rerun_of") or "", "" if deadline is None else repr(deadline),
            *fields))
        if created == -1:
            raise ValueError(f"job id {record['id']!r} is already stored")
        if created == -2:
            raise StoreUnavailable(
                f"the Redis store ({self.where}) answered too late (hung or"
                " overloaded): the job was not created. Try again shortly.")
        return bool(created)

    def _deadline(self) -> float | None:
        """When, on Redis's clock, a call made now is given up by this client
        (its socket timeout), less a margin for the answer's way back; a
        create run later does nothing (see _CREATE). ``None`` without a
        socket timeout."""
        timeout = float(self._r.connection_pool.connection_kwargs.get(
            "socket_timeout") or 0)
        if not timeout:
            return None
        offset = self._clock_offset
        if offset is None:
            offset = self._measure_clock()
        margin = min(_ANSWER_MARGIN, timeout / 4)
        return time.time() + offset + timeout - margin

    def _measure_clock(self) -> float:
        """Read Redis's clock (``TIME``); return how far it is ahead of this
        host's."""
        sent = time.time()
        self._set_clock(self._r.time(), sent)
        return self._clock_offset or 0.0

    def _set_clock(self, now: tuple[int, int], sent: float) -> None:
        """Keep Redis's clock minus this host's, from ``TIME``'s answer to a
        call sent at ``sent``, so that deadlines hold whatever the hosts'
        clocks say. Its error is half the round trip: one that took long
        (Redis busy) is kept only if there is none yet."""
        received = time.time()
        if received - sent > _CLOCK_ROUND_TRIP and self._clock_offset is not None:
            return
        seconds, micros = now
        self._clock_offset = int(seconds) + int(micros) / 1e6 - (sent + received) / 2

    @_reaching
    def start(self, job_id: str, pid: int) -> bool:
        return bool(self._start(args=self._args(job_id, _dump(pid),
                                                 repr(time.time()))))

    @_reaching
    def relay(
        self, job_id: str, text: str, progress: dict[str, Any] | None,
        offset: int | None = None,
    ) -> tuple[bool, float | None]:
        stop, grace = self._relay(args=self._args(
            job_id, encode_output(text), _dump_progress(progress),
            "" if offset is None else offset))
        return bool(stop), json.loads(grace)

    @_reaching
    def finish(
        self, job_id: str, state: str, result: bytes | None, error: str | None,
        text: str = "", progress: dict[str, Any] | None = None,
        offset: int | None = None, shown: str | None = None,
    ) -> str | None:
        stored = self._finish(args=self._args(*self._finish_args(
            job_id, state, result, error, text, progress, offset, shown)))
        return None if stored is None else stored.decode()

    @_reaching
    def finish_and_start(
        self, job_id: str, state: str, result: bytes | None, error: str | None,
        text: str, progress: dict[str, Any] | None, offset: int | None,
        shown: str | None, next_id: str, pid: int,
    ) -> tuple[str | None, bool]:
        stored, started = self._finish_and_start(args=self._args(
            *self._finish_args(job_id, state, result, error, text, progress,
                               offset, shown),
            next_id, _dump(pid), repr(time.time())))
        return (stored.decode() or None), bool(started)

    def _finish_args(
        self, job_id: str, state: str, result: bytes | None, error: str | None,
        text: str, progress: dict[str, Any] | None, offset: int | None,
        shown: str | None,
    ) -> list[Any]:
        """The arguments of the finish script's ``finish(a)``."""
        if_cancelled = "cancelled while running" + (
            f"; the job then ended {state}:\n{error}" if error else "")
        signed = b"" if result is None else self._signer.sign(
            "result", job_id, result, namespace=self.namespace)
        return [job_id, state, _dump(error), _dump(if_cancelled),
                encode_output(text), _dump_progress(progress),
                _dump(shown), signed, "1" if result is not None else "0",
                repr(time.time()), "" if offset is None else offset]

    @_reaching
    def request_cancel(
        self, job_id: str, grace: float | None, shutdown: bool = False
    ) -> str:
        answer = self._cancel(args=self._args(
            job_id, "" if grace is None else repr(float(grace)),
            "1" if shutdown else "0", repr(time.time())))
        return answer.decode() if isinstance(answer, bytes) else str(answer or "")

    # -- reads ----------------------------------------------------------------
    @_reaching
    def get(self, job_id: str) -> Record | None:
        self._maybe_sweep()
        fields: dict[bytes, bytes] = self._r.hgetall(  # type: ignore[assignment]
            self._prefix + "job:" + job_id)
        if not fields:
            return None
        flat = [part for item in fields.items() for part in item]
        return _decode_record(flat, job_id)

    @_reaching
    def result(self, job_id: str) -> bytes | None:
        blob: bytes | None = self._r.get(  # type: ignore[assignment]
            self._prefix + "result:" + job_id)
        if blob is None:
            return None
        try:
            return self._signer.unsign("result", job_id, blob,
                                       namespace=self.namespace)
        except BadSignature as exc:
            # Never loaded, and nothing written: a reader with another key
            # (a misconfigured process) must not change what others see.
            raise ResultUnavailable(str(exc)) from None

    @_reaching
    def call(self, job_id: str) -> bytes | None:
        blob: bytes | None = self._r.get(  # type: ignore[assignment]
            self._prefix + "call:" + job_id)
        if blob is None:
            return None
        # BadSignature: not loaded
        return self._signer.unsign("call", job_id, blob, namespace=self.namespace)

    @_reaching
    def read_output(self, job_id: str, since: int) -> tuple[str, int] | None:
        parts = self._read(args=self._args(job_id, max(0, since)))
        return None if parts is None else _decode_output(parts, self.max_output_bytes)

    @_reaching
    def view(self, job_id: str, since: int) -> tuple[Record, str, int] | None:
        self._maybe_sweep()
        found = self._view(args=self._args(job_id, max(0, since)))
        if found is None:
            return None
        fields, parts = found
        text, offset = _decode_output(parts, self.max_output_bytes)
        return _decode_record(fields, job_id), text, offset

    @_reaching
    def list(self, limit: int | None = None) -> builtins.list[Record]:
        if limit is not None:
            check_page(0, limit)
        self._maybe_sweep()
        return [_decode_record(f, listed=True)
                for f in self._list(args=self._args(limit or 0))]

    @_reaching
    def page(
        self, states: tuple[str, ...] = (), query: str = "", offset: int = 0,
        limit: int = 50,
    ) -> Page:
        check_page(offset, limit)  # (Lua would get 1e+20 for 10**20)
        for state in states:
            if state not in _STATES:
                raise ValueError(f"states must be job states, got {state!r}")
        self._maybe_sweep()
        # Names are stored as JSON: the query is matched as JSON too.
        stored = _dump(query)[1:-1].lower() if query else ""
        total, found, partial = self._page(args=self._args(
            stored, query, offset, limit, SEARCH_SCAN, *states))
        return Page([_decode_record(f, listed=True) for f in found], int(total),
                    bool(partial))

    @_reaching
    def ids_in_state(self, *states: str) -> builtins.list[str]:
        found: builtins.list[tuple[float, str]] = []
        for state in states:
            members: list[tuple[bytes, float]] = self._r.zrange(  # type: ignore[assignment]
                self._prefix + "state:" + state, 0, -1, withscores=True)
            for job_id, score in members:
                found.append((score, job_id.decode()))
        return [job_id for _, job_id in sorted(found)]

    @_reaching
    def counts(self) -> dict[str, int]:
        self._maybe_sweep()
        return dict(zip(_STATES, self._counts(args=self._args()), strict=True))

    # -- liveness ---------------------------------------------------------------
    @_reaching
    def sweep(self) -> int:
        """End ``crashed`` the jobs whose supervisor or owner is gone (see the
        module docstring); return how many."""
        self._next_sweep = time.monotonic() + SWEEP_SECONDS
        return int(self._sweep(args=self._args(
            _dump(_CRASHED_RUNNING), _dump(_CRASHED_QUEUED), SUSPECT_SECONDS)))

    def _maybe_sweep(self) -> None:
        if time.monotonic() >= self._next_sweep:
            self.sweep()

    @_reaching
    def beat(self) -> None:
        """Say that this store's owner (a server process) is alive, and read
        Redis's clock again (see :meth:`_deadline`), in one round trip."""
        pipe = self._r.pipeline(transaction=False)
        if self.owner is not None:
            pipe.set(self._prefix + "owner:" + self.owner, b"1",
                     px=int(OWNER_SECONDS * 1000))
        pipe.time()
        sent = time.time()
        replies = pipe.execute()
        self._set_clock(replies[-1], sent)

    @_reaching
    def release(self) -> None:
        """This owner stops: its queued jobs are cancelled already."""
        if self.owner is not None:
            self._r.delete(self._prefix + "owner:" + self.owner)


# -- connections ------------------------------------------------------------------
#: Connection settings kept from a client given as an object (the rest of its
#: settings are its library's internals, and need not pickle).
_CLIENT_SETTINGS = (
    "host", "port", "db", "path", "username", "password", "socket_timeout",
    "socket_connect_timeout", "socket_keepalive", "socket_keepalive_options",
    "client_name", "ssl_keyfile", "ssl_certfile", "ssl_cert_reqs",
    "ssl_ca_certs", "ssl_ca_path", "ssl_ca_data", "ssl_check_hostname",
    "ssl_password", "ssl_min_version", "ssl_ciphers",
)


def connection_settings(store: str | redis.Redis) -> dict[str, Any]:
    """Picklable settings for :func:`connect` from a URL or a client.

    :raises ValueError: for a URL redis-py cannot parse.
    """
    if isinstance(store, str):
        try:
            settings: dict[str, Any] = parse_url(store)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ValueError(
                f"store is not a valid Redis URL ({exc}): {store!r}") from None
    else:
        pool = store.connection_pool
        kwargs = pool.connection_kwargs
        settings = {k: kwargs[k] for k in _CLIENT_SETTINGS if k in kwargs}
        settings["connection_class"] = pool.connection_class
    for name in ("socket_timeout", "socket_connect_timeout"):
        if settings.get(name) is None:
            settings[name] = SOCKET_TIMEOUT
    try:
        pickle.dumps(settings)
    except Exception as exc:
        raise TypeError(
            "the redis client's connection settings cannot be sent to worker"
            f" processes ({exc}): pass a redis:// URL as store= instead"
        ) from None
    return settings


def connect(settings: dict[str, Any]) -> redis.Redis:
    """A client of ours: bytes replies, socket timeouts, and one immediate
    retry on a dropped connection (Redis restarted) but none on a timeout (a
    hung Redis must answer 503 quickly, not after several timeouts)."""
    settings = dict(settings)
    cls = settings.pop("connection_class", redis.Connection)
    pool = redis.ConnectionPool(
        connection_class=cls, decode_responses=False,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        **settings,
    )
    return redis.Redis(connection_pool=pool)


def _where(settings: dict[str, Any]) -> str:
    if settings.get("path"):
        return f"unix:{settings['path']} db {settings.get('db', 0)}"
    return f"{settings.get('host', 'localhost')}:{settings.get('port', 6379)}" \
           f" db {settings.get('db', 0)}"


class RedisLink:
    """How pool workers reach the Redis store: settings, not a connection."""

    def __init__(self, settings: dict[str, Any], namespace: str, key: bytes,
                 limits: dict[str, Any]) -> None:
        self.settings = settings
        self.namespace = namespace
        self.secret = key
        self.limits = limits
        self.key = f"redis:{_where(settings)}:{namespace}:{secrets.token_hex(4)}"

    def connect(self) -> Store:
        return RedisStore(connect(self.settings), namespace=self.namespace,
                          signer=Signer(self.secret), where=_where(self.settings),
                          **self.limits)


class RedisBackend:
    """Jobs in Redis: every server process sees them (``shared``)."""

    shared = True

    def __init__(
        self, store: str | redis.Redis, *, namespace: str,
        secret_key: str | bytes | None, max_jobs: int, job_ttl: float,
        max_output_bytes: int,
    ) -> None:
        key = resolve_secret_key(secret_key)
        settings = connection_settings(store)
        self._limits: dict[str, Any] = {"max_jobs": max_jobs, "job_ttl": job_ttl,
                        "max_output_bytes": max_output_bytes}
        self._link = RedisLink(settings, namespace, key, self._limits)
        self._client = connect(settings)  # connects on its first command
        self._reader = self._store_for(owner=None)
        self._store: RedisStore | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _store_for(self, owner: str | None) -> RedisStore:
        link = self._link
        return RedisStore(self._client, namespace=link.namespace,
                          signer=Signer(link.secret), owner=owner,
                          where=_where(link.settings), **self._limits)

    def reader(self) -> Store:
        return self._reader

    def start(self, ctx: BaseContext, *, holds_queued: bool = True) -> Store:
        # Without an owner, queued jobs are never swept as "owner gone".
        store = self._store_for(owner=secrets.token_hex(8) if holds_queued else None)
        store.beat()  # before any job names this owner; unreachable: 503
        self._store = store
        self._thread = threading.Thread(target=self._heartbeat, args=(store,),
                                        name="wsgi_bg-heartbeat", daemon=True)
        self._thread.start()
        return store

    def _heartbeat(self, store: RedisStore) -> None:
        failing = False
        while not self._stop.wait(BEAT_SECONDS):
            try:
                store.beat()
                store._maybe_sweep()
            except StoreUnavailable as exc:
                if not failing:
                    logger.warning("wsgi_bg: %s", exc)
                failing = True
            except Exception:  # keep beating whatever one sweep met
                logger.exception("wsgi_bg: heartbeat failed")
            else:
                if failing:
                    logger.warning("wsgi_bg: the Redis store is reachable again")
                failing = False

    def link(self) -> RedisLink:
        return self._link

    def stop(self) -> Store:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._store is not None:
            try:
                self._store.release()
            except StoreUnavailable:
                pass  # the key expires by itself
        # Handles stay readable: a later read opens a connection again.
        self._client.connection_pool.disconnect()
        return self._reader
