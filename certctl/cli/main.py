"""`certctl server`, `certctl db upgrade`, and friends."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import ssl
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

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

# TLS 1.3 only, like the reference: no TLS 1.2 cipher negotiation to get wrong.
TLS_MINIMUM = ssl.TLSVersion.TLSv1_3


def _settings(**overrides: object) -> Settings:
    try:
        return Settings.from_env().with_overrides(**overrides)
    except SettingsError as exc:
        typer.echo(f"certctl: configuration error: {exc}", err=True)
        raise typer.Exit(2) from None


def tls_context(config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """uvicorn's `ssl_context_factory`: a server context with TLS 1.3 as the floor.

    Module-level so it pickles into `--workers` child processes, each of which builds its own.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_MINIMUM
    ctx.options |= ssl.OP_NO_COMPRESSION
    assert config.ssl_certfile is not None
    ctx.load_cert_chain(str(config.ssl_certfile), str(config.ssl_keyfile) if config.ssl_keyfile else None)
    return ctx


def reload_certificate(ctx: ssl.SSLContext, cert: Path, key: Path) -> bool:
    """Load a new certificate into the live context; new connections use it, open ones keep theirs.

    The files are first tried in a scratch context so a broken pair never replaces a working one.
    """
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(cert), str(key))
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        log.error("TLS certificate reload failed; keeping the current one", extra={"error": str(exc)})
        return False
    log.info("TLS certificate reloaded", extra={"cert": str(cert)})
    return True


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

    import uvicorn

    from certctl.logs import configure_logging
    from certctl.pki.selfsigned import server_certificate_paths

    configure_logging(settings.log_level, settings.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.tls_cert_path and settings.tls_key_path:
        cert, key = settings.tls_cert_path, settings.tls_key_path
    else:
        cert, key = server_certificate_paths(settings.data_dir)  # made by first boot (_prepare) when missing
    _export(settings)
    multi = settings.workers > 1
    # Migrations, seeds and the admin key happen once, before any worker exists. With several
    # workers that is a short-lived child, so the supervisor never loads the application (memory).
    if (_prepare_in_child(settings) if multi else _prepare(settings)) != 0:
        raise typer.Exit(1)
    if not multi:
        from certctl.api.app import create_app

    config = uvicorn.Config(
        "certctl.api.worker:worker_app" if multi else create_app(settings, prepare=False, server_process=True),
        factory=multi,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        ssl_context_factory=tls_context,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(settings.audit_flush_timeout_seconds),
        loop="uvloop",
        http="httptools",
    )
    if multi:
        _serve_workers_with_metrics(config, settings)
    else:
        typer.echo(f"certctl {__version__} listening on https://{settings.host}:{settings.port}", err=True)
        _serve_single(config, cert, key)


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


def _prepare_entry(settings: Settings) -> None:
    raise SystemExit(_prepare(settings))


def _prepare_in_child(settings: Settings) -> int:
    child = multiprocessing.get_context("spawn").Process(target=_prepare_entry, args=(settings,), name="first-boot")
    child.start()
    child.join()
    return child.exitcode or 0


def _serve_single(config: uvicorn.Config, cert: Path, key: Path) -> None:
    import uvicorn

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


def _serve_workers_with_metrics(config: uvicorn.Config, settings: Settings) -> None:
    """Workers write their metrics to files in one fresh directory; any of them serves the sum (observability.md)."""
    from certctl.observability.metrics import MULTIPROC_ENV, cleanup_multiprocess_dir, prepare_multiprocess_dir

    created = MULTIPROC_ENV not in os.environ
    directory = prepare_multiprocess_dir()  # before any worker starts: prometheus_client reads it on import
    try:
        _serve_workers(config, settings)
    finally:
        cleanup_multiprocess_dir(directory, created=created)


def _serve_workers(config: uvicorn.Config, settings: Settings) -> None:
    # uvicorn's supervisor: SIGHUP replaces each worker (the new ones load the certificate afresh),
    # SIGTERM stops them all gracefully.
    from uvicorn.supervisors import Multiprocess

    sock = config.bind_socket()  # exits with status 3 when the port is taken
    typer.echo(
        f"certctl {__version__} listening on https://{settings.host}:{settings.port} with {settings.workers} workers",
        err=True,
    )
    Multiprocess(config, sockets=[sock]).run()


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


