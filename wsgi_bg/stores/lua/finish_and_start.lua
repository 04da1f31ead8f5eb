-- finish_and_start: a job's end and the next job's start, in one round trip
-- (see finish() and start() in lib.lua).
-- ARGV[1..6]: see lib.lua; [7...19]: finish's a[1...13]; [20...22]: start's
-- a[1...3].
-- Answers {the state stored ('' if the job had ended already: false would end
-- the reply's array), 1 if the next job started else 0}.
local state = finish({unpack(ARGV, 7, 19)})
return {state or '', start({unpack(ARGV, 20, 22)})}
