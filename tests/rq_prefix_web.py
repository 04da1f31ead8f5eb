"""A web process of test_rq_runner's ``RQ_KEY_PREFIX`` test, run with
``RQ_KEY_PREFIX`` in its environment (rq reads it when it is imported, as in
a deployment): through the public API it submits jobs to RQ workers started
with the same prefix, sweeps, cancels a queued job, then prints what it saw
as JSON.

``python rq_prefix_web.py URL ADMIN_URL NAMESPACE BUSY_QUEUE IDLE_QUEUE
FLAG``: the web process reaches Redis at URL (as an ACL user), what it saw
is read at ADMIN_URL; one worker listens on BUSY_QUEUE, none on IDLE_QUEUE;
FLAG is a path the first job waits for; the namespaces are NAMESPACE-0 and
NAMESPACE-1."""
from __future__ import annotations

import json
import sys

import redis
import rq

import jobfuncs
from wsgi_bg import BackgroundMiddleware, JobState
from wsgi_bg.runners import rq as rq_runner
from wsgi_bg.testing import wait_for


def main(url: str, admin_url: str, namespace: str, busy_queue: str,
         idle_queue: str, flag: str) -> dict[str, object]:
    client, admin = redis.Redis.from_url(url), redis.Redis.from_url(admin_url)
    # (a namespace each: an RQ sweep takes its namespace's queued jobs for
    # its queue's)
    made = [BackgroundMiddleware(jobfuncs.hello, store=url,
                                 namespace=f"{namespace}-{i}",
                                 runner=rq.Queue(queue, connection=client))
            for i, queue in enumerate((busy_queue, idle_queue))]
    busy, idle = made
    seen: dict[str, object] = {}
    try:
        seen["result"] = busy.submit(jobfuncs.add, 2, 3).wait(timeout=20).result
        # A job waiting behind a running one, where a worker listens.
        running = busy.submit(jobfuncs.print_wait_print, "first", flag)
        wait_for(lambda: running.state is JobState.RUNNING, 20,
                 message="the first job to run")
        waiting = busy.submit(jobfuncs.add, 1, 1)
        # Jobs waiting where no worker listens.
        lost = idle.submit(jobfuncs.add, 1, 2)
        cancelled = idle.submit(jobfuncs.add, 2, 2)
        # Two sweeps, at once: any suspect would end at the second.
        rq_runner.QUEUE_GRACE_SECONDS = rq_runner.TAKEN_SECONDS = 0.0
        for mw in made:
            for _ in range(2):
                mw.engine._runner._sweep.sweep()
        seen["waiting"] = waiting.to_dict()
        seen["lost"] = lost.to_dict()
        seen["cancelled"] = cancelled.cancel()
        queue = rq.Queue(idle_queue, connection=admin)
        seen["canceled_registry"] = rq.registry.CanceledJobRegistry(
            queue=queue).get_job_ids()
        seen["idle_queue"] = queue.get_job_ids()
        seen["references"] = {"lost": rq_runner.rq_job_id(lost.id),
                              "cancelled": rq_runner.rq_job_id(cancelled.id)}
        jobfuncs.touch(flag)
        seen["waited"] = waiting.wait(timeout=20).result
        seen["ran"] = running.wait(timeout=20).state.value
        lost.cancel()
        seen["keys"] = sorted(key.decode() for key in admin.keys("*"))
    finally:
        for mw in made:
            mw.shutdown()
        client.close()
        admin.close()
    return seen


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
