"""wsgi_bg.testing: the pytest plugin, job_context, start_job, wait_for_job;
tracebacks from the job's own code; the show_args option."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap

import flask
import pytest
import webtest

import helpers
import testingfuncs
from wsgi_bg import (
    BackgroundMiddleware,
    JobState,
    background,
    backgrounder,
    current_job,
)
from wsgi_bg.engine import OPTIONS_ATTR
from wsgi_bg.testing import (
    MiddlewareFactory,
    RecordedJob,
    job_context,
    serving,
    start_job,
    wait_for,
    wait_for_job,
)

pytest_plugins = ["pytester"]

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


@pytest.fixture
def mw(wsgi_bg_middleware):
    """One middleware with the default store: what is tested here does not
    depend on the store (the conftest's ``mw`` runs with each)."""
    return wsgi_bg_middleware(testingfuncs.echo_view)


def test_plugin_is_registered_by_its_entry_point(request):
    plugin = request.config.pluginmanager.get_plugin("wsgi_bg")
    assert plugin is not None and plugin.__name__ == "wsgi_bg.testing"


#: What a pytest run that never uses wsgi_bg's fixtures must not import just
#: because the plugin is installed (each cost every such run 110-124 ms).
HEAVY_MODULES = ["werkzeug", "multiprocessing", "concurrent.futures", "redis", "rq",
                 "psutil", "wsgi_bg.middleware", "wsgi_bg.engine", "wsgi_bg.marks",
                 "wsgi_bg.jobs", "wsgi_bg.exceptions", "wsgi_bg.stores",
                 "wsgi_bg.runners", "wsgi_bg.status", "wsgi_bg.capture"]


def test_loading_the_plugin_imports_nothing_heavy(pytester):
    # A fresh pytest process, as in another project's run: the plugin is
    # loaded through its entry point, its fixture never requested.
    pytester.makepyfile(test_modules=textwrap.dedent(f"""
        import sys

        HEAVY = {HEAVY_MODULES!r}

        def test_modules(request):
            assert request.config.pluginmanager.get_plugin("wsgi_bg") is not None
            loaded = sorted(name for name in sys.modules for heavy in HEAVY
                            if name == heavy or name.startswith(heavy + "."))
            assert loaded == []
    """))
    pytester.makeini("[pytest]\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(passed=1)


# -- show_args -----------------------------------------------------------------
def test_show_args_is_stored_with_the_options():
    assert getattr(testingfuncs.secret, OPTIONS_ATTR) == {
        "timeout": 30, "show_args": False}
    assert getattr(testingfuncs.count_to, OPTIONS_ATTR) == {
        "timeout": None, "show_args": True}
    assert getattr(testingfuncs.report_app, OPTIONS_ATTR) == {
        "timeout": 30, "show_args": True}
    hidden = backgrounder("testingfuncs:echo_view", show_args=False)
    assert getattr(hidden, OPTIONS_ATTR) == {"timeout": None, "show_args": False}


@pytest.mark.parametrize("mark", [
    pytest.param(background, id="background"),
    pytest.param(backgrounder, id="backgrounder"),
])
def test_show_args_must_be_a_bool(mark):
    with pytest.raises(TypeError, match=r"show_args must be True or False, got 'no'"):
        mark(show_args="no")


def test_a_job_with_show_args_false_still_gets_its_arguments(mw):
    job = wait_for_job(mw.submit(testingfuncs.secret, "abcd"))
    assert job.result == 4


# -- tracebacks ------------------------------------------------------------------
def _frames(error: str) -> list[str]:
    return [line.strip() for line in error.splitlines()
            if line.strip().startswith("File ")]


@pytest.mark.parametrize("fn", [
    pytest.param(testingfuncs.marked_crash, id="background"),
    pytest.param(testingfuncs.crash_here, id="plain"),
])
def test_traceback_starts_at_the_jobs_own_code(mw, fn):
    job = wait_for_job(mw.submit(fn, 7), state="failed")
    frames = _frames(job.error)
    assert frames, job.error
    assert "testingfuncs.py" in frames[0], job.error
    assert not any(f"{os.sep}wsgi_bg{os.sep}" in frame for frame in frames), job.error
    assert job.error.rstrip().endswith("ValueError: bad value 7")


def test_a_marked_function_pickles_as_the_plain_function():
    plain = pickle.loads(pickle.dumps(testingfuncs.count_to))
    assert plain is testingfuncs.count_to.__wrapped__


def test_a_marked_function_under_another_name_says_so(mw, monkeypatch):
    marked = testingfuncs.marked_crash
    monkeypatch.setattr(testingfuncs, "marked_crash", testingfuncs.pid)
    with pytest.raises(TypeError, match=r"cannot send testingfuncs.marked_crash to a"
                       r" worker process: .*is not this @background function"):
        mw.submit(marked, 1)


# -- job_context -----------------------------------------------------------------
def test_job_context_gives_current_job_and_records():
    with job_context() as job:
        assert isinstance(job, RecordedJob)
        result = testingfuncs.count_to(3)  # @background: runs inline
        assert current_job.id == job.id
    assert result == job.id
    assert job.progress_reports == [
        {"done": i, "total": 3, "message": f"step {i}"} for i in (1, 2, 3)]
    assert job.progress == {"done": 3, "total": 3, "message": "step 3"}
    assert job.output == "step 1\nstep 2\nstep 3\nto stderr\n"
    with pytest.raises(RuntimeError, match="only available inside a running job"):
        _ = current_job.id


def test_job_context_keeps_the_output_of_code_that_closes_its_stdout():
    """As a job process does, whatever the code does to its streams: closing
    sys.stdout (a report writer's ``with open(...)`` on it) loses nothing."""
    import sys

    with job_context() as job:
        print("report written")
        sys.stdout.close()
    assert job.output == "report written\n"


def test_job_context_with_a_chosen_id_and_no_capture(capsys):
    with job_context("job-1", capture_output=False) as job:
        testingfuncs.count_to(1)
    assert job.id == "job-1" and job.output == ""
    assert capsys.readouterr().out == "step 1\n"


def test_job_context_cancel_midway():
    with job_context() as job:
        job.on_progress = lambda report: report["done"] == 2 and job.cancel()
        assert testingfuncs.count_to(5) == "stopped"
    assert job.cancel_requested
    assert job.progress["done"] == 2
    assert job.output.endswith("stopping at 3\n")


def test_job_context_started_cancelled_and_with_mocks(monkeypatch):
    monkeypatch.setattr(testingfuncs, "count_to", lambda n: f"mocked {n}")
    with job_context(cancel_requested=True):
        assert current_job.cancel_requested
        assert testingfuncs.calls_marked(2) == ["mocked 2", "after"]


def test_job_context_checks_progress_like_a_job():
    with job_context(), pytest.raises(TypeError, match="done must be a number"):
        current_job.progress("1")


def test_job_context_ends_on_error_and_refuses_nesting():
    with pytest.raises(ValueError, match="bad value"), job_context():
        with pytest.raises(RuntimeError, match="cannot be entered inside a job"):
            with job_context():
                pass
        testingfuncs.marked_crash(1)
    with pytest.raises(RuntimeError, match="only available inside a running job"):
        _ = current_job.cancel_requested


@pytest.mark.parametrize("kwargs, error", [
    pytest.param({"job_id": 3}, "job_id must be a non-empty str", id="job_id"),
    pytest.param({"cancel_requested": "yes"}, "cancel_requested must be True or False",
                 id="cancel_requested"),
])
def test_job_context_rejects_bad_input(kwargs, error):
    with pytest.raises(TypeError, match=error), job_context(**kwargs):
        pass


# -- wait_for_job ----------------------------------------------------------------
def test_wait_for_job_returns_the_job(mw):
    job = mw.submit(testingfuncs.count_to, 2)
    assert wait_for_job(job, 30) is job
    assert job.result == job.id


def test_wait_for_job_failure_shows_error_and_output(mw):
    job = mw.submit(testingfuncs.marked_crash, "x")
    with pytest.raises(AssertionError) as info:
        wait_for_job(job, 30)
    message = str(info.value)
    assert "ended failed, expected succeeded" in message
    assert "ValueError: bad value 'x'" in message
    assert "output: (none)" in message


def test_wait_for_job_timeout_shows_state_and_output(mw):
    job = mw.submit(testingfuncs.count_to, 1)
    wait_for_job(job)
    slow = mw.submit(testingfuncs.slow, 20)
    with pytest.raises(AssertionError, match=r"is still (queued|running) after 0.2 s"):
        wait_for_job(slow, 0.2)
    slow.cancel()
    wait_for_job(slow, 30, state=JobState.CANCELLED)


@pytest.mark.parametrize("args, kwargs, error, match", [
    pytest.param(("job",), {}, TypeError, "wait_for_job takes a Job", id="not-a-job"),
    pytest.param((None,), {"timeout": 0}, ValueError, "timeout must be", id="timeout"),
    pytest.param((None,), {"state": "nope"}, ValueError, "state must be a JobState",
                 id="state"),
    pytest.param((None,), {"state": "running"}, ValueError, "terminal state",
                 id="not-terminal"),
])
def test_wait_for_job_rejects_bad_input(mw, args, kwargs, error, match):
    if args == (None,):
        args = (wait_for_job(mw.submit(testingfuncs.pid)),)
    with pytest.raises(error, match=match):
        wait_for_job(*args, **kwargs)


# -- start_job -------------------------------------------------------------------
def test_start_job_through_webtest(wsgi_bg_middleware):
    mw = wsgi_bg_middleware(testingfuncs.echo_view)
    job = start_job(webtest.TestApp(mw, lint=True), "post", "/count/2")
    assert wait_for_job(job).result == job.id
    assert job.output.startswith("step 1\nstep 2\n")


@pytest.mark.parametrize("accept", [
    pytest.param("text/html", id="303"),
    pytest.param("application/json", id="202"),
])
def test_start_job_of_a_marked_app(wsgi_bg_middleware, accept):
    mw = wsgi_bg_middleware(testingfuncs.report_app)
    job = start_job(webtest.TestApp(mw), "get", "/r", headers={"Accept": accept})
    wait_for_job(job)
    assert job.output == "report for /r\ndone\n"


flask_app = flask.Flask(__name__)


@flask_app.post("/count/<int:n>")
def flask_count(n):
    return flask.redirect(testingfuncs.count_to(n).url, code=303)


@flask_app.get("/nothing")
def flask_nothing():
    return "no job here"


def test_start_job_through_flask_test_client(wsgi_bg_middleware, monkeypatch):
    mw = wsgi_bg_middleware(flask_app.wsgi_app)
    monkeypatch.setattr(flask_app, "wsgi_app", mw)
    job = start_job(flask_app.test_client(), "POST", "/count/3")
    wait_for_job(job)
    assert job.progress == {"done": 3, "total": 3, "message": "step 3"}
    with pytest.raises(AssertionError, match=r"\(200, Location: None\) does not"
                       r" point to a job.*no job here"):
        start_job(flask_app.test_client(), "get", "/nothing")


def test_start_job_finds_the_fixtures_middleware_when_the_client_bypasses_wsgi(
        wsgi_bg_middleware):
    # Flask's own app, not wrapped: as Django's test client, it never passes
    # through the middleware; start_job serves the request with it.
    mw = wsgi_bg_middleware()
    job = start_job(flask_app.test_client(), "post", "/count/1")
    assert mw.get_job(job.id) == job
    wait_for_job(job)


def test_start_job_asks_for_the_middleware_when_it_cannot_tell(wsgi_bg_middleware):
    wsgi_bg_middleware()
    wsgi_bg_middleware()
    with pytest.raises(TypeError, match=r"built 2 in this test\): pass it"):
        start_job(flask_app.test_client(), "post", "/count/1")


def test_start_job_rejects_what_is_not_a_client():
    with pytest.raises(TypeError, match=r"a test client with a post\(\) method"):
        start_job(object(), "post", "/x")


def test_serving_makes_background_calls_start_jobs(mw):
    with serving(mw):
        job = testingfuncs.count_to(1)
    assert wait_for_job(job).result == job.id
    with pytest.raises(RuntimeError, match="wsgi_bg.testing.job_context"):
        testingfuncs.count_to(1)
    with pytest.raises(TypeError, match="takes a BackgroundMiddleware"), serving("mw"):
        pass


# -- processes left behind -------------------------------------------------------
def test_factory_close_fails_naming_a_process_left_behind():
    factory = MiddlewareFactory(process_timeout=0.2)
    mw = factory(max_workers=1)
    assert isinstance(mw, BackgroundMiddleware)
    assert mw.settings.max_workers == 1 and mw.settings.cancel_grace == 1.0
    wait_for_job(mw.submit(testingfuncs.pid))
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(AssertionError, match=rf"1 process\(es\) left behind.*pid"
                           rf" {stray.pid}: .*time.sleep\(60\)"):
            factory.close()
        # Not the session's redis-server, RQ workers and their warm job processes.
        assert [p.pid for p in helpers.live_children()] == [stray.pid]
    finally:
        stray.kill()
        stray.wait()
    helpers.assert_no_children()
    with pytest.raises(RuntimeError, match="was closed"):
        factory()


def test_factory_shuts_down_a_middleware_it_manages():
    factory = MiddlewareFactory()
    mw = factory.manage(BackgroundMiddleware(testingfuncs.echo_view, max_workers=1))
    job = mw.submit(testingfuncs.slow, 30)
    wait_for(lambda: job.state is JobState.RUNNING, 30, message="the job to start")
    factory.close()  # kills the running job, checks its processes are gone
    assert job.state is JobState.CANCELLED
    with pytest.raises(TypeError, match="takes a BackgroundMiddleware"):
        MiddlewareFactory(check_processes=False).manage(testingfuncs.echo_view)


def test_the_fixture_fails_a_test_that_leaves_a_process(pytester):
    pytester.makepyfile(test_leaves=textwrap.dedent("""
        import subprocess, sys

        from wsgi_bg.testing import wait_for_job

        def test_leaves(wsgi_bg_middleware):
            wsgi_bg_middleware.process_timeout = 0.5  # not the 10 s default
            stray = subprocess.Popen([sys.executable, "-c",
                                      "import time; time.sleep(30)"])
            with open("stray.pid", "w") as f:
                f.write(str(stray.pid))

        def test_clean(wsgi_bg_middleware):
            mw = wsgi_bg_middleware()
            assert wait_for_job(mw.submit(pow, 2, 3)).result == 8
    """))
    pytester.makeini("[pytest]\n")
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    finally:
        stray = pytester.path / "stray.pid"
        if stray.exists():  # orphaned when that session ended: end it here
            try:
                os.kill(int(stray.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_leaves*",
                                 "*process(es) left behind, still alive 0.5 s"
                                 " later*time.sleep(30)*"])


# -- start_method="fork" -----------------------------------------------------------
FORK_SCRIPT = """
import json, sys, time
sys.path[:0] = [{tests!r}]
import testingfuncs
from wsgi_bg import BackgroundMiddleware

if __name__ == "__main__":
    testingfuncs.SETTING = "patched"     # seen by forked workers
    mw = BackgroundMiddleware(testingfuncs.echo_view, start_method="fork",
                              max_workers=2, cancel_grace=0.5)
    seen = mw.submit(testingfuncs.read_setting).wait(timeout=20).result
    failed = mw.submit(testingfuncs.marked_crash, 1).wait(timeout=20).state
    slow = mw.submit(testingfuncs.slow, 60)
    while slow.state == "queued":
        time.sleep(0.01)
    started = time.monotonic()
    mw.shutdown()
    print(json.dumps({{"seen": seen, "failed": failed, "slow": slow.state,
                      "shutdown": time.monotonic() - started}}))
"""


def test_fork_start_method_works_and_shuts_down(tmp_path):
    script = tmp_path / "forked.py"
    script.write_text(FORK_SCRIPT.format(tests=TESTS))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("start_method='fork': the script hung (shutdown never returned)")
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # anything it left behind
        except ProcessLookupError:
            pass
    assert process.returncode == 0, err
    result = json.loads(out)
    assert result["seen"] == "patched"
    assert result["failed"] == "failed"
    assert result["slow"] == "cancelled"
    assert result["shutdown"] < 10


def test_the_fixture_refuses_an_app_wrapped_at_import(wsgi_bg_middleware):
    wrapped = BackgroundMiddleware(testingfuncs.echo_view)  # as a module would
    with pytest.raises(TypeError, match=r"already a BackgroundMiddleware.*manage\(\)"):
        wsgi_bg_middleware(wrapped)
    assert wsgi_bg_middleware.manage(wrapped) is wrapped
