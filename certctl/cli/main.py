"""`certctl server`, `certctl db upgrade`, and friends."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from certctl import __version__
from certctl.cli.backup import backup_app
from certctl.config import Settings, SettingsError

if TYPE_CHECKING:
    import uvicorn

app = typer.Typer(help="certctl: TLS certificate lifecycle platform", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(backup_app, name="backup")

log = logging.getLogger("certctl.server")


def _settings(**overrides: object) -> Settings:
    try:
        return Settings.from_env().with_overrides(**overrides)
    except SettingsError as exc:
        typer.echo(f"certctl: configuration error: {exc}", err=True)
        raise typer.Exit(2) from None


def _export(settings: Settings) -> None:
    # Worker processes are spawned fresh and rebuild Settings from the environment; command-line
    # options must reach them the same way.
    os.environ.update(
        {
            "CERTCTL_SERVER_HOST": settings.host,
            "CERTCTL_SERVER_PORT": str(settings.port),
            "CERTCTL_DATA_DIR": str(settings.data_dir.resolve()),
            "CERTCTL_SERVER_WORKERS": str(settings.workers),
            "CERTCTL_DEMO_SEED": "true" if settings.demo_seed else "false",
        }
    )


@app.command()
def server(
    host: Annotated[str | None, typer.Option(help="Address to bind (CERTCTL_SERVER_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="HTTPS port (CERTCTL_SERVER_PORT)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (CERTCTL_DATA_DIR)")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes sharing the port (CERTCTL_SERVER_WORKERS, default 1)")
    ] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Seed a realistic demo inventory")] = False,
) -> None:
    """Start the control plane over HTTPS (TLS 1.3). SIGHUP reloads the TLS certificate; SIGTERM stops cleanly."""
    # Settings first: a bad value is reported before the slow imports below.
    settings = _settings(host=host, port=port, data_dir=data_dir, workers=workers, demo_seed=demo or None)

    from certctl.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _export(settings)
    multi = settings.workers > 1
    # Migrations, seeds and the admin key happen once, before any worker exists. With several
    # workers that is a short-lived child, so the supervisor never loads the application (memory).
    if (_prepare_in_child(settings) if multi else _prepare(settings)) != 0:
        raise typer.Exit(1)
    if multi:
        _exec_supervisor(settings)
    from certctl.api.app import create_app
    from certctl.api.serving import certificate_paths, server_config

    config = server_config(settings, create_app(settings, prepare=False, server_process=True))
    typer.echo(f"certctl {__version__} listening on https://{settings.host}:{settings.port}", err=True)
    _serve_single(config, *certificate_paths(settings))


def _prepare(settings: Settings) -> int:
    """First boot (TLS pair, migrations, seeds, admin key); 0 on success, else the reason is printed."""
    from certctl.api.app import prepare_server
    from certctl.logs import configure_logging
    from certctl.pki.selfsigned import ensure_server_certificate

    configure_logging(settings.log_level, settings.log_format)
    try:
        if not (settings.tls_cert_path and settings.tls_key_path):
            ensure_server_certificate(settings.data_dir, settings.host)
        asyncio.run(prepare_server(settings))
    except Exception as exc:  # an unreachable database or a failed migration: say so and stop
        log.exception("startup failed")
        typer.echo(f"certctl: cannot start: {exc}", err=True)
        return 1
    return 0


def prepare_from_env() -> int:
    """First boot in a child process: the settings the parent exported to the environment (`_export`)."""
    return _prepare(Settings.from_env())


def _prepare_in_child(settings: Settings) -> int:
    # A plain child process (not multiprocessing's, which would leave a resource-tracker process behind).
    code = "import sys; from certctl.cli.main import prepare_from_env; sys.exit(prepare_from_env())"
    return subprocess.run([sys.executable, "-c", code], check=False).returncode  # noqa: S603 - our own module


def _serve_single(config: uvicorn.Config, cert: Path, key: Path) -> None:
    import uvicorn

    from certctl.api.serving import reload_certificate

    server = uvicorn.Server(config)

    def on_hup(_sig: int, _frame: FrameType | None) -> None:
        if config.ssl is not None:
            reload_certificate(config.ssl, cert, key)

    def after_shutdown(_sig: int, _frame: FrameType | None) -> None:
        # uvicorn re-raises the stop signal once it has shut down gracefully; by then the
        # audit trail is flushed, so a SIGTERM stop is a clean exit (status 0), not a kill.
        return None

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, after_shutdown)
    signal.signal(signal.SIGINT, after_shutdown)
    server.run()
    if not server.started:
        raise typer.Exit(3)


def _exec_supervisor(settings: Settings) -> NoReturn:
    """Become the supervisor of the workers (certctl.api.supervisor): same PID, none of this process's modules."""
    import uvicorn

    from certctl.observability.metrics import MULTIPROC_ENV, prepare_multiprocess_dir

    created = MULTIPROC_ENV not in os.environ
    # Before any worker starts: workers write their metrics to files there, and any of them serves the sum.
    metrics_dir = prepare_multiprocess_dir()
    config = uvicorn.Config("certctl.api.worker:worker_app", host=settings.host, port=settings.port)
    sock = config.bind_socket()  # exits with status 3 when the port is taken
    os.set_inheritable(sock.fileno(), True)
    typer.echo(
        f"certctl {__version__} listening on https://{settings.host}:{settings.port} with {settings.workers} workers",
        err=True,
    )
    args = [sys.executable, "-m", "certctl.api.supervisor", "--fd", str(sock.fileno()),
            "--workers", str(settings.workers), "--grace", str(settings.audit_flush_timeout_seconds),
            "--log-level", settings.log_level, "--log-format", settings.log_format]
    if created:
        args += ["--metrics-dir", str(metrics_dir)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, args)  # noqa: S606 - our own interpreter and module, no shell


