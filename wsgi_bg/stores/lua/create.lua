-- create: queue a new job, unless max_queued jobs are waiting already.
-- ARGV[1..6]: see lib.lua; [7] id, [8] max_queued, [9] created_at, [10] the
-- signed call or '', [11] id of the job this one runs again or '',
-- [12] deadline on Redis's clock or '', [13] the unique key's digest or '',
-- [14...] field, value pairs.
-- Answers 1: created (or created already, by this same create);
-- 0: max_queued are waiting; -1: the id is another job's; -2: past the
-- deadline, nothing done; the id of the queued or running job that holds
-- the unique key: nothing done (whatever max_queued).
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
local unique = ARGV[13]
if unique ~= '' then
  -- (a job dropped, or ended without letting go, holds nothing)
  local held = redis.call('GET', k('unique', unique))
  local state = held and redis.call('HGET', k('job', held), 'state')
  if state and not TERMINAL[state] then return held end
end
if redis.call('ZCARD', P .. 'state:queued') >= tonumber(ARGV[8]) then return 0 end
local fields = {}
for i = 14, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', k('job', id), 'state', 'queued', 'output_size', '0', unpack(fields))
if unique ~= '' then redis.call('SET', k('unique', unique), id) end
if ARGV[11] ~= '' and redis.call('EXISTS', k('job', ARGV[11])) == 1 then
  redis.call('HSET', k('job', ARGV[11]), 'rerun_as', '"' .. id .. '"')
end
if ARGV[10] ~= '' then redis.call('SET', k('call', id), ARGV[10]) end
redis.call('ZADD', P .. 'jobs', ARGV[9], id)
redis.call('ZADD', P .. 'state:queued', ARGV[9], id)
return 1
