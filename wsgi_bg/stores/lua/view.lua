-- view: a job's record and its output from an offset, in one read.
-- ARGV[1..6]: see lib.lua; [7] id, [8] since (byte offset).
-- Answers {the record's fields, read()'s answer (see lib.lua)}, or false if
-- there is no such job.
local id = ARGV[7]
local fields = redis.call('HGETALL', k('job', id))
if #fields == 0 then return false end
return {fields, read(id, tonumber(ARGV[8]))}
