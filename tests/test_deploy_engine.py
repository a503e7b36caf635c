"""The agent's deploy engine on temporary directories: atomic writes, idempotency, backups, owner and mode,
rollback on a failing config test, reload or verification, crash recovery, commands without a shell."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import textwrap
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from certctl.agent.deploy import BACKUP_MARK, TEMP_MARK, DeployEngine, backups_of
from certctl.connectors.targets.plan import Command, Plan, PlannedFile, VerifySpec
from certctl.connectors.tlsprobe import ProbeError, ProbeResult
from certctl.domain.clock import FakeClock
from certctl.domain.errors import ValidationError

PY = sys.executable
# Commands in these tests are small Python programs; -S skips site-packages so each starts in ~20 ms.
PYC = (PY, "-S", "-c")
KEY_LINE = b"MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgSECRETSECRETSECRET"
KEY = b"-----BEGIN PRIVATE KEY-----\n" + KEY_LINE + b"\n-----END PRIVATE KEY-----\n"
KEY2 = KEY.replace(b"SECRETSECRET", b"OTHERKEYDATA")


class Crash(BaseException):
    """Stands for the process dying: nothing in the engine catches it."""


@dataclass
class Site:
    root: Path
    state: Path
    reloads: Path

    @property
    def cert(self) -> Path:
        return self.root / "cert.pem"

    @property
    def key(self) -> Path:
        return self.root / "key.pem"

    def reload_count(self) -> int:
        return len(self.reloads.read_text()) if self.reloads.exists() else 0

    def reload_command(self, fail_if_cert_contains: str | None = None) -> Command:
        """Counts its runs; fails while the live cert file holds the marker (like a server refusing it)."""
        script = ("import sys; open(sys.argv[1], 'a').write('x'); "
                  "import os; m = sys.argv[3]; t = open(sys.argv[2]).read() if os.path.exists(sys.argv[2]) else ''; "
                  "sys.exit(1 if m and m in t else 0)")
        return Command((*PYC, script, str(self.reloads), str(self.cert), fail_if_cert_contains or ""))

    def test_command(self, fail_if_cert_contains: str) -> Command:
        script = ("import sys; t = open(sys.argv[1]).read(); bad = sys.argv[2] in t; "
                  "print('config test: certificate rejected' if bad else 'syntax ok'); sys.exit(1 if bad else 0)")
        return Command((*PYC, script, str(self.cert), fail_if_cert_contains))

    def plan(self, cert: bytes, key: bytes = KEY, **overrides: object) -> Plan:
        fields: dict[str, object] = {
            "files": (PlannedFile(str(self.cert), cert, role="cert"),
                      PlannedFile(str(self.key), key, default_mode=0o600, secret=True, role="key")),
            "reload": self.reload_command(), "label": "test target",
        }
        fields.update(overrides)
        return Plan(**fields)  # type: ignore[arg-type]

    def contents(self) -> tuple[bytes | None, bytes | None]:
        return tuple(p.read_bytes() if p.exists() else None for p in (self.cert, self.key))  # type: ignore[return-value]

    def leftovers(self) -> list[str]:
        return sorted(n for n in os.listdir(self.root) if TEMP_MARK in n)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    root = tmp_path / "site"
    root.mkdir()
    return Site(root, tmp_path / "state", tmp_path / "reloads")


class FakeProber:
    def __init__(self, *answers: str | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, int, str | None]] = []

    async def __call__(self, host: str, port: int, *, server_name: str | None = None,
                       timeout: float = 5.0) -> ProbeResult:
        self.calls.append((host, port, server_name))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        now = datetime.now(UTC)
        return ProbeResult(host=host, port=port, fingerprint_sha256=answer, chain_der=(b"",), subject="CN=x",
                           issuer="CN=ca", serial_number="1", not_before=now, not_after=now, tls_version="TLSv1.3",
                           cipher="x", latency_ms=1.0)


def engine_for(site: Site, prober: FakeProber | None = None, sleeps: list[float] | None = None) -> DeployEngine:
    async def sleep(seconds: float) -> None:
        if sleeps is not None:
            sleeps.append(seconds)

    return DeployEngine(site.state, clock=FakeClock(), prober=prober or FakeProber("none"), sleep=sleep)


def _read(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def _seed(site: Site, cert: bytes = b"OLD CERT\n", key: bytes = KEY2) -> None:
    site.cert.write_bytes(cert)
    site.cert.chmod(0o644)
    site.key.write_bytes(key)
    site.key.chmod(0o600)


def _verify(expected: str, **kw: object) -> VerifySpec:
    return VerifySpec(host="127.0.0.1", port=8443, expected_fingerprint=expected, server_name="www.example",
                      **kw)  # type: ignore[arg-type]


# ---- writing ----------------------------------------------------------------------------------------
async def test_first_deploy_creates_files_with_default_modes(site: Site) -> None:
    result = await engine_for(site).apply(site.plan(b"NEW CERT\n"))
    assert result.success and result.status == "deployed" and result.changed and not result.rolled_back
    assert site.contents() == (b"NEW CERT\n", KEY)
    assert site.cert.stat().st_mode & 0o7777 == 0o644 and site.key.stat().st_mode & 0o7777 == 0o600
    assert [f.action for f in result.files] == ["created", "created"] and all(f.backup is None for f in result.files)
    assert result.files_written == (str(site.cert), str(site.key))
    assert result.deployed_at == FakeClock().now()
    assert [s.name for s in result.steps] == ["reload"] and site.reload_count() == 1
    assert result.verification.status == "skipped" and "verify_endpoint" in (result.verification.error or "")
    assert site.leftovers() == [] and list((site.state / "deploy-journal").iterdir()) == []


async def test_replacing_keeps_the_replaced_files_owner_and_mode_unless_explicit(site: Site) -> None:
    _seed(site)
    uid, gid = (4242, 4343) if os.geteuid() == 0 else (os.geteuid(), os.getegid())
    os.chown(site.cert, uid, gid)
    site.cert.chmod(0o640)
    result = await engine_for(site).apply(site.plan(b"NEW CERT\n"))
    assert result.success, result.message
    st = site.cert.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o640, uid, gid)
    assert site.key.stat().st_mode & 0o7777 == 0o600

    explicit = site.plan(b"NEWER CERT\n", files=(
        PlannedFile(str(site.cert), b"NEWER CERT\n", mode=0o444, owner=os.geteuid(), group=os.getegid()),
    ))
    assert (await engine_for(site).apply(explicit)).success
    st = site.cert.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o444, os.geteuid(), os.getegid())


async def test_the_backup_is_the_replaced_file_untouched(site: Site) -> None:
    _seed(site)
    old = site.cert.stat()
    result = await engine_for(site).apply(site.plan(b"NEW CERT\n"))
    backup = result.files[0].backup or ""
    assert os.path.basename(backup).startswith("cert.pem" + BACKUP_MARK) and len(backup.rsplit(".", 1)[1]) == 19
    assert _read(backup) == b"OLD CERT\n"
    assert (os.stat(backup).st_ino, os.stat(backup).st_mode) == (old.st_ino, old.st_mode)
    assert site.cert.stat().st_ino != old.st_ino  # a new inode renamed into place, never an in-place write


async def test_an_identical_second_deploy_writes_nothing_and_does_not_reload(site: Site) -> None:
    engine = engine_for(site)
    assert (await engine.apply(site.plan(b"NEW CERT\n"))).status == "deployed"
    before = [(p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_ctime_ns) for p in (site.cert, site.key)]
    listing = sorted(os.listdir(site.root))
    await asyncio.sleep(0.01)
    again = await engine.apply(site.plan(b"NEW CERT\n"))
    assert again.success and again.status == "unchanged" and not again.changed
    assert [f.action for f in again.files] == ["unchanged", "unchanged"] and again.steps == ()
    assert [(p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_ctime_ns) for p in (site.cert, site.key)] == before
    assert sorted(os.listdir(site.root)) == listing and site.reload_count() == 1


async def test_only_the_files_that_differ_are_replaced(site: Site) -> None:
    engine = engine_for(site)
    await engine.apply(site.plan(b"CERT 1\n"))
    key_inode = site.key.stat().st_ino
    result = await engine.apply(site.plan(b"CERT 2\n"))
    assert [f.action for f in result.files] == ["replaced", "unchanged"] and site.reload_count() == 2
    assert site.key.stat().st_ino == key_inode and backups_of(str(site.key)) == []


async def test_a_changed_explicit_mode_alone_is_a_change(site: Site) -> None:
    _seed(site, cert=b"SAME\n")
    plan = site.plan(b"SAME\n", files=(PlannedFile(str(site.cert), b"SAME\n", mode=0o600),))
    result = await engine_for(site).apply(plan)
    assert result.status == "deployed" and site.cert.stat().st_mode & 0o7777 == 0o600


@pytest.mark.parametrize(("retention", "kept"), [(2, 2), (0, 0), (-1, 5), (3, 3)])
async def test_backups_are_pruned_to_the_retention(site: Site, retention: int, kept: int) -> None:
    engine = engine_for(site)
    for n in range(6):
        result = await engine.apply(site.plan(f"CERT {n}\n".encode(), backup_retention=retention))
        assert result.success
    backups = backups_of(str(site.cert))
    assert len(backups) == kept
    # The newest backups survive, oldest first: CERT 5 is live, so they hold CERT 5-kept .. CERT 4.
    assert [_read(b) for b in backups] == [f"CERT {n}\n".encode() for n in range(5 - kept, 5)]


async def test_a_symlinked_path_keeps_its_link(site: Site) -> None:
    real = site.root / "archive"
    real.mkdir()
    (real / "cert1.pem").write_bytes(b"OLD\n")
    site.cert.symlink_to(real / "cert1.pem")
    result = await engine_for(site).apply(site.plan(b"NEW\n"))
    assert result.success and site.cert.is_symlink() and (real / "cert1.pem").read_bytes() == b"NEW\n"


# ---- failures and rollback --------------------------------------------------------------------------
async def test_a_failing_config_test_puts_the_old_files_back_without_reloading(site: Site) -> None:
    _seed(site)
    inodes = [p.stat().st_ino for p in (site.cert, site.key)]
    plan = site.plan(b"BAD CERT\n", test=site.test_command("BAD"))
    result = await engine_for(site).apply(plan)
    assert not result.success and result.status == "rolled_back" and result.rolled_back and not result.changed
    assert "config test failed" in result.message and "certificate rejected" in result.message
    assert [(s.name, s.exit_code, s.output) for s in result.steps] == [("test", 1, "config test: certificate rejected")]
    assert site.contents() == (b"OLD CERT\n", KEY2)
    assert [p.stat().st_ino for p in (site.cert, site.key)] == inodes  # the very same files
    assert site.reload_count() == 0 and site.leftovers() == [] and backups_of(str(site.cert)) == []
    assert result.verification.status == "skipped"


async def test_the_config_test_sees_the_new_files(site: Site) -> None:
    _seed(site)
    result = await engine_for(site).apply(site.plan(b"NEW CERT\n", test=site.test_command("OLD")))
    assert result.success, "the test ran against the old file"


async def test_a_new_file_is_removed_again_on_rollback(site: Site) -> None:
    plan = site.plan(b"BAD CERT\n", test=site.test_command("BAD"))
    result = await engine_for(site).apply(plan)
    assert result.status == "rolled_back" and site.contents() == (None, None)


async def test_a_failing_reload_restores_and_reloads_again(site: Site) -> None:
    _seed(site)
    plan = site.plan(b"BAD CERT\n", reload=site.reload_command(fail_if_cert_contains="BAD"))
    result = await engine_for(site).apply(plan)
    assert result.status == "rolled_back" and result.rolled_back and "reload failed" in result.message
    assert [(s.name, s.ok) for s in result.steps] == [("reload", False), ("rollback-reload", True)]
    assert site.contents() == (b"OLD CERT\n", KEY2) and site.reload_count() == 2
    assert "the server reloaded" in result.message


async def test_a_reload_that_keeps_failing_is_a_rollback_failure(site: Site) -> None:
    _seed(site)
    plan = site.plan(b"NEW CERT\n", reload=site.reload_command(fail_if_cert_contains="CERT"))
    result = await engine_for(site).apply(plan)
    assert result.status == "rollback_failed" and not result.success
    assert result.rolled_back  # the files are back; the server is in an unknown state, and the message says so
    assert "ROLLBACK FAILED" in result.message and "reloading after the restore failed" in result.message
    assert site.contents() == (b"OLD CERT\n", KEY2)


async def test_a_verification_mismatch_rolls_back(site: Site) -> None:
    _seed(site)
    sleeps: list[float] = []
    prober = FakeProber("old-fingerprint")
    plan = site.plan(b"NEW CERT\n", verify=_verify("new-fingerprint", attempts=6, backoff=1.0, max_backoff=3.0))
    result = await engine_for(site, prober, sleeps).apply(plan)
    assert result.status == "rolled_back" and result.rolled_back
    assert "verification failed" in result.message
    v = result.verification
    assert (v.status, v.fingerprint, v.expected_fingerprint, v.attempts) == (
        "failed", "old-fingerprint", "new-fingerprint", 6)
    assert v.endpoint == "127.0.0.1:8443" and "expected new-fingerprint" in (v.error or "")
    assert sleeps == [1.0, 2.0, 3.0, 3.0, 3.0]  # doubling, capped
    assert prober.calls[0] == ("127.0.0.1", 8443, "www.example")
    assert site.contents() == (b"OLD CERT\n", KEY2) and site.reload_count() == 2


async def test_verification_retries_until_the_new_leaf_is_served(site: Site) -> None:
    sleeps: list[float] = []
    prober = FakeProber(ProbeError("connection refused"), "old", "new")
    result = await engine_for(site, prober, sleeps).apply(
        site.plan(b"NEW\n", verify=_verify("new", backoff=0.1)))
    assert result.success and result.verification.status == "success" and result.verification.attempts == 3
    assert sleeps == [0.1, 0.2] and "the new certificate is served" in result.message


async def test_an_unreachable_endpoint_fails_verification_with_the_probe_error(site: Site) -> None:
    prober = FakeProber(ProbeError("TLS handshake with 127.0.0.1:8443 failed: ConnectionRefusedError"))
    result = await engine_for(site, prober).apply(site.plan(b"NEW\n", verify=_verify("new", attempts=2)))
    assert result.status == "rolled_back" and "ConnectionRefusedError" in (result.verification.error or "")
    assert site.contents() == (None, None)


@pytest.mark.parametrize(("plan_change", "expected"), [
    ({"files": (PlannedFile("relative/cert.pem", b"x"),)}, "must be an absolute path"),
    ({"files": (PlannedFile("/nonexistent-dir-certctl/cert.pem", b"x"),)}, "does not exist"),
    ({"files": (PlannedFile("/tmp/../etc/x", b"x"),)}, "'..'"),
    ({"files": ()}, "no files"),
    ({"files": (PlannedFile("{root}/a", b"x", owner="no-such-user-certctl"),)}, "no user named"),
    ({"files": (PlannedFile("{root}/a", b"x", group="no-such-group-certctl"),)}, "no group named"),
    ({"files": (PlannedFile("{root}/a", b"x"), PlannedFile("{root}/a", b"y"))}, "is also the"),
    ({"files": (PlannedFile("{root}", b"x"),)}, "not a regular file"),
    ({"files": (PlannedFile("{root}/a", b"x", mode=0o17777),)}, "file mode"),
    ({"backup_retention": -2}, "backup_retention"),
])
async def test_a_bad_plan_is_refused_before_anything_is_written(
    site: Site, plan_change: dict[str, object], expected: str
) -> None:
    change = dict(plan_change)
    if "files" in change:
        change["files"] = tuple(
            PlannedFile(f.path.replace("{root}", str(site.root)), f.content, mode=f.mode, owner=f.owner,
                        group=f.group) for f in change["files"])  # type: ignore[attr-defined]
    before = sorted(os.listdir(site.root))
    result = await engine_for(site).apply(site.plan(b"NEW\n", **change))
    assert result.status == "failed" and not result.success and expected in result.message, result.message
    assert sorted(os.listdir(site.root)) == before and site.reload_count() == 0


async def test_a_write_failure_midway_leaves_the_old_files(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    _seed(site)
    real_replace = os.replace
    calls = 0

    def flaky_replace(src: str, dst: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # the key's rename fails after the cert's went through
            raise OSError(28, "No space left on device", dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    result = await engine_for(site).apply(site.plan(b"NEW CERT\n"))
    monkeypatch.setattr(os, "replace", real_replace)
    assert result.status == "failed" and "No space left on device" in result.message
    assert site.contents() == (b"OLD CERT\n", KEY2) and site.leftovers() == [] and site.reload_count() == 0


# ---- crashes ----------------------------------------------------------------------------------------
CRASH_POINTS = ["prepared", "staged", "renamed:0", "renamed:1", "renamed", "tested", "reloaded", "verified",
                "committed"]


@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_a_crash_at_any_point_ends_all_old_or_all_new_after_recovery(site: Site, point: str) -> None:
    _seed(site)
    engine = engine_for(site, FakeProber("new"))

    def crash(name: str) -> None:
        if name == point:
            raise Crash(name)

    engine.checkpoint = crash
    plan = site.plan(b"NEW CERT\n", key=KEY, test=site.test_command("nothing-fails"),
                     verify=_verify("new", attempts=1))
    with pytest.raises(Crash):
        await engine.apply(plan)
    if point == "renamed:0":
        assert site.contents() == (b"NEW CERT\n", KEY2), "the test should catch the mixed state it repairs"

    done = await engine_for(site).recover()  # the agent starting again
    old, new = (b"OLD CERT\n", KEY2), (b"NEW CERT\n", KEY)
    expected = new if point == "committed" else old
    assert site.contents() == expected
    assert site.leftovers() == [] and list((site.state / "deploy-journal").glob("*")) == []
    assert (len(done) == 1) == (point != "committed")
    # A reload that had started is run again so the server matches the restored files.
    assert site.reload_count() == {"reloaded": 2, "verified": 2, "committed": 1}.get(point, 0)
    if point != "committed":
        assert backups_of(str(site.cert)) == [] and backups_of(str(site.key)) == []
    assert await engine_for(site).recover() == []  # nothing left to do


async def test_a_sigkilled_agent_between_renames_is_repaired_on_restart(site: Site) -> None:
    """The real thing: the process is SIGKILLed after the first rename, leaving new cert + old key."""
    _seed(site)
    script = textwrap.dedent(f"""
        import asyncio, os, signal
        from certctl.agent.deploy import DeployEngine
        from certctl.connectors.targets.plan import Command, Plan, PlannedFile
        engine = DeployEngine({str(site.state)!r})
        engine.checkpoint = lambda name: os.kill(os.getpid(), signal.SIGKILL) if name == "renamed:0" else None
        plan = Plan(files=(PlannedFile({str(site.cert)!r}, b"NEW CERT\\n"),
                           PlannedFile({str(site.key)!r}, {KEY!r}, secret=True)))
        asyncio.run(engine.apply(plan))
    """)
    process = await asyncio.create_subprocess_exec(PY, "-c", script, cwd=Path(__file__).parent.parent,
                                                   stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == -9, stderr.decode()
    assert site.contents() == (b"NEW CERT\n", KEY2)  # mixed: exactly what recovery is for
    journal = json.loads(next((site.state / "deploy-journal").glob("*.json")).read_text())
    assert journal["phase"] == "renaming" and KEY_LINE.decode() not in json.dumps(journal)
    notes = await DeployEngine(site.state).recover()
    assert len(notes) == 1 and "undone" in notes[0]
    assert site.contents() == (b"OLD CERT\n", KEY2) and site.leftovers() == []


# ---- locks ------------------------------------------------------------------------------------------
async def test_concurrent_deploys_of_the_same_files_do_not_interleave(site: Site) -> None:
    """The config test checks that cert and key carry the same tag, twice, 50 ms apart."""
    script = ("import sys, time\n"
              "def tags(): return open(sys.argv[1]).read().split()[-1], open(sys.argv[2]).read().split()[-1]\n"
              "a = tags(); time.sleep(0.05); b = tags()\n"
              "sys.exit(0 if a == b and a[0] == a[1] else 1)")
    test = Command((*PYC, script, str(site.cert), str(site.key)))
    engine = engine_for(site)

    def plan(tag: str) -> Plan:
        return site.plan(f"CERT {tag}\n".encode(), key=f"KEY {tag}\n".encode(), test=test)

    results = await asyncio.gather(*(engine.apply(plan(str(n))) for n in range(4)))
    assert all(r.success for r in results), [r.message for r in results]
    cert, key = site.contents()
    assert cert is not None and key is not None and cert.split()[-1] == key.split()[-1]


# ---- commands ---------------------------------------------------------------------------------------
def test_command_strings_are_split_without_a_shell_and_metacharacters_refused() -> None:
    assert Command.parse("nginx -t -c /etc/nginx/nginx.conf").argv == ("nginx", "-t", "-c", "/etc/nginx/nginx.conf")
    assert Command.parse(["kill", "-USR2", "42"]).argv == ("kill", "-USR2", "42")
    for bad in ("nginx -t && curl evil", "nginx -s reload; rm -rf /", "echo $(id)", "echo `id`", "a | b",
                "x > /etc/passwd", "a\nb", 'say "hi"', "x" * 1025):
        with pytest.raises(ValidationError, match=r"without a shell|at most"):
            Command.parse(bad)
    for bad_list in ([], [""], ["ok", 5]):
        with pytest.raises(ValidationError):
            Command.parse(bad_list)  # type: ignore[arg-type]


async def test_arguments_reach_the_program_literally(site: Site, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    literal = f"$(touch {marker}); `touch {marker}` && touch {marker}"
    reload = Command((*PYC, "import sys; print(sys.argv[1])", literal))
    result = await engine_for(site).apply(site.plan(b"NEW\n", reload=reload))
    assert result.success and result.steps[0].output == literal and not marker.exists()


async def test_a_hanging_command_is_killed_with_its_children(site: Site, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "open(sys.argv[1], 'w').write(str(child.pid)); print('started', flush=True); time.sleep(60)")
    reload = Command((*PYC, script, str(pid_file)), timeout=1.0)
    started = time.monotonic()
    result = await engine_for(site).apply(site.plan(b"NEW\n", reload=reload))
    assert time.monotonic() - started < 10
    step = result.steps[0]
    assert step.timed_out and not step.ok and "timed out after 1s" in step.detail and step.output == "started"
    assert result.status == "rollback_failed"  # the reload after the restore hangs too, and is killed too
    assert _gone_within(int(pid_file.read_text()), 5.0), "the command's child outlived the timeout"


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.05)
    return not _running(pid)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


async def test_a_missing_program_is_a_failed_step(site: Site) -> None:
    result = await engine_for(site).apply(site.plan(b"NEW\n", reload=Command(("certctl-no-such-program",))))
    assert result.steps[0].detail.startswith("cannot run certctl-no-such-program")
    assert result.status == "rollback_failed" and site.contents() == (None, None)


async def test_long_output_is_trimmed_to_its_end(site: Site) -> None:
    reload = Command((*PYC, "print('x' * 20000 + 'THE END')"))
    result = await engine_for(site).apply(site.plan(b"NEW\n", reload=reload))
    output = result.steps[0].output
    assert len(output) == 2001 and output.startswith("…") and output.endswith("THE END")


# ---- secrets ----------------------------------------------------------------------------------------
async def test_private_key_bytes_never_reach_results_errors_or_logs(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # A config test that prints the key file (some tools echo what they could not parse) and fails.
    test = Command((*PYC, "import sys; print(open(sys.argv[1]).read()); sys.exit(1)", str(site.key)))
    plan = site.plan(b"NEW\n", test=test)
    assert KEY_LINE not in repr(plan).encode()
    result = await engine_for(site).apply(plan)
    assert result.status == "rolled_back" and "[private key redacted]" in result.steps[0].output
    # Without the PEM armour too: any line of a secret file is scrubbed.
    bare = Command((*PYC, "import sys; print('bad line: ' + open(sys.argv[1]).read().splitlines()[1])",
                    str(site.key)))
    scrubbed = await engine_for(site).apply(site.plan(b"NEW 2\n", reload=bare))
    assert scrubbed.steps[0].output == "bad line: [redacted]"
    text = json.dumps([result.to_dict(), scrubbed.to_dict()], default=str) + repr(result) + caplog.text
    assert KEY_LINE.decode() not in text and "SECRETSECRET" not in text


# ---- dry run ----------------------------------------------------------------------------------------
async def test_dry_run_reports_problems_and_changes_nothing(site: Site) -> None:
    _seed(site)
    before = {p: p.stat().st_mtime_ns for p in (site.cert, site.key)}
    good = await engine_for(site, FakeProber("served")).dry_run(
        site.plan(b"NEW\n", key=KEY2, test=site.test_command("nothing"), verify=_verify("new")))
    assert good.success and good.status == "dry_run" and not good.changed, good.message
    assert [f.action for f in good.files] == ["would_replace", "unchanged"]
    names = [s.name for s in good.steps]
    assert names == ["writable:cert", "writable:key", "command:test", "command:reload", "test", "verify-endpoint"]
    assert "SHA-256 served" in good.steps[-1].detail

    bad = await engine_for(site, FakeProber(ProbeError("refused"))).dry_run(site.plan(
        b"NEW\n", files=(PlannedFile("/nonexistent-certctl/cert.pem", None),),
        reload=Command(("certctl-no-such-program",)), test=site.test_command("OLD"), verify=_verify("x")))
    assert not bad.success
    for problem in ("does not exist", "certctl-no-such-program not found", "test:", "verify-endpoint: refused"):
        assert problem in bad.message, bad.message
    assert {p: p.stat().st_mtime_ns for p in (site.cert, site.key)} == before and site.reload_count() == 0
