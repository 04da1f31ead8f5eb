"""Preloaded by an RQ worker of the tests (``WSGI_BG_PRELOAD=rqkill``): the
worker SIGKILLs itself where ``RQKILL_AT`` says, after it took a wsgi_bg job
off RQ's queue and before the job started (an OOM kill can land there):

- ``taken``: at once (RQ still says queued; the job is in no list, or in
  the queue's intermediate list);
- ``started``: once RQ records it started by this worker.
"""
from __future__ import annotations

import os
import signal

import wsgi_bg.rq_worker as _worker


def _die(*args: object, **kwargs: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _started_then_die(self, job, queue, execution, settings):  # type: ignore[no-untyped-def]
    self.prepare_job_execution(
        job, remove_from_intermediate_queue=len(self.queues) == 1)
    _die()


_at = os.environ.get("RQKILL_AT")
if _at == "taken":
    _worker.Worker.execute_job = _die  # type: ignore[method-assign,assignment]
elif _at == "started":
    _worker.Worker._perform = _started_then_die  # type: ignore[method-assign]
