-- sweep: jobs whose supervisor or owner is gone end crashed. A running job
-- without its lease, or a queued job whose owner key is gone, becomes a
-- suspect; one still a suspect ARGV[9] seconds later ends crashed.
-- ARGV[1..6]: see lib.lua; [7] error for running jobs JSON, [8] error for
-- queued jobs JSON, [9] seconds a suspect waits.
-- Answers how many jobs it ended.
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
  -- (an attempt of a job marked retry_crashed runs again instead)
  if from == 'running' and retry(id, 'crashed', err, true) then return end
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
