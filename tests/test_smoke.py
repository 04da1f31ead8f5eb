import jobfuncs
from wsgi_bg import JobState


def test_submit_runs_and_captures(mw):
    job = mw.submit(jobfuncs.hello)
    job.wait(timeout=20)
    assert job.state is JobState.SUCCEEDED
    assert job.result == 42
    assert job.output == "hello\nto stderr\n"
