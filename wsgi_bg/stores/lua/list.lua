-- list: the newest jobs' records, newest first (drops expired jobs first).
-- ARGV[1..6]: see lib.lua; [7] how many (0: all).
-- Answers a list of records, each its hash's fields.
prune()
local ids = redis.call('ZREVRANGE', P .. 'jobs', 0, tonumber(ARGV[7]) - 1)
local records = {}
for _, id in ipairs(ids) do
  local fields = redis.call('HGETALL', k('job', id))
  if #fields > 0 then records[#records + 1] = fields end
end
return records
