-- page: one page of the list, filtered by state and searched by name or id.
-- ARGV[1..6]: see lib.lua; [7] the query as it is stored (JSON-escaped,
-- lower case) or '', [8] the query as given (an id), [9] offset, [10] limit,
-- [11] how many names a search reads at most, [12...] states (none: all).
-- Without a query: ZCARD and ZREVRANGE ... LIMIT on the state zsets (merged
-- when several); with one, the names of the newest [11] jobs (in those
-- states) are read here, in Redis, never sent back, and an id is looked up
-- wherever it is.
-- Answers {total, records (each its hash's fields), 1 if the search left
-- older jobs out else 0}.
prune()
local q, qid = ARGV[7], ARGV[8]
local offset, limit, scan = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local keys = {}
for i = 12, #ARGV do keys[#keys + 1] = P .. 'state:' .. ARGV[i] end
if #keys == 0 then keys = {P .. 'jobs'} end
local function newer(a, b)
  if a[1] ~= b[1] then return a[1] > b[1] end
  return a[2] > b[2]
end
local found, total, partial = {}, 0, 0
if q == '' then
  for _, key in ipairs(keys) do
    total = total + redis.call('ZCARD', key)
    if limit > 0 then  -- (ZREVRANGE 0 -1 would be everything)
      local got = redis.call('ZREVRANGE', key, #keys == 1 and offset or 0,
                             offset + limit - 1, 'WITHSCORES')
      for i = 1, #got, 2 do found[#found + 1] = {tonumber(got[i + 1]), got[i]} end
    end
  end
  if #keys > 1 then
    table.sort(found, newer)
  else
    offset = 0  -- ZREVRANGE skipped it
  end
else
  local newest = {}
  for _, key in ipairs(keys) do
    if redis.call('ZCARD', key) > scan then partial = 1 end
    local got = redis.call('ZREVRANGE', key, 0, scan - 1, 'WITHSCORES')
    for i = 1, #got, 2 do newest[#newest + 1] = {tonumber(got[i + 1]), got[i]} end
  end
  if #keys > 1 then
    table.sort(newest, newer)
    if #newest > scan then partial = 1 end
  end
  for i = 1, math.min(#newest, scan) do
    local id = newest[i][2]
    local name = redis.call('HGET', k('job', id), 'name')
    if id ~= qid and name and string.find(string.lower(name), q, 1, true) then
      found[#found + 1] = newest[i]
    end
  end
  for _, key in ipairs(keys) do  -- an id, exactly: wherever it is
    local score = redis.call('ZSCORE', key, qid)
    if score then
      found[#found + 1] = {tonumber(score), qid}
      table.sort(found, newer)
      break
    end
  end
  total = #found
end
local records = {}
for i = offset + 1, math.min(offset + limit, #found) do
  local fields = redis.call('HGETALL', k('job', found[i][2]))
  if #fields > 0 then records[#records + 1] = fields end
end
return {total, records, partial}
