"""tasks/threads.py: calls in a few threads, each with its result."""

from __future__ import annotations

import threading
import time

import pytest

from tasks.threads import Jobs


def test_each_job_gives_its_own_result_or_raises_its_own_error():
    def f(x):
        if x == 2:
            raise ValueError("two")
        return x * 10

    jobs = Jobs([(f, (i,)) for i in range(4)], workers=3, name="t")
    assert jobs.jobs[0].result() == 0 and jobs.jobs[3].result() == 30
    with pytest.raises(ValueError, match="two"):
        jobs.jobs[2].result()
    jobs.join()


def test_at_most_workers_run_at_once_and_join_waits_for_all():
    running, most, done = 0, 0, []
    lock = threading.Lock()

    def f(i):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        done.append(i)

    jobs = Jobs([(f, (i,)) for i in range(7)], workers=2, name="kps-test")
    names = {t.name for t in threading.enumerate() if t.name.startswith("kps-test-")}
    assert names <= {"kps-test-0", "kps-test-1"}
    jobs.join()
    assert most == 2 and sorted(done) == list(range(7))
    assert not [t for t in threading.enumerate() if t.name.startswith("kps-test-")]


def test_no_calls_start_no_thread():
    before = threading.active_count()
    Jobs([], workers=4, name="none").join()
    assert threading.active_count() == before
