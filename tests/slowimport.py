"""A module whose import takes long: loading a job from it must meet its timeout."""
import time

time.sleep(3)


def work():
    return "done"
