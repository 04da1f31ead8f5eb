-- relay: a running job's output and progress; renews its lease.
-- ARGV[1..6]: see lib.lua; [7] id, [8] text, [9] progress JSON or '',
-- [10] offset the text starts at or '' (text that landed already is skipped).
-- Answers {1 if the job must stop (cancel or shutdown requested), its
-- cancel_grace JSON or 'null'}; {1, '0'} if the job is not running.
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
