"""`certctl server`, `certctl db upgrade`, and friends."""

from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path
from typing import Annotated

import typer

from certctl import __version__
from certctl.config import Settings, SettingsError

app = typer.Typer(help="certctl: TLS certificate lifecycle platform", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _settings(**overrides: object) -> Settings:
    try:
        return Settings.from_env().with_overrides(**overrides)
    except SettingsError as exc:
        typer.echo(f"certctl: configuration error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def server(
    host: Annotated[str | None, typer.Option(help="Address to bind (CERTCTL_SERVER_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="HTTPS port (CERTCTL_SERVER_PORT)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (CERTCTL_DATA_DIR)")] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Seed a realistic demo inventory")] = False,
) -> None:
    """Start the control plane over HTTPS."""
    import uvicorn

    from certctl.api.app import create_app
    from certctl.logs import configure_logging
    from certctl.pki.selfsigned import ensure_server_certificate

    settings = _settings(host=host, port=port, data_dir=data_dir, demo_seed=demo or None)
    configure_logging(settings.log_level, settings.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.tls_cert_path and settings.tls_key_path:
        cert, key = settings.tls_cert_path, settings.tls_key_path
    else:
        cert, key = ensure_server_certificate(settings.data_dir, settings.host)
    typer.echo(f"certctl {__version__} listening on https://{settings.host}:{settings.port}", err=True)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        ssl_version=ssl.PROTOCOL_TLS_SERVER,
        ssl_ciphers="ECDHE+AESGCM:ECDHE+CHACHA20",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(settings.audit_flush_timeout_seconds),
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http="httptools",
    )


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

    typer.echo(f"database at revision {asyncio.run(run())}")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)
