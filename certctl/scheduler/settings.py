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
    SettingsError,
    parse_duration,
)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


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
        raw_enabled = (env.get("CERTCTL_SCHEDULER_ENABLED") or "true").strip().lower()
        if raw_enabled not in _TRUE + _FALSE:
            raise SettingsError(f"CERTCTL_SCHEDULER_ENABLED: '{raw_enabled}' is not a boolean (true/false)")
        values["enabled"] = raw_enabled in _TRUE
        ints = {name: (default, low, high) for name, default, low, high in SCHEDULER_INT_VARIABLES}
        for name, field_name in (
            ("CERTCTL_RENEWAL_CONCURRENCY", "renewal_concurrency"),
            ("CERTCTL_JOB_LEASE_SECONDS", "job_lease"),
            ("CERTCTL_SCHEDULER_LEADER_LEASE_SECONDS", "leader_lease"),
        ):
            default, low, high = ints[name]
            raw = env.get(name) or str(default)
            try:
                number = int(raw)
            except ValueError:
                raise SettingsError(f"{name}: '{raw}' is not an integer") from None
            if not low <= number <= high:
                raise SettingsError(f"{name}: '{raw}' is not between {low} and {high}")
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
