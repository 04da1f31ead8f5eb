-- read: a job's output from an offset.
-- ARGV[1..6]: see lib.lua; [7] id, [8] since (byte offset).
-- Answers read()'s answer (see lib.lua), or false if there is no such job.
if redis.call('EXISTS', k('job', ARGV[7])) == 0 then return false end
return read(ARGV[7], tonumber(ARGV[8]))
