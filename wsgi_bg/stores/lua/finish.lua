-- finish: a job's end (see finish() in lib.lua).
-- ARGV[1..6]: see lib.lua; [7...19]: finish's a[1...13].
-- Answers the state stored, or false if the job had ended already.
return finish({unpack(ARGV, 7, 19)})
