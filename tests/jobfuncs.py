"""Module-level job targets for the tests (workers import them by name)."""
import os
import sys
import time

from wsgi_bg import background, current_job


def add(a, b):
    return a + b


def hello():
    print("hello")
    print("to stderr", file=sys.stderr)
    return 42


def sleeper(seconds):
    time.sleep(seconds)
    return seconds


def boom():
    raise ValueError("boom")


@background(timeout=1)
def limited(seconds):
    time.sleep(seconds)
