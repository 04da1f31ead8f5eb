-- claim: take the retries that are due (see RedisStore.claim_retries): each
-- is taken once, whoever asks (ZREM under the script's atomicity).
-- ARGV[1..6]: see lib.lua; [7] the most to take, [8] the owner JSON to give
-- them ('null': none, they wait in RQ).
-- Answers {the ids taken, the score of the next waiting one or ''}.
local due = redis.call('ZRANGEBYSCORE', P .. 'retries', '-inf', ARGV[2], 'LIMIT', 0,
                       tonumber(ARGV[7]))
local taken = {}
for _, id in ipairs(due) do
  redis.call('ZREM', P .. 'retries', id)
  local key = k('job', id)
  if redis.call('HGET', key, 'state') == 'queued' then
    redis.call('HSET', key, 'retry_at', 'null', 'owner', ARGV[8])
    redis.call('HDEL', P .. 'suspects', id)
    taken[#taken + 1] = id
  end
end
local first = redis.call('ZRANGE', P .. 'retries', 0, 0, 'WITHSCORES')
return {taken, first[2] or ''}
