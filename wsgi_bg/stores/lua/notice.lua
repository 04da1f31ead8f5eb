-- notice: what queued jobs say while they wait (the RQ runner's "no RQ
-- worker listens"), or nothing; start and every ending clear it (lib.lua).
-- ARGV[1..6]: see lib.lua; [7] the notice JSON ('null': none), [8...] ids.
-- Answers how many records it changed (jobs no longer queued are left be).
local n = 0
for i = 8, #ARGV do
  local key = k('job', ARGV[i])
  local now = redis.call('HMGET', key, 'state', 'notice')
  if now[1] == 'queued' and now[2] ~= ARGV[7] then
    redis.call('HSET', key, 'notice', ARGV[7])
    n = n + 1
  end
end
return n
