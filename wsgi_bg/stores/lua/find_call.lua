-- find_call: the job an RQ job names without its id (see runners/rq.py: the
-- SHA-1 of the id, and when the job was created) and its signed call, in
-- one round trip.
-- ARGV[1..6]: see lib.lua; [7] created_at (its score in N:jobs), [8] the job
-- id's SHA-1, hex.
-- Answers {id, the signed call or false}, or false if no such job is stored.
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'jobs', ARGV[7], ARGV[7])) do
  if redis.sha1hex(id) == ARGV[8] then
    return {id, redis.call('GET', k('call', id))}
  end
end
return false
