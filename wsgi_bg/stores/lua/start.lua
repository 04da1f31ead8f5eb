-- start: a queued job runs (see start() in lib.lua).
-- ARGV[1..6]: see lib.lua; [7...9]: start's a[1...3] (id, pid, started_at).
-- Answers 1: started (or started already by this process); 0: not queued.
return start({unpack(ARGV, 7, 9)})
