-- counts: how many jobs are in each state (drops expired jobs first).
-- ARGV[1..6]: see lib.lua; no more.
-- Answers the counts in the order of STATES (lib.lua).
prune()
local counts = {}
for i, s in ipairs(STATES) do counts[i] = redis.call('ZCARD', P .. 'state:' .. s) end
return counts
