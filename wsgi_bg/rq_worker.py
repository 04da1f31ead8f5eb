"""A settings module for stock ``rq worker`` processes that run wsgi_bg jobs::

    WSGI_BG_PRELOAD=myapp.jobs rq worker -c wsgi_bg.rq_worker wsgi_bg --url redis://...

A stock ``rq worker`` forks a work horse per job, and the horse imports the
job's function. A worker that never imported wsgi_bg makes every horse
import it afresh (with Werkzeug, redis-py's scripts, the Redis store), and
the job's own module too: about 100-150 ms per job on a 2-CPU machine, far
more than a trivial job. Named with ``-c`` (or ``RQ_CONFIG``), this module
is imported once by the worker itself, before any fork, so each horse
inherits all of it: it imports wsgi_bg's RQ runner, then each module named
in ``WSGI_BG_PRELOAD`` (comma-separated: the app's job modules), and reads
the secret key. It is still the stock command: RQ imports a ``-c`` module
for its settings, and this one sets none.

Preload only modules that are safe to fork: a module that starts threads
or opens connections when imported would hand them, half-usable, to every
horse (the same rule as ``gunicorn --preload``). Already have an RQ
settings module? Add ``import wsgi_bg.rq_worker`` to it.

.. versionadded:: 0.2
"""

from __future__ import annotations

import importlib
import os

from .runners import rq as _rq

# No UPPERCASE names here: RQ reads those as its settings.
for _name in os.environ.get("WSGI_BG_PRELOAD", "").split(","):
    if _name.strip():
        importlib.import_module(_name.strip())

_rq.prepare_worker()
