"""The ``wsgi-bg`` command (also ``python -m wsgi_bg``).

Use it to try an app under :class:`~wsgi_bg.BackgroundMiddleware` without
writing a server script, or to see the ported web.py demo::

    $ wsgi-bg serve myproject.web:app --port 8000 --authorize local
    $ wsgi-bg demo

``serve`` imports the app, wraps it in the middleware and serves it with
Werkzeug's development server (:func:`werkzeug.serving.run_simple`, threaded).
For production, see docs/deployment.md.

.. versionadded:: 0.1
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from werkzeug.serving import run_simple
from werkzeug.utils import ImportStringError, import_string

from .auth import allow_all, allow_local
from .middleware import BackgroundMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

#: ``--authorize`` choices: who may see the job list (``None``: the default,
#: one job's pages for whoever holds its id, no list).
AUTHORIZE: dict[str, Callable[..., bool] | None] = {
    "default": None,
    "local": allow_local,
    "all": allow_all,
}

DESCRIPTION = """\
Run a WSGI app with wsgi_bg: marked work runs in background processes and
each job gets a live status page under PREFIX (default /_jobs).
"""

EPILOG = """\
examples:
  wsgi-bg demo
      the web.py background example on http://127.0.0.1:8080/
  wsgi-bg serve myproject.web:app
      serve myproject/web.py's "app" on http://127.0.0.1:8080/
  wsgi-bg serve myproject.web:app --port 8000 --workers 4 --authorize local
      four jobs at a time; the job list at /_jobs/ for this machine only
  python -m wsgi_bg serve flask_example:app --reload
      the same command, restarting when a source file changes

The server is Werkzeug's development server; see docs/deployment.md for
gunicorn, waitress and reverse proxies.
"""


class CommandError(Exception):
    """A user error worth one line on stderr and exit status 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080,
                        help="port to listen on (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = argparse.ArgumentParser(
        prog="wsgi-bg", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve", help="serve a WSGI app wrapped in BackgroundMiddleware",
        description="Import a WSGI app, wrap it in BackgroundMiddleware and serve"
        " it with Werkzeug's threaded development server. The current directory"
        " is importable, as with 'python -m'.",
        epilog="example: wsgi-bg serve myproject.web:app --port 8000 --authorize local",
    )
    serve.add_argument("app", metavar="MODULE:APP",
                       help="import path of the WSGI app, e.g. myproject.web:app")
    _add_server_options(serve)
    serve.add_argument("--prefix", default="/_jobs",
                       help="where the status pages are served (default: %(default)s)")
    serve.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                       help="jobs that run at once (default: the number of CPUs)")
    serve.add_argument("--authorize", choices=list(AUTHORIZE), default="default",
                       help="who may see the job list: 'default' nobody (a job's"
                       " page is open to whoever holds its URL), 'local' clients on"
                       " this machine, 'all' everyone (default: %(default)s)")
    serve.add_argument("--store", default=None, metavar="URL",
                       help="keep jobs in Redis, shared by every server process"
                       " and kept across restarts, e.g. redis://localhost:6379/0"
                       " (needs WSGI_BG_SECRET_KEY; default: in memory)")
    serve.add_argument("--namespace", default="wsgi_bg",
                       help="prefix of the Redis keys (default: %(default)s)")
    serve.add_argument("--reload", action="store_true",
                       help="restart when a source file changes (development)")

    demo = commands.add_parser(
        "demo", help="serve the ported web.py background example",
        description="Serve the web.py background example, ported: / is a page"
        " whose button starts a job printing ten timed lines and sends you to"
        " its page, where they appear one by one (a GET starts nothing). The"
        " job list is open to this machine.",
    )
    _add_server_options(demo)
    demo.add_argument("--delay", type=_non_negative_float, default=None,
                      metavar="SECONDS",
                      help="seconds between the ten lines (default: 1)")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wsgi_bg")
    except PackageNotFoundError:
        return "(not installed)"


def load_app(path: str) -> Any:
    """Import the WSGI app named by ``path`` (``package.module:attr``).

    :raises CommandError: with a one-line message if it cannot be imported or
        is not callable. Errors raised by the module's own code (other than a
        failed import) propagate with their traceback: they are bugs to see.
    """
    if not path or path.startswith((":", ".")) or path.endswith((":", ".")):
        raise CommandError(
            f"the app must be given as 'package.module:app', got {path!r}"
        )
    # As 'python -m' and 'flask --app' do: modules in the current directory.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        app = import_string(path)
    except ImportStringError as exc:
        reason = " ".join(str(exc.exception).split())
        hint = ""
        if isinstance(exc.exception, ModuleNotFoundError):
            hint = (" (give the app's import path as 'package.module:app',"
                    " importable from the current directory)")
        raise CommandError(f"cannot import {path!r}: {reason}{hint}") from None
    if isinstance(app, types.ModuleType):
        raise CommandError(
            f"{path!r} is a module, not a WSGI app: name the app in it, e.g."
            f" '{path}:app'"
        )
    if not callable(app):
        raise CommandError(
            f"{path!r} is a {type(app).__name__}, not a WSGI app (not callable)"
        )
    return app


def _display_url(host: str, port: int, path: str) -> str:
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}{path}"


def _on_sigterm(signum: int, frame: Any) -> None:
    # Unwind through run_simple so that the middleware shuts down: running jobs
    # get cancel_grace, then are killed; nothing we started outlives us.
    sys.exit(0)


def _serve(mw: BackgroundMiddleware, host: str, port: int, *, reload: bool,
           banner: str) -> int:
    if os.environ.get("WERKZEUG_RUN_MAIN") != "true":  # once, not per reload
        print(banner, file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        run_simple(host, port, mw, threaded=True, use_reloader=reload)
    finally:
        mw.shutdown()
    return 0


def serve(args: argparse.Namespace) -> int:
    """``wsgi-bg serve``: import, wrap, serve."""
    target = load_app(args.app)
    if isinstance(target, BackgroundMiddleware):
        raise CommandError(
            f"{args.app!r} is already a BackgroundMiddleware: name the app it"
            " wraps, or serve it with any WSGI server"
        )
    app: WSGIApplication = target
    try:
        mw = BackgroundMiddleware(
            app, prefix=args.prefix, max_workers=args.workers,
            authorize=AUTHORIZE[args.authorize], store=args.store,
            namespace=args.namespace,
        )
    except (TypeError, ValueError, ImportError) as exc:
        raise CommandError(str(exc)) from None
    url = _display_url(args.host, args.port, "/")
    banner = f"wsgi-bg: serving {args.app} on {url}; job pages under {mw.prefix}/"
    return _serve(mw, args.host, args.port, reload=args.reload, banner=banner)


def demo(args: argparse.Namespace) -> int:
    """``wsgi-bg demo``: the ported web.py example, job list open to this machine."""
    from . import demo as demo_module

    mw = BackgroundMiddleware(demo_module.make_app(args.delay), authorize=allow_local)
    banner = (
        f"wsgi-bg demo: open {_display_url(args.host, args.port, '/')} and press"
        " 'Start a job' to follow its output live; every job:"
        f" {_display_url(args.host, args.port, mw.prefix + '/')}"
    )
    return _serve(mw, args.host, args.port, reload=False, banner=banner)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status."""
    args = build_parser().parse_args(argv)
    command = serve if args.command == "serve" else demo
    try:
        return command(args)
    except CommandError as exc:
        print(f"wsgi-bg: error: {exc}", file=sys.stderr)
        return 2
