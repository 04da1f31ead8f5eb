"""Issue 18: a job's pages never show a request's secrets, and what a job or
a client sends never sets the server's cost (arguments described without
their own code, a bound on a call's size, paging, coloured output)."""
from __future__ import annotations

import time

import pytest

import trustfuncs

pytestmark = pytest.mark.runner_contract


# -- describing arguments never runs their code ------------------------------------
def test_an_argument_whose_repr_sleeps_or_raises_never_delays_the_submit(mw):
    started = time.monotonic()
    job = mw.submit(trustfuncs.takes, trustfuncs.SlowRepr(), trustfuncs.FailingRepr(),
                    {trustfuncs.SlowRepr(): [trustfuncs.SlowRepr()]},
                    {trustfuncs.SlowRepr(), trustfuncs.SlowRepr()},
                    key=trustfuncs.SlowRepr())
    assert time.monotonic() - started < 5  # (it would take minutes)
    assert job.to_dict()["args"] == (
        "(<SlowRepr object>, <FailingRepr object>, {<SlowRepr object>:"
        " [<SlowRepr object>]}, {<SlowRepr object>, <SlowRepr object>},"
        " key=<SlowRepr object>)")
    assert job.wait(timeout=30).result == 5
