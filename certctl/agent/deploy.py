"""The agent's deploy engine: put a target's new files in place so that a crash, a bad config or a server
that will not take the new certificate never leaves it serving a mix, or nothing.

`DeployEngine.apply(plan)` runs one numbered sequence (the plan comes from a target connector,
`certctl.connectors.targets`):

1. Validate the plan: absolute paths in existing directories, regular files, known owners, commands.
2. Lock every path (in sorted order, so two deploys sharing files cannot deadlock).
3. Idempotency: a file whose SHA-256 (and explicit mode/owner) already matches is left alone; when every
   file matches, nothing is written, nothing is reloaded, and the result is `unchanged`.
4. Journal: the list of files, temp and backup names (never their bytes) is written to the state
   directory before anything else (and fsynced before the first rename, and again before the reload),
   so `recover()` can undo an interrupted deploy after a crash.
5. Back up each file being replaced as `<path>.certctl-bak.<nanos>` (a hard link: the old inode, with its
   mode and owner, untouched by what follows; a copy where links are not possible).
6. Write each new file as `<path>.certctl-tmp.<nanos>` in the same directory (O_EXCL, 0600, write, chown,
   chmod, fsync), fsync the directories, then rename each over its path (atomic per file) and fsync the
   directories again. Mode and owner: explicit in the config > the replaced file's > the target's default.
7. Config test (`nginx -t`, ...): it runs now, after the renames and before the reload, because the
   server's configuration names the live paths: this is how it tests the NEW files. The running server
   has not read them yet, so on failure the backups are put back and no reload is needed.
8. Reload. On failure: restore the backups and reload again (the server may have half-applied it).
9. Verify: TLS-probe the configured endpoint until the served leaf's SHA-256 equals the new one (retries
   with doubling backoff: reloads are asynchronous). On mismatch: restore, reload again. Without an
   endpoint, verification is `skipped`, never a false failure.
10. Drop the journal (the commit point), then prune backups to the newest N (default 3; -1 keeps all).

A crash anywhere before step 10 is undone by `recover()` (the agent calls it at start-up): every file of
the journal gets its backup back (or is removed if it was new), temps are deleted, and the reload runs
again when one had been started. Multi-file deploys therefore end all-old or all-new, never mixed.

Commands run without a shell (argv lists), with a timeout, in their own process group (killed as a group
on timeout), output captured through a temporary file (a daemonising child cannot hang us on a pipe),
trimmed, and scrubbed of any private key text. File contents never appear in logs, errors or results.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import hashlib
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from certctl.connectors.targets.plan import (
    Command,
    DeployResult,
    DeployStatus,
    FileResult,
    Plan,
    PlannedFile,
    StepResult,
    Verification,
    VerifySpec,
    failed,
    scrub_secrets,
)
from certctl.connectors.tlsprobe import ProbeError, ProbeResult, probe_tls
from certctl.domain.clock import Clock
from certctl.domain.errors import ValidationError

log = logging.getLogger("certctl.agent.deploy")

BACKUP_MARK = ".certctl-bak."
TEMP_MARK = ".certctl-tmp."
_OUTPUT_READ = 64 * 1024


class Prober(Protocol):
    def __call__(self, host: str, port: int, *, server_name: str | None = ..., timeout: float = ...
                 ) -> Awaitable[ProbeResult]: ...


@dataclass
class _Entry:
    """One file of an in-flight deploy, as the journal records it."""

    path: str
    temp: str
    backup: str | None  # None: the file did not exist before
    existed: bool
    renamed: bool | None = False  # None: unknown (recovery after a crash)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "temp": self.temp, "backup": self.backup, "existed": self.existed}


@dataclass
class _Work:
    file: PlannedFile
    path: str
    content: bytes = field(repr=False)
    sha256: str
    existed: bool
    unchanged: bool
    mode: int
    uid: int  # -1: leave as created
    gid: int
    entry: _Entry | None = None


class DeployEngine:
    """Applies target plans atomically. One per agent process; `state_dir` holds the crash journal."""

    def __init__(
        self,
        state_dir: Path | str,
        *,
        clock: Clock | None = None,
        prober: Prober | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        output_limit: int = 2000,
    ) -> None:
        self.journal_dir = Path(state_dir) / "deploy-journal"
        self._clock = clock or Clock()
        self._prober: Prober = prober or probe_tls
        self._sleep = sleep
        self._output_limit = output_limit
        self._locks: dict[str, asyncio.Lock] = {}
        # Fault injection for the crash tests: called with the name of each point of the sequence.
        self.checkpoint: Callable[[str], None] | None = None

    def now(self) -> datetime:
        return self._clock.now()

    # ---- apply -----------------------------------------------------------------------------------
    async def apply(self, plan: Plan) -> DeployResult:
        try:
            targets = _validate(plan, need_content=True)
        except ValidationError as exc:
            return failed(f"{plan.label}: {exc.message}")
        async with self._locked(sorted(path for path, _ in targets)):
            result = await self._apply_locked(plan, targets)
        log.info("deploy %s: %s", plan.label, result.status,
                 extra={"deploy_status": result.status, "files": list(result.files_written)})
        return result

    async def _apply_locked(self, plan: Plan, targets: list[tuple[str, PlannedFile]]) -> DeployResult:
        warnings: list[str] = []
        try:
            works = [_inspect(path, pf) for path, pf in targets]
        except (OSError, ValidationError) as exc:
            return failed(f"{plan.label}: {_describe(exc)}")
        pending = [w for w in works if not w.unchanged]
        if not pending:
            return DeployResult(
                success=True, status="unchanged", changed=False, rolled_back=False,
                message=f"{plan.label}: every file already has this content; nothing written, nothing reloaded",
                verification=Verification("skipped", error="nothing changed"),
                files=tuple(FileResult(w.path, w.file.role, "unchanged", w.sha256) for w in works),
            )
        stamp = time.time_ns()
        for w in pending:
            w.entry = _Entry(path=w.path, temp=f"{w.path}{TEMP_MARK}{stamp}",
                             backup=f"{w.path}{BACKUP_MARK}{stamp}" if w.existed else None, existed=w.existed)
        entries = [w.entry for w in pending if w.entry is not None]
        journal = _Journal(self.journal_dir / f"{stamp}-{secrets.token_hex(4)}.json", entries, plan)
        secret_texts = [w.content for w in works if w.file.secret]
        steps: list[StepResult] = []
        file_results = tuple(
            FileResult(w.path, w.file.role, "unchanged" if w.unchanged else ("replaced" if w.existed else "created"),
                       w.sha256, w.entry.backup if w.entry else None)
            for w in works
        )

        async def rollback(reason: str, *, reload_again: bool, verification: Verification) -> DeployResult:
            restore_errors = _undo(entries, renamed_possible=True)
            errors = list(restore_errors)
            if reload_again and plan.reload is not None:
                step = await self._run("rollback-reload", plan.reload, secret_texts)
                steps.append(step)
                if not step.ok:
                    errors.append(f"reloading after the restore failed: {_step_summary(step)}")
            if not restore_errors:
                journal.remove()  # the files are back; a failed reload is reported, not retried at start-up
            status: DeployStatus = "rollback_failed" if errors else "rolled_back"
            message = (f"{plan.label}: {reason}; the previous files were restored"
                       + (" and the server reloaded" if reload_again and plan.reload else ""))
            if errors:
                message = f"{plan.label}: {reason}; ROLLBACK FAILED: {'; '.join(errors)}"
            log.warning("deploy %s rolled back: %s", plan.label, reason, extra={"deploy_status": status})
            return DeployResult(success=False, status=status, changed=False, rolled_back=not restore_errors,
                                message=message, verification=verification, files=file_results,
                                steps=tuple(steps), warnings=tuple(warnings))

        # 4-6: journal, backups, temps, renames.
        try:
            # Not synced: losing it in a crash only leaves stray temps/backups; from "renaming" on it must last.
            journal.write("prepared", durable=False)
            self._point("prepared")
            for w in pending:
                assert w.entry is not None
                if w.entry.backup is not None:
                    _backup(w.path, w.entry.backup)
                self._write_temp(w, w.entry.temp, warnings)
            _fsync_dirs(entries)
            self._point("staged")
            journal.write("renaming")
            for index, w in enumerate(pending):
                assert w.entry is not None
                os.replace(w.entry.temp, w.path)
                w.entry.renamed = True
                self._point(f"renamed:{index}")
            _fsync_dirs(entries)
            self._point("renamed")
        except (OSError, ValidationError) as exc:
            errors = _undo(entries, renamed_possible=True)
            if not errors:
                journal.remove()
            reason = f"writing the new files failed: {_describe(exc)}"
            message = f"{plan.label}: {reason}" + (f"; ROLLBACK FAILED: {'; '.join(errors)}" if errors else "")
            return DeployResult(success=False, status="rollback_failed" if errors else "failed", changed=False,
                                rolled_back=False, message=message,
                                verification=Verification("skipped", error="not deployed"), files=file_results,
                                warnings=tuple(warnings))

        skipped = Verification("skipped", error="not verified: the deploy was rolled back")
        # 7: config test against the new files (the config names the live paths).
        if plan.test is not None:
            step = await self._run("test", plan.test, secret_texts)
            steps.append(step)
            if not step.ok:
                return await rollback(f"config test failed: {_step_summary(step)}", reload_again=False,
                                      verification=skipped)
        self._point("tested")
        # 8: reload.
        journal.write("reloading")
        if plan.reload is not None:
            step = await self._run("reload", plan.reload, secret_texts)
            steps.append(step)
            if not step.ok:
                return await rollback(f"reload failed: {_step_summary(step)}", reload_again=True,
                                      verification=skipped)
        self._point("reloaded")
        # 9: verification.
        if plan.verify is None:
            verification = Verification("skipped", error="no verify_endpoint configured")
        else:
            verification = await self._verify(plan.verify)
            if verification.status == "failed":
                return await rollback(f"verification failed: {verification.error}", reload_again=True,
                                      verification=verification)
        self._point("verified")
        # 10: commit, then prune.
        journal.remove()
        self._point("committed")
        for w in pending:
            warnings.extend(_prune_backups(w.path, plan.backup_retention))
        written = ", ".join(w.path for w in pending)
        return DeployResult(
            success=True, status="deployed", changed=True, rolled_back=False,
            message=f"{plan.label}: wrote {written}" + (
                "; the new certificate is served" if verification.status == "success" else ""),
            verification=verification, files=file_results, steps=tuple(steps), warnings=tuple(warnings),
            deployed_at=self._clock.now(),
        )

    def _point(self, name: str) -> None:
        if self.checkpoint is not None:
            self.checkpoint(name)

    @staticmethod
    def _write_temp(w: _Work, temp: str, warnings: list[str]) -> None:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(w.content)
            while view:
                view = view[os.write(fd, view):]
            st = os.fstat(fd)
            uid = w.uid if w.uid not in (-1, st.st_uid) else -1
            gid = w.gid if w.gid not in (-1, st.st_gid) else -1
            if uid != -1 or gid != -1:
                try:
                    os.fchown(fd, uid, gid)
                except PermissionError:
                    if os.geteuid() == 0:
                        raise
                    # Reference behaviour: an agent that is not root cannot give files away; say so, go on.
                    warnings.append(f"{w.path}: cannot set owner {uid}:{gid} without root; kept {st.st_uid}:"
                                    f"{st.st_gid}")
            os.fchmod(fd, w.mode)  # after chown, which may clear set-id bits
            os.fsync(fd)
        finally:
            os.close(fd)

    # ---- dry run ---------------------------------------------------------------------------------
    async def dry_run(self, plan: Plan) -> DeployResult:
        """Check a plan without changing anything: paths writable, owners known, commands present,
        the config test passing (against the files in place now), the verify endpoint answering."""
        checks: list[StepResult] = []
        files: list[FileResult] = []
        try:
            targets = _validate(plan, need_content=False)
        except ValidationError as exc:
            checks.append(StepResult("plan", False, exc.message))
            targets = []
        for path, pf in targets:
            directory = os.path.dirname(path)
            if not os.access(directory, os.W_OK | os.X_OK):
                checks.append(StepResult(f"writable:{pf.role}", False, f"{directory} is not writable by this agent"))
                continue
            if os.path.lexists(path) and not os.access(path, os.R_OK):  # noqa: ASYNC240  # a stat, no waiting
                checks.append(StepResult(f"writable:{pf.role}", False, f"{path} is not readable by this agent"))
                continue
            checks.append(StepResult(f"writable:{pf.role}", True, f"{path} can be replaced"))
            if pf.content is not None:
                try:
                    w = _inspect(path, pf)
                except (OSError, ValidationError) as exc:
                    checks.append(StepResult(f"file:{pf.role}", False, _describe(exc)))
                    continue
                files.append(FileResult(path, pf.role, "unchanged" if w.unchanged else
                                        "would_replace" if w.existed else "would_create", w.sha256))
        for name, command in (("test", plan.test), ("reload", plan.reload)):
            if command is None:
                continue
            found = shutil.which(command.argv[0])
            checks.append(StepResult(f"command:{name}", found is not None,
                                     f"{command.argv[0]} is {found}" if found else f"{command.argv[0]} not found",
                                     argv=command.argv))
        if plan.test is not None and shutil.which(plan.test.argv[0]):
            checks.append(await self._run("test", plan.test, []))
        verification = Verification("skipped", error="dry run")
        if plan.verify is not None:
            spec = plan.verify
            endpoint = f"{spec.host}:{spec.port}"
            try:
                probe = await self._prober(spec.host, spec.port, server_name=spec.server_name, timeout=spec.timeout)
            except ProbeError as exc:
                checks.append(StepResult("verify-endpoint", False, str(exc)))
            else:
                checks.append(StepResult("verify-endpoint", True,
                                         f"{endpoint} serves {probe.subject} (SHA-256 {probe.fingerprint_sha256})"))
        bad = [c for c in checks if not c.ok]
        message = (f"{plan.label}: dry run passed ({len(checks)} checks)" if not bad else
                   f"{plan.label}: dry run found {len(bad)} problem(s): "
                   + "; ".join(f"{c.name}: {c.detail or _step_summary(c)}" for c in bad))
        return DeployResult(success=not bad, status="dry_run", changed=False, rolled_back=False, message=message,
                            verification=verification, files=tuple(files), steps=tuple(checks))

    # ---- recovery --------------------------------------------------------------------------------
    async def recover(self) -> list[str]:
        """Undo every deploy a crash interrupted (see the module doc). Returns what was done."""
        if not self.journal_dir.is_dir():
            return []
        done: list[str] = []
        for path in sorted(self.journal_dir.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                entries = [_Entry(path=e["path"], temp=e["temp"], backup=e["backup"], existed=e["existed"],
                                  renamed=None) for e in data["entries"]]
                phase = str(data["phase"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                done.append(f"{path.name}: unreadable journal ({exc.__class__.__name__}); left for an operator")
                continue
            async with self._locked(sorted(e.path for e in entries)):
                errors = _undo(entries, renamed_possible=phase != "prepared")
                note = f"{data.get('label', 'target')}: interrupted deploy (phase {phase}) undone"
                reload = data.get("reload")
                if phase in ("reloading",) and reload:
                    step = await self._run("recovery-reload", Command(tuple(reload["argv"]), reload["timeout"]), [])
                    note += "; reload " + ("ran" if step.ok else f"failed: {_step_summary(step)}")
            if errors:
                done.append(f"{note}; could not restore: {'; '.join(errors)}")
            else:
                path.unlink()
                done.append(note)
            log.warning("deploy recovery: %s", done[-1])
        return done

    # ---- commands and probes ---------------------------------------------------------------------
    async def _run(self, name: str, command: Command, secret_texts: Sequence[bytes]) -> StepResult:
        started = time.perf_counter()
        with tempfile.TemporaryFile() as out:
            try:
                process = await asyncio.create_subprocess_exec(
                    *command.argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                    start_new_session=True,  # its own process group, so a timeout kills its children too
                )
            except OSError as exc:
                return StepResult(name, False, f"cannot run {command.argv[0]}: {exc.strerror or exc}",
                                  argv=command.argv, duration_ms=_ms(started))
            timed_out = False
            try:
                await asyncio.wait_for(process.wait(), command.timeout)
            except TimeoutError:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
            size = out.seek(0, os.SEEK_END)
            out.seek(max(0, size - _OUTPUT_READ))
            raw = out.read()
        output = self._clean_output(raw, secret_texts)
        ok = process.returncode == 0 and not timed_out
        detail = (f"timed out after {command.timeout:g}s" if timed_out
                  else "" if ok else f"exit code {process.returncode}")
        return StepResult(name, ok, detail, argv=command.argv, exit_code=process.returncode, output=output,
                          duration_ms=_ms(started), timed_out=timed_out)

    def _clean_output(self, raw: bytes, secret_texts: Sequence[bytes]) -> str:
        text = scrub_secrets(raw, secret_texts).decode("utf-8", errors="replace").strip()
        if len(text) > self._output_limit:
            text = "…" + text[-self._output_limit:]
        return text

    async def verify(self, spec: VerifySpec) -> Verification:
        """Step 9 on its own, for targets that are not files (e.g. Caddy's admin API)."""
        return await self._verify(spec)

    async def _verify(self, spec: VerifySpec) -> Verification:
        endpoint = f"{spec.host}:{spec.port}"
        delay = spec.backoff
        served: str | None = None
        error: str | None = None
        for attempt in range(1, spec.attempts + 1):
            try:
                probe = await self._prober(spec.host, spec.port, server_name=spec.server_name, timeout=spec.timeout)
            except ProbeError as exc:
                error = str(exc)
            else:
                served = probe.fingerprint_sha256
                if served == spec.expected_fingerprint:
                    return Verification("success", served, spec.expected_fingerprint, None, attempt, endpoint)
                error = (f"{endpoint} serves the certificate with SHA-256 {served}, expected "
                         f"{spec.expected_fingerprint}")
            if attempt < spec.attempts:
                await self._sleep(min(delay, spec.max_backoff))
                delay *= 2
        return Verification("failed", served, spec.expected_fingerprint, error, spec.attempts, endpoint)

    @contextlib.asynccontextmanager
    async def _locked(self, paths: Sequence[str]) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for path in paths:  # sorted by the caller: a fixed order cannot deadlock
                await stack.enter_async_context(self._locks.setdefault(path, asyncio.Lock()))
            yield


# ---- plan validation and inspection ----------------------------------------------------------------
def _validate(plan: Plan, *, need_content: bool) -> list[tuple[str, PlannedFile]]:
    if not plan.files:
        raise ValidationError("the plan has no files")
    problems: list[str] = []
    seen: dict[str, str] = {}
    targets: list[tuple[str, PlannedFile]] = []
    for pf in plan.files:
        where = f"{pf.role} path"
        if not isinstance(pf.path, str) or not os.path.isabs(pf.path) or "\x00" in pf.path:
            problems.append(f"{where} must be an absolute path")
            continue
        if ".." in Path(pf.path).parts:
            problems.append(f"{where} {pf.path} must not contain '..'")
            continue
        # Deploy through symlinks to the real file, so a link (e.g. certbot's live/ layout) stays a link.
        path = os.path.realpath(pf.path)
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            problems.append(f"{where} {pf.path}: directory {directory} does not exist")
        elif os.path.lexists(path) and not os.path.isfile(path):
            problems.append(f"{where} {pf.path} exists and is not a regular file")
        if path in seen:
            problems.append(f"{where} {pf.path} is also the {seen[path]} path")
        seen[path] = pf.role
        if need_content and pf.content is None:
            problems.append(f"{where} {pf.path} has no content")
        for mode in (pf.mode, pf.default_mode):
            if mode is not None and not 0 <= mode <= 0o7777:
                problems.append(f"{pf.role} file mode must be between 0000 and 7777 (octal)")
        for what, value, lookup in (("owner", pf.owner, _uid), ("group", pf.group, _gid)):
            if value is not None:
                try:
                    lookup(value)
                except ValidationError as exc:
                    problems.append(f"{pf.role} file {what}: {exc.message}")
        targets.append((path, pf))
    for name, command in (("test", plan.test), ("reload", plan.reload)):
        if command is not None and (not command.argv or not command.argv[0]):
            problems.append(f"the {name} command is empty")
    if plan.verify is not None and not (1 <= plan.verify.port <= 65535 and plan.verify.attempts >= 1):
        problems.append("the verify endpoint needs a port in 1-65535 and at least one attempt")
    if plan.backup_retention < -1:
        problems.append("backup_retention must be -1 (keep all) or more")
    if problems:
        raise ValidationError("; ".join(problems))
    return targets


def _inspect(path: str, pf: PlannedFile) -> _Work:
    content = pf.content if pf.content is not None else b""
    sha = hashlib.sha256(content).hexdigest()
    explicit_uid = _uid(pf.owner) if pf.owner is not None else -1
    explicit_gid = _gid(pf.group) if pf.group is not None else -1
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return _Work(pf, path, content, sha, existed=False, unchanged=False,
                     mode=pf.mode if pf.mode is not None else pf.default_mode, uid=explicit_uid, gid=explicit_gid)
    current = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    mode = pf.mode if pf.mode is not None else st.st_mode & 0o7777
    uid = explicit_uid if explicit_uid != -1 else st.st_uid
    gid = explicit_gid if explicit_gid != -1 else st.st_gid
    root = os.geteuid() == 0
    same = (current == sha and (st.st_mode & 0o7777) == mode
            and (not root or (st.st_uid == uid and st.st_gid == gid)))
    return _Work(pf, path, content, sha, existed=True, unchanged=same, mode=mode, uid=uid, gid=gid)


def _uid(value: str | int) -> int:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise ValidationError(f"no user named '{value}' on this host") from None


def _gid(value: str | int) -> int:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return int(value)
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise ValidationError(f"no group named '{value}' on this host") from None


# ---- files ------------------------------------------------------------------------------------------
def _backup(path: str, backup: str) -> None:
    """The replaced file survives as `backup`: a hard link to its inode (mode and owner included)."""
    try:
        os.link(path, backup, follow_symlinks=False)
        return
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    st = os.stat(path)
    fd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with open(path, "rb") as source:
            while chunk := source.read(1 << 20):
                os.write(fd, chunk)
        with contextlib.suppress(PermissionError):
            os.fchown(fd, st.st_uid, st.st_gid)
        os.fchmod(fd, st.st_mode & 0o7777)
        os.fsync(fd)
    finally:
        os.close(fd)


def _undo(entries: Sequence[_Entry], *, renamed_possible: bool) -> list[str]:
    """Put every entry's previous state back: its backup over the path, or no file if it was new.

    Safe to repeat (a crash during recovery): an entry whose backup is gone was already restored."""
    errors: list[str] = []
    for entry in entries:
        try:
            if entry.existed:
                if entry.backup is not None and os.path.lexists(entry.backup):
                    if os.path.lexists(entry.path) and os.path.samefile(entry.backup, entry.path):
                        os.unlink(entry.backup)  # never renamed: rename() between two links is a no-op
                    else:
                        os.replace(entry.backup, entry.path)
            elif entry.renamed or (entry.renamed is None and renamed_possible):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        except OSError as exc:
            errors.append(f"restoring {entry.path}: {exc.strerror or exc}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.temp)
    try:
        _fsync_dirs(entries)
    except OSError as exc:
        errors.append(f"restoring: syncing the directories failed: {exc.strerror or exc}")
    return errors


def _fsync_dirs(entries: Sequence[_Entry]) -> None:
    for directory in sorted({os.path.dirname(e.path) for e in entries}):
        _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backups_of(path: str) -> list[str]:
    """Backups of `path`, oldest first."""
    directory, name = os.path.split(path)
    prefix = name + BACKUP_MARK
    try:
        found = [n for n in os.listdir(directory) if n.startswith(prefix) and n[len(prefix):].isdigit()]
    except FileNotFoundError:
        return []
    return [os.path.join(directory, n) for n in sorted(found, key=lambda n: int(n[len(prefix):]))]


def _prune_backups(path: str, keep: int) -> list[str]:
    if keep < 0:
        return []
    warnings: list[str] = []
    found = backups_of(path)
    for old in found[: max(0, len(found) - keep)]:
        try:
            os.unlink(old)
        except OSError as exc:
            warnings.append(f"could not remove old backup {old}: {exc.strerror or exc}")
    return warnings


class _Journal:
    """What is in flight, on disk before the first change (paths and names only, never contents)."""

    def __init__(self, path: Path, entries: list[_Entry], plan: Plan) -> None:
        self.path = path
        self._entries = entries
        self._label = plan.label
        self._reload = {"argv": list(plan.reload.argv), "timeout": plan.reload.timeout} if plan.reload else None

    def write(self, phase: str, *, durable: bool = True) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        body = json.dumps({"version": 1, "phase": phase, "label": self._label, "reload": self._reload,
                           "entries": [e.to_json() for e in self._entries]}).encode()
        temp = self.path.with_suffix(".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, body)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, self.path)
        if durable:
            _fsync_dir(str(self.path.parent))

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            _fsync_dir(str(self.path.parent))


# ---- messages ---------------------------------------------------------------------------------------
def _describe(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return exc.message
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc.__class__.__name__}{where}"
    return exc.__class__.__name__


def _step_summary(step: StepResult) -> str:
    what = f"`{' '.join(step.argv)}` {step.detail}".strip() if step.argv else step.detail
    return f"{what}: {step.output}" if step.output else what


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
