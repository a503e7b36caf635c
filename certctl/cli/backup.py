"""`certctl backup create | verify | restore` (docs/operator/backup.md).

Exit status: 0 done; 1 the operation or a check failed (a damaged, altered or truncated archive included);
2 a usage or configuration error (no passphrase, bad settings); 3 restore refused (live data: stop the servers,
then --force); 4 wrong passphrase.

The passphrase comes from `--passphrase-file`, else CERTCTL_BACKUP_PASSPHRASE, else a prompt on a terminal.
It is never an argument: command lines are visible to every local user.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

backup_app = typer.Typer(help="Encrypted backups: database snapshot, CA keys and operator files", no_args_is_help=True)

PassphraseFile = Annotated[
    Path | None,
    typer.Option("--passphrase-file",
                 help="File holding the passphrase (else CERTCTL_BACKUP_PASSPHRASE, else a prompt)"),
]
_RESTORED_PATHS = ("CERTCTL_TLS_CERT_PATH", "CERTCTL_TLS_KEY_PATH", "CERTCTL_SERVER_TLS_CERT_PATH",
                   "CERTCTL_SERVER_TLS_KEY_PATH", "CERTCTL_CA_CERT_PATH", "CERTCTL_CA_KEY_PATH")
DataDir = Annotated[Path | None, typer.Option(help="Data directory (CERTCTL_DATA_DIR)")]


def _passphrase(passphrase_file: Path | None, *, confirm: bool) -> str:
    if passphrase_file is not None:
        try:
            # One trailing newline is what `echo secret > file` leaves; the rest is taken as written.
            value = passphrase_file.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
        except (OSError, UnicodeDecodeError) as exc:
            typer.echo(f"certctl: cannot read --passphrase-file {passphrase_file}: {exc}", err=True)
            raise typer.Exit(2) from None
    elif os.environ.get("CERTCTL_BACKUP_PASSPHRASE"):
        value = os.environ["CERTCTL_BACKUP_PASSPHRASE"]
    elif sys.stdin.isatty():
        value = typer.prompt("Backup passphrase", hide_input=True, confirmation_prompt=confirm)
    else:
        typer.echo("certctl: no backup passphrase: use --passphrase-file or CERTCTL_BACKUP_PASSPHRASE", err=True)
        raise typer.Exit(2)
    if not value:
        typer.echo("certctl: the backup passphrase is empty", err=True)
        raise typer.Exit(2)
    return value


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"certctl: {message}", err=True)
    return typer.Exit(code)


def _run_service(coro: object) -> object:
    """Run a service coroutine; map its errors to the documented exit statuses."""
    from certctl.pki.backup_archive import ArchiveError, WrongPassphrase
    from certctl.services.backup import BackupError, RestoreRefused

    try:
        return asyncio.run(coro)  # type: ignore[arg-type]  # a coroutine of the backup service
    except WrongPassphrase as exc:
        raise _fail(str(exc), 4) from None
    except RestoreRefused as exc:
        raise _fail(f"restore refused: {exc}", 3) from None
    except (ArchiveError, BackupError) as exc:
        raise _fail(str(exc)) from None


@backup_app.command("create")
def create(
    output: Annotated[Path, typer.Option("-o", "--output", help="Archive to write (must not exist; mode 0600)")],
    passphrase_file: PassphraseFile = None,
    data_dir: DataDir = None,
) -> None:
    """Write one encrypted archive: a consistent database snapshot, the CA/OCSP keys and the operator files."""
    from certctl.cli.main import _settings

    settings = _settings(data_dir=data_dir)
    passphrase = _passphrase(passphrase_file, confirm=True)
    from certctl.services import backup  # after the cheap checks: it loads the whole service layer
    result = _run_service(backup.create(settings, output, passphrase))
    assert isinstance(result, backup.CreateResult)
    typer.echo(f"{result.path}: {result.size} bytes in {result.seconds:.1f} s\n{backup.describe(result.manifest)}")
    for ref in result.manifest["key_references"]["missing"]:
        typer.echo(f"certctl: warning: a CA or OCSP responder references key '{ref}', which is not in the key "
                   "directory: that CA cannot sign, now or after a restore", err=True)


@backup_app.command("verify")
def verify(
    archive: Annotated[Path, typer.Argument(help="Archive made by `certctl backup create`")],
    passphrase_file: PassphraseFile = None,
    scratch_url: Annotated[
        str | None,
        typer.Option(help="PostgreSQL server for the throwaway database (default: CERTCTL_DATABASE_URL)"),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Decrypt, check every checksum, restore into a throwaway database, compare row counts, test-sign with the CA."""
    from certctl.cli.main import _settings

    settings = _settings(data_dir=data_dir)
    passphrase = _passphrase(passphrase_file, confirm=False)
    from certctl.services import backup  # after the cheap checks: it loads the whole service layer
    result = _run_service(backup.verify(settings, archive, passphrase, scratch_url=scratch_url))
    assert isinstance(result, backup.VerifyResult)
    typer.echo(backup.describe(result.manifest))
    for line in result.passed:
        typer.echo(f"  ok       {line}")
    for line in result.skipped:
        typer.echo(f"  skipped  {line}")
    for line in result.problems:
        typer.echo(f"  FAILED   {line}")
    if not result.ok:
        raise _fail(f"{archive}: verification failed ({len(result.problems)} problems)")
    typer.echo(f"{archive}: verified in {result.seconds:.1f} s")


@backup_app.command("restore")
def restore(
    archive: Annotated[Path, typer.Argument(help="Archive made by `certctl backup create`")],
    passphrase_file: PassphraseFile = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a database that holds data and files that differ (kept aside)")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Restore into the configured database and data directory (servers stopped), then migrate to head."""
    from certctl.config import Settings, SettingsError

    # On a new host the operator's TLS and CA files may not exist yet: the archive brings them back to the paths
    # it recorded. Settings would refuse their variables, and restore does not read them, so they are left out.
    env = {k: v for k, v in os.environ.items() if not (k in _RESTORED_PATHS and not Path(v).is_file())}
    try:
        settings = Settings.from_env(env).with_overrides(data_dir=data_dir)
    except SettingsError as exc:
        raise _fail(f"configuration error: {exc}", 2) from None
    passphrase = _passphrase(passphrase_file, confirm=False)
    from certctl.services import backup

    result = _run_service(backup.restore(settings, archive, passphrase, force=force))
    assert isinstance(result, backup.RestoreResult)
    typer.echo(f"restored: {backup.describe(result.manifest)}")
    outside = [path for path in result.files if not Path(path).is_relative_to(settings.data_dir)]
    typer.echo(f"database at revision {result.revision}; {len(result.files)} files in place"
               + "".join(f"\n  {path}" for path in outside))
    if result.moved_aside is not None:
        typer.echo(f"the replaced database/files are kept in {result.moved_aside}")
    typer.echo(f"done in {result.seconds:.1f} s; start the server(s)")
