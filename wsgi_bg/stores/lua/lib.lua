-- The prelude of every script: redis.py runs each script as this file
-- followed by the script's own (lib.lua + create.lua, ...), so what several
-- scripts share is written once, here.
--
-- KEYS: none. Every script computes its keys from ARGV[1], the namespace's
-- prefix (the key layout is in redis.py's docstring), so Redis Cluster is not
-- supported.
-- ARGV[1..6], given to every script: prefix ('N:'), now (this host's clock,
-- seconds), max_output_bytes, keep_finished (finished jobs kept), job_ttl in
-- ms, lease in ms. A script's own arguments follow from ARGV[7].
local P = ARGV[1]
local NOW = tonumber(ARGV[2])
local LIMIT = tonumber(ARGV[3])
local KEEP_FINISHED = tonumber(ARGV[4])
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

-- A job ended or is dropped: its unique key (N:unique:{digest}, set by
-- create.lua) is free for the next create, unless another job holds it.
local function let_go(id)
  local unique = redis.call('HGET', k('job', id), 'unique')
  if unique and unique ~= 'null' then
    local key = k('unique', string.sub(unique, 2, -2))  -- (a JSON string)
    if redis.call('GET', key) == id then redis.call('DEL', key) end
  end
end

local function drop(id)
  let_go(id)
  redis.call('DEL', k('job', id), k('out', id), k('head', id), k('result', id),
             k('lease', id), k('call', id))
  redis.call('ZREM', P .. 'jobs', id)
  redis.call('ZREM', P .. 'finished', id)
  redis.call('ZREM', P .. 'retries', id)
  redis.call('HDEL', P .. 'suspects', id)
  for _, s in ipairs(STATES) do redis.call('ZREM', P .. 'state:' .. s, id) end
end

local function prune()
  local cutoff = NOW - TTL_MS / 1000
  local old = redis.call('ZRANGEBYSCORE', P .. 'finished', '-inf',
                         '(' .. string.format('%.6f', cutoff), 'LIMIT', 0, 1000)
  for _, id in ipairs(old) do drop(id) end
  local n = redis.call('ZCARD', P .. 'finished')
  if n > KEEP_FINISHED then
    for _, id in ipairs(redis.call('ZRANGE', P .. 'finished', 0, n - KEEP_FINISHED - 1)) do
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
-- most LIMIT bytes in all. The same rules as stores/output.py and memory.py's _Output.
local function append(id, data, expected)
  local key, out = k('job', id), k('out', id)
  local size = num(id, 'output_size', 0)
  if expected ~= '' then
    -- A writer counts from its attempt's start (see retry()).
    expected = tonumber(expected) + num(id, 'output_base', 0)
    if size > expected then
      data = string.sub(data, size - expected + 1)  -- landed already
    end
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

-- The figures of the job's function (stores.protocol.JobStats, whose
-- observe() this mirrors), counted with its end; in N:stats, a hash whose
-- fields are JSON arrays: ["f", function, state] jobs ended, ["d"|"w",
-- function, bucket index] durations and queue waits per bucket (1-based; the
-- last is +Inf), ["ds"|"ws", function] their sums. N:stats:functions holds
-- the functions counted under their own name (MAX_FUNCTIONS at most).
-- BUCKETS, MAX_FUNCTIONS and MAX_FUNCTION_BYTES come from protocol.py (see
-- redis.py's _lua).
local function bucket(seconds)
  for i, bound in ipairs(BUCKETS) do
    if seconds <= bound then return i end
  end
  return #BUCKETS + 1
end

-- The label job id's figures are counted under.
local function label_of(id)
  -- Its function, else (a record of an earlier version) its name.
  local raw = redis.call('HMGET', k('job', id), 'function', 'name')
  raw = (raw[1] and raw[1] ~= 'null') and raw[1] or raw[2]
  -- (a record changed outside wsgi_bg counts as 'other', and ends all the same)
  local ok, name = pcall(cjson.decode, raw or '')
  local label = 'other'
  if ok and type(name) == 'string' and name ~= 'other' then
    local cut = MAX_FUNCTION_BYTES
    if #name > cut then
      while cut > 0 and is_cont(name, cut + 1) do cut = cut - 1 end
      name = string.sub(name, 1, cut)
    end
    local set = P .. 'stats:functions'
    if redis.call('SISMEMBER', set, name) == 1 or
        redis.call('SCARD', set) < MAX_FUNCTIONS then
      redis.call('SADD', set, name)
      label = name
    end
  end
  return label
end

local function observe(id, state, ended_at)
  local r = redis.call('HMGET', k('job', id), 'created_at', 'started_at')
  local label = label_of(id)
  local stats = P .. 'stats'
  redis.call('HINCRBY', stats, cjson.encode({'f', label, state}), 1)
  local created, started = tonumber(r[1]), tonumber(r[2])
  local now = tonumber(ended_at)
  if created and started and now then
    for kind, seconds in pairs({d = now - started, w = started - created}) do
      seconds = math.max(seconds, 0)
      redis.call('HINCRBY', stats, cjson.encode({kind, label, bucket(seconds)}), 1)
      redis.call('HINCRBYFLOAT', stats, cjson.encode({kind .. 's', label}),
                 string.format('%.17g', seconds))
    end
  end
end

local function ended(id, from, state, ended_at)
  let_go(id)
  observe(id, state, ended_at)
  compact(id)
  move(id, from, state)
  redis.call('ZADD', P .. 'finished', ended_at, id)
  redis.call('ZREM', P .. 'retries', id)
  redis.call('DEL', k('lease', id))
  redis.call('HDEL', P .. 'suspects', id)
  redis.call('HSET', k('job', id), 'notice', 'null')  -- it waits no more
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

-- A queued job runs: a[1] id, [2] pid, [3] started_at. 1 if it started (or
-- this same process had started it: a retry whose answer was lost), else 0.
-- A job starts at most once: one that started before (a record set back to
-- queued by someone who can write to Redis, to replay its call) never does.
local function start(a)
  local id = a[1]
  local key = k('job', id)
  local now = redis.call('HMGET', key, 'state', 'pid', 'started_at', 'retry_at')
  -- the same process again: a retry of this start, whose answer was lost
  if now[1] == 'running' and now[2] == a[2] then return 1 end
  if now[1] ~= 'queued' or (now[3] and now[3] ~= 'null') then return 0 end
  -- (an attempt waiting for its time: it starts once claimed, see claim.lua)
  if now[4] and now[4] ~= 'null' then return 0 end
  redis.call('HSET', key, 'state', 'running', 'started_at', a[3], 'pid', a[2],
             'notice', 'null')
  move(id, 'queued', 'running')
  redis.call('SET', k('lease', id), '1', 'PX', LEASE_MS)
  return 1
end

-- An attempt of the running job id ended in state with error err (JSON):
-- if it may run again (protocol.retry_wait mirrors this), put it back to
-- queued for its next attempt, waiting in N:retries until claimed
-- (claim.lua), and answer true; else false, and nothing changed.
local function retry(id, state, err, retryable)
  local key = k('job', id)
  local r = redis.call('HMGET', key, 'state', 'retries', 'attempt', 'retry_delay',
                       'retry_delay_max', 'retry_crashed', 'cancel_requested',
                       'errors')
  local retries, attempt = tonumber(r[2]) or 0, tonumber(r[3]) or 1
  if r[1] ~= 'running' or attempt > retries or r[7] == 'true' then return false end
  if state == 'failed' then
    if not retryable then return false end
  elseif state == 'crashed' then
    if r[6] ~= 'true' then return false end
  elseif state ~= 'timed_out' then
    return false
  end
  local wait = math.min((tonumber(r[4]) or 0) * 2 ^ math.min(attempt - 1, 60),
                        tonumber(r[5]) or 0)
  local ok, errors = pcall(cjson.decode, r[8] or '[]')
  if not ok or type(errors) ~= 'table' then errors = {} end
  local decoded, message = pcall(cjson.decode, err)
  if not decoded or type(message) ~= 'string' then message = 'ended ' .. state end
  errors[#errors + 1] = {attempt = attempt, state = state, ended_at = NOW,
                         error = message}
  while #errors > MAX_ERRORS_KEPT do table.remove(errors, 1) end
  local divider = '──── attempt ' .. (attempt + 1) .. ' of ' .. (retries + 1)
    .. ' ────\n'
  local last = redis.call('GETRANGE', k('out', id), -1, -1)
  if last ~= '' and last ~= '\n' then divider = '\n' .. divider end
  append(id, divider, '')
  -- the next attempt's writer counts its output from 0: from here
  redis.call('HSET', key, 'output_base', num(id, 'output_size', 0))
  redis.call('HINCRBY', P .. 'stats', cjson.encode({'r', label_of(id)}), 1)
  local at = string.format('%.6f', NOW + wait)
  redis.call('HSET', key, 'state', 'queued', 'attempt', attempt + 1, 'retry_at', at,
             'errors', cjson.encode(errors), 'error', 'null', 'started_at', 'null',
             'pid', 'null', 'progress', 'null', 'owner', 'null')
  move(id, 'running', 'queued')
  redis.call('ZADD', P .. 'retries', at, id)
  redis.call('DEL', k('lease', id))
  redis.call('HDEL', P .. 'suspects', id)
  return true
end

-- A job's end: a[1] id, [2] state, [3] error JSON, [4] error if it was
-- cancelled JSON, [5] text, [6] progress JSON or '', [7] shown JSON,
-- [8] signed result, [9] '1' if there is a result, [10] ended_at,
-- [11] offset the text starts at or '', [12] '1' if the job read its cancel,
-- [13] '1' if a failure may run again (its retry_on).
-- A cancel requested meanwhile makes it cancelled, unless it succeeded without
-- reading it ('completed': it did its work; memory.cancel_outcome mirrors
-- this). An attempt that runs again (retry()) answers 'queued'. The state
-- stored, or false if the job had ended already.
local function finish(a)
  local id = a[1]
  local key = k('job', id)
  local old = redis.call('HGET', key, 'state')
  if not old or TERMINAL[old] then return false end
  append(id, a[5], a[11])
  if a[6] ~= '' then redis.call('HSET', key, 'progress', a[6]) end
  if retry(id, a[2], a[3], a[13] ~= '0') then return 'queued' end
  local state, err, how = a[2], a[3], 'null'
  if state == 'cancelled' then
    if old == 'queued' then how = '"before_start"' else how = '"killed"' end
  elseif redis.call('HGET', key, 'cancel_requested') == 'true' then
    if state == 'succeeded' and a[12] == '0' then
      how = '"completed"'
    else
      state, err, how = 'cancelled', a[4], '"stopped"'
    end
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
