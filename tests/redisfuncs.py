"""Jobs and an app for the Redis store's tests (imported by workers and by
gunicorn's workers, so at module level)."""
import os
import time
from urllib.parse import parse_qs

from wsgi_bg import BackgroundMiddleware, allow_all, background


@background
def ticker(flag, interval=0.05):
    """Print ``tick N`` every ``interval`` s until ``flag`` exists (60 s at most)."""
    deadline = time.monotonic() + 60
    n = 0
    while not os.path.exists(flag) and time.monotonic() < deadline:
        print(f"tick {n}")
        n += 1
        time.sleep(interval)
    return n


class Planted:
    """Unpickling this runs code: what an attacker would plant in Redis."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def site(environ, start_response):
    if environ["PATH_INFO"] == "/start":
        flag = parse_qs(environ["QUERY_STRING"])["flag"][0]
        job = ticker(flag)
        start_response("303 See Other", [("Location", job.url), ("X-Job-Id", job.id)])
        return [b""]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"plain page"]


def with_pid(app):
    """Say which server process answered, status pages included."""

    def serve(environ, start_response):
        def start(status, headers, exc_info=None):
            return start_response(status, [*headers, ("X-Pid", str(os.getpid()))],
                                  exc_info)

        return app(environ, start)

    return serve


def make_app():
    mw = BackgroundMiddleware(
        site, store=os.environ["WSGI_BG_TEST_STORE"],
        namespace=os.environ["WSGI_BG_TEST_NAMESPACE"], authorize=allow_all,
        max_workers=1, cancel_grace=1.0,
    )
    return with_pid(mw)


if os.environ.get("WSGI_BG_TEST_STORE"):
    app = make_app()
