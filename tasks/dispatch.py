"""The order a parallel run (``-n N``) starts its tasks in: a component's
next step first.

doit's dispatcher keeps the tasks that can start in one queue, first come
first served, and reaches a task kind (fetch, patch, build...) only when
the tasks of the kinds before it have all started.  With eight components
and four workers, ``patch:a`` then waits for the fetch of every other
component, and ``build:a`` for every patch: a fresh run's critical path
started ~0.2 s late (bench/parallel.py).  ``ChainDispatcher`` makes every
task it can before choosing one, and starts first a task that the task that
just finished let go (the next step of the same chain), then the others in
doit's order.  Which tasks run and what each waits for is doit's own
(``TaskDispatcher._add_task``): only the choice among tasks that can start
changes.  A run with one worker keeps doit's order (every fetch first);
importing this module changes nothing (``chains_first()`` does, for one run).
"""

from __future__ import annotations

from collections import deque

from doit import control
from doit.control import ExecNode, TaskDispatcher
from doit.task import Task


class ChainDispatcher(TaskDispatcher):
    def _dispatcher_generator(self, selected_tasks):
        tasks_to_run = list(reversed(selected_tasks))
        startable: deque[ExecNode] = deque()  # nodes whose next step is their Task
        urgent: set[ExecNode] = set()  # what the task that just finished let go
        again = None  # a node just sent: doit steps it once more (setup tasks)
        while True:
            while True:  # step every node that can go on, as doit would
                if again is not None:
                    node, again = again, None
                else:
                    node = self._get_next_node(self.ready, tasks_to_run)
                if node is None:
                    break
                while True:
                    step = node.step()
                    if step is None:
                        break
                    if isinstance(step, Task):
                        (startable.appendleft if node in urgent else startable.append)(node)
                        break
                    if isinstance(step, ExecNode):
                        self.ready.append(step)
                    elif step == "reset generator":
                        node.reset_task(self.tasks[node.task.name], self._add_task(node))
                    else:  # "wait"
                        self.waiting.add(node)
                        break
            if startable:
                node = startable.popleft()
                processed = yield self.nodes[node.task.name]
            elif self.waiting:
                node = None
                processed = yield "hold on"
            else:
                return
            before = len(self.ready)
            self._update_waiting(processed)
            urgent = set(list(self.ready)[before:])
            again = node


def chains_first():
    """Have doit choose with ``ChainDispatcher`` until the returned function
    is called (at the end of the run: nothing of it stays in the process).
    doit builds its dispatcher inside its run command (cmd_run), with no way
    to pass another, hence the method swapped for the run's time."""
    doits = control.TaskControl.__dict__["task_dispatcher"]

    def task_dispatcher(self):
        return ChainDispatcher(self.tasks, self.targets, self.selected_tasks)

    control.TaskControl.task_dispatcher = task_dispatcher

    def put_back():
        control.TaskControl.task_dispatcher = doits

    return put_back
