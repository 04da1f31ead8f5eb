-- cancel: a queued job ends cancelled at once; a running one is asked to
-- stop (its supervisor reads the flag at its next relay).
-- ARGV[1..6]: see lib.lua; [7] id, [8] grace in seconds or '' (the shortest
-- asked for is kept), [9] '1' for a shutdown (stop_requested, not a cancel),
-- [10] now JSON.
-- Answers 'cancelled' (it was queued), 'requested' (it is running), or ''
-- (no such job, or it had ended).
local id = ARGV[7]
local key = k('job', id)
local state = redis.call('HGET', key, 'state')
if not state or TERMINAL[state] then return '' end
-- a shutdown leaves a retry waiting be: it is no process's (see claim.lua)
if ARGV[9] == '1' and redis.call('ZSCORE', P .. 'retries', id) then return '' end
if state == 'queued' then
  local error = '"cancelled before it started"'
  local r = redis.call('HMGET', key, 'attempt', 'retries')
  local attempt = tonumber(r[1]) or 1
  if attempt > 1 then  -- (memory.cancelled_waiting writes the same)
    error = cjson.encode('cancelled while waiting for attempt ' .. attempt .. ' of '
                         .. ((tonumber(r[2]) or 0) + 1))
  end
  redis.call('HSET', key, 'state', 'cancelled', 'ended_at', ARGV[10],
             'error', error, 'retry_at', 'null', 'cancel_requested', 'true',
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
