"""Background loops with a leader lock (core.md §3): see `loops` for the table, `runner` for the guards,
`leader` for the lock, and docs/operations.md "Scheduler and jobs"."""

from certctl.scheduler.loops import build_loops, build_scheduler
from certctl.scheduler.runner import Loop, RunResult, Scheduler
from certctl.scheduler.settings import SchedulerSettings

__all__ = ["Loop", "RunResult", "Scheduler", "SchedulerSettings", "build_loops", "build_scheduler"]