@db_app.command("upgrade")
def db_upgrade(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (CERTCTL_DATA_DIR)")] = None,
) -> None:
    """Apply pending schema migrations and exit."""
    from certctl.store import migrate
    from certctl.store.database import Database

    settings = _settings(data_dir=data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    async def run() -> str | None:
        db = Database(settings.effective_database_url)
        try:
            await migrate.upgrade(db)
            return await migrate.current_revision(db)
        finally:
            await db.dispose()

    try:
        revision = asyncio.run(run())
    except Exception as exc:
        typer.echo(f"certctl: migration failed: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"database at revision {revision}")


@db_app.command("current")
def db_current(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (CERTCTL_DATA_DIR)")] = None,
) -> None:
    """Print the database's schema revision and the newest one this version knows."""
    from certctl.store import migrate
    from certctl.store.database import Database

    settings = _settings(data_dir=data_dir)

    async def run() -> str | None:
        if settings.database_url is None and not settings.sqlite_path.exists():
            return None  # never create an empty database just to say it is empty
        db = Database(settings.effective_database_url)
        try:
            return await migrate.current_revision(db)
        finally:
            await db.dispose()

    try:
        current = asyncio.run(run())
    except Exception as exc:  # unreachable server, bad credentials: say so without a traceback
        typer.echo(f"certctl: cannot read the database: {exc}", err=True)
        raise typer.Exit(1) from None
    head = migrate.head_revision()
    typer.echo(f"database revision: {current or 'none'}\nhead revision: {head}")
    if current != head:
        raise typer.Exit(1)


admin_key_app = typer.Typer(help="The generated admin API key", no_args_is_help=True)
app.add_typer(admin_key_app, name="admin-key")


@admin_key_app.command("rotate")
def admin_key_rotate(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (CERTCTL_DATA_DIR)")] = None,
) -> None:
    """Replace the admin key (lost or exposed): prints the new key once. Restart the server afterwards."""
    from certctl.domain.clock import Clock
    from certctl.pki.sealing import ConfigSealer, load_or_create_key_file
    from certctl.services.admin_keys import rotate_admin_key
    from certctl.services.context import ServiceContext
    from certctl.store import migrate
    from certctl.store.database import Database

    settings = _settings(data_dir=data_dir)

    async def run() -> str:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.effective_database_url)
        try:
            await migrate.upgrade(db)
            passphrase = settings.config_encryption_key or load_or_create_key_file(settings.data_dir / "config.key")
            ctx = ServiceContext(db=db, clock=Clock(), settings=settings, sealer=ConfigSealer(passphrase))
            return await rotate_admin_key(ctx)
        finally:
            await db.dispose()

    try:
        key = asyncio.run(run())
    except Exception as exc:
        typer.echo(f"certctl: cannot rotate the admin key: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"\n  New admin API key (shown once; stored only as a hash):\n\n    {key}\n\n"
        f"  It is also in {settings.data_dir / 'admin.key'} (mode 0600).\n"
        "  Restart the server: until then it accepts the old key and not this one.\n"
    )


@app.command()
def agent(
    config: Annotated[Path | None, typer.Option("--config", help="env-style file of CERTCTL_* settings")] = None,
    once: Annotated[bool, typer.Option("--once", help="one heartbeat and one round of work, then exit")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="validate the targets of pending deployments without changing them")
    ] = False,
) -> None:
    """Run the certctl agent on this host (keys are made and kept here)."""
    import json

    from certctl.agent.config import AgentConfig, AgentConfigError
    from certctl.agent.deployer import TargetDeployer
    from certctl.agent.runner import AgentRunner
    from certctl.logs import configure_logging

    try:
        settings = AgentConfig.from_env(config_file=config)
    except AgentConfigError as exc:
        typer.echo(f"certctl agent: configuration error: {exc}", err=True)
        raise typer.Exit(2) from None
    configure_logging(os.environ.get("CERTCTL_LOG_LEVEL", "info"), os.environ.get("CERTCTL_LOG_FORMAT", "json"))

    async def main() -> int:
        from certctl.observability import tracing

        tracing.setup("certctl-agent")  # spans of target connector calls, when OTEL_EXPORTER_OTLP_ENDPOINT is set
        runner = AgentRunner(settings, deployer=TargetDeployer.for_state_dir(settings.state_dir))
        try:
            if dry_run:
                results = await runner.dry_run()
                typer.echo(json.dumps(results, indent=2, default=str))
                return 0 if all(r.get("success") for r in results) else 1
            if once:
                await runner.run_once()
                return 0
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            return await runner.run(stop=stop)
        finally:
            await runner.client.close()
            tracing.shutdown()

    raise typer.Exit(asyncio.run(main()))


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


