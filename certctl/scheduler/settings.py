"""The scheduler's settings, read from the `CERTCTL_*` variables that `certctl.config` validated at start.

Names follow the reference (core.md §3 and §5) where it has one; the lease variables are ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import timedelta

from certctl.config import (
    SCHEDULER_DURATION_VARIABLES,
    SCHEDULER_INT_VARIABLES,
    env_bool,
    env_int_between,
    parse_duration,
)


@dataclass(frozen=True)
class SchedulerSettings:
    enabled: bool = True
    renewal_concurrency: int = 25
    job_lease: timedelta = timedelta(minutes=5)
    leader_lease: timedelta = timedelta(seconds=30)
    renewal_check_interval: timedelta = timedelta(hours=1)
    job_processor_interval: timedelta = timedelta(seconds=30)
    lease_reaper_interval: timedelta = timedelta(seconds=30)
    job_timeout_interval: timedelta = timedelta(minutes=10)
    agent_health_check_interval: timedelta = timedelta(minutes=2)
    short_lived_expiry_check_interval: timedelta = timedelta(seconds=30)
    awaiting_csr_timeout: timedelta = timedelta(hours=24)
    awaiting_approval_timeout: timedelta = timedelta(hours=168)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SchedulerSettings:
        """From `Settings.extra` (the process's CERTCTL_* variables); a bad value raises `SettingsError`."""
        values: dict[str, object] = {}
        values["enabled"] = env_bool(env, "CERTCTL_SCHEDULER_ENABLED", True)
        ints = {name: (default, low, high) for name, default, low, high in SCHEDULER_INT_VARIABLES}
        for name, field_name in (
            ("CERTCTL_RENEWAL_CONCURRENCY", "renewal_concurrency"),
            ("CERTCTL_JOB_LEASE_SECONDS", "job_lease"),
            ("CERTCTL_SCHEDULER_LEADER_LEASE_SECONDS", "leader_lease"),
        ):
            number = env_int_between(env, name, *ints[name])
            values[field_name] = number if field_name == "renewal_concurrency" else timedelta(seconds=number)
        durations = dict(zip(
            ("renewal_check_interval", "job_processor_interval", "lease_reaper_interval", "job_timeout_interval",
             "agent_health_check_interval", "short_lived_expiry_check_interval",
             "awaiting_csr_timeout", "awaiting_approval_timeout"),
            SCHEDULER_DURATION_VARIABLES, strict=True,
        ))
        for field_name, (name, fallback, minimum) in durations.items():
            values[field_name] = timedelta(seconds=parse_duration(name, env.get(name) or fallback, minimum))
        assert set(values) == {f.name for f in fields(cls)}
        return cls(**values)  # type: ignore[arg-type]  # keys checked against the dataclass just above
