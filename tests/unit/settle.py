"""Waiting, without real time, until every task has done what it can: trio.testing's
``wait_all_tasks_blocked`` with a bound, so that a task that never blocks (a busy loop, the
kind of defect these tests look for) fails the test instead of hanging it."""

from __future__ import annotations

import pytest
import trio
import trio.testing

MOST_STEPS = 10_000  # task steps one settling may take; the tests need a few dozen


class _Watchdog(trio.abc.Instrument):
    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1
        if self.steps > MOST_STEPS:
            self.scope.cancel()


async def settle() -> None:
    """Return once every other task is blocked; fail if they take more than MOST_STEPS steps."""
    with trio.CancelScope() as scope:
        watchdog = _Watchdog(scope)
        trio.lowlevel.add_instrument(watchdog)
        try:
            await trio.testing.wait_all_tasks_blocked()
        finally:
            trio.lowlevel.remove_instrument(watchdog)
    if scope.cancelled_caught:
        pytest.fail(f"the tasks never settled: over {MOST_STEPS} steps with nothing to do")
