"""A few calls run in threads, each with its result: the no-op's ``git
status`` of every checkout at once, the prerequisite probes.

``concurrent.futures`` did this before; with the ``logging`` it imports it
cost a no-op about 4 ms of its start, for a pool of a handful of calls.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable


class Job:
    """One call; ``result()`` waits for it and returns its value or raises
    its exception."""

    def __init__(self, fn: Callable, args: tuple):
        self._fn, self._args = fn, args
        self._done = threading.Event()
        self._value = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            self._value = self._fn(*self._args)
        except BaseException as err:  # noqa: BLE001 - handed to result()
            self._error = err
        finally:
            self._done.set()

    def result(self):
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


class Jobs:
    """``calls`` ((fn, args) pairs) run in order by at most ``workers``
    threads named ``name-N``; ``jobs[i]`` is the i-th call's ``Job``."""

    def __init__(self, calls: Iterable[tuple[Callable, tuple]], workers: int, name: str):
        self.jobs = [Job(fn, args) for fn, args in calls]
        queue = deque(self.jobs)

        def work() -> None:
            while True:
                try:
                    job = queue.popleft()  # (deque's popleft is atomic)
                except IndexError:
                    return
                job._run()

        self._threads = [threading.Thread(target=work, name=f"{name}-{i}")
                         for i in range(min(max(workers, 1), len(self.jobs)))]
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        """Wait until every call has ended."""
        for thread in self._threads:
            thread.join()
