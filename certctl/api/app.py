"""The ASGI application: wiring of settings, database, services, middleware and routers."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import Mount

from certctl import __version__
from certctl.api import heap
from certctl.api.errors import install_error_handlers
from certctl.api.hot_routes import HotRoutes, api_routes
from certctl.api.middleware import (
    AgentKeyCache,
    AuditMiddleware,
    AuthMiddleware,
    BodyLimitMiddleware,
    CorsMiddleware,
    InputSanityMiddleware,
    RateLimitMiddleware,
    RequestContextMiddleware,
)
from certctl.api.pki_http import PkiHttpListener
from certctl.api.ratelimit import TokenBuckets
from certctl.api.routers import (
    acme_eab,
    agent_groups,
    agents,
    approvals,
    audit,
    certificate_actions,
    certificates,
    discovery,
    health_checks,
    intermediates,
    issuers,
    jobs,
    metrics,
    network_scan,
    notifications,
    owners,
    policies,
    profiles,
    renewal_policies,
    stats,
    system,
    targets,
    teams,
)
from certctl.api.telemetry import TelemetryMiddleware
from certctl.config import Settings
from certctl.domain.clock import Clock
from certctl.domain.keys import KeyStore
from certctl.observability import tracing
from certctl.pki.sealing import ConfigSealer, load_or_create_key_file
from certctl.protocols import pki_status
from certctl.protocols.acme import routes as acme_routes
from certctl.scheduler import SchedulerSettings, build_scheduler
from certctl.services.audit import AuditSink
from certctl.services.bootstrap import ensure_admin_key, seed_defaults, stored_keys
from certctl.services.ca_service import CAService
from certctl.services.connector_config import verify_sealed_configs
from certctl.services.container import Services
from certctl.services.context import ServiceContext
from certctl.services.demo import seed_demo
from certctl.services.rate_limits import RateLimits
from certctl.store import migrate
from certctl.store.database import Database

log = logging.getLogger("certctl.server")

ROUTERS = [
    system.router,
    acme_eab.router,
    teams.router,
    owners.router,
    audit.router,
    certificates.router,
    stats.router,
    jobs.router,
    approvals.router,
    certificate_actions.router,
    profiles.router,
    renewal_policies.router,
    policies.router,
    agent_groups.router,
    issuers.router,
    targets.router,
    agents.router,
    intermediates.router,
    pki_status.router,
    discovery.router,
    network_scan.router,
    health_checks.router,
    notifications.router,
    metrics.router,
]


def create_app(
    settings: Settings, *, clock: Clock | None = None, prepare: bool = True, server_process: bool = False,
) -> FastAPI:
    """The app. With `prepare=False` (server workers) the parent process has already run `first_boot`.
    `server_process`: the app is the process's only one, so its garbage collector is tuned once it has started
    (certctl.api.heap)."""
    keys = KeyStore()
    for named in settings.api_keys:
        keys.add_key(named.key, named.name, named.admin)
    clock = clock or Clock()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tracing_started = tracing.setup()  # OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set
        db = Database(settings.effective_database_url, pool_size=settings.database_max_conns)
        ctx = _context(settings, db, clock)
        if prepare:
            try:
                await first_boot(ctx)
            except BaseException:
                await db.dispose()  # a refused start must not leak pooled connections
                raise
        sink = AuditSink(db)
        services = Services(ctx=ctx, audit_sink=sink)
        for stored in await stored_keys(ctx):
            keys.add_hash(stored.key_hash, stored.name, stored.admin)
        app.state.services = services
        app.state.agent_keys = AgentKeyCache(services.agents.credential_hash)
        sink.start()
        log.info("certctl ready", extra={"database": db.dialect, "version": __version__})
        # The background loops (CERTCTL_SCHEDULER_ENABLED, default on; tests turn it off in make_settings).
        scheduler_settings = SchedulerSettings.from_env(settings.extra)
        scheduler = build_scheduler(services, scheduler_settings) if scheduler_settings.enabled else None
        app.state.scheduler = scheduler
        if scheduler is not None:
            await scheduler.start()
            ctx.on_jobs_queued = lambda: scheduler.wake("job_processor")
        pki_http = None
        if settings.pki_http_port:
            pki_http = PkiHttpListener(app, settings.pki_http_host or settings.host, settings.pki_http_port)
            await pki_http.start()
        if server_process:
            heap.settle_after_startup()
        try:
            yield
        finally:
            if pki_http is not None:
                await pki_http.stop()
            if scheduler is not None:
                await scheduler.stop()  # drained first: its loops use the sink and the database
            await services.status.aclose()
            await services.acme.aclose()
            await services.notifications.aclose()
            await services.certificates.settle_counts()
            await services.rate_limits.aclose()  # unused leased tokens go back to the shared buckets
            await sink.close(timeout=settings.audit_flush_timeout_seconds)
            await db.dispose()
            if tracing_started:
                tracing.shutdown()  # exports the buffered spans

    app = FastAPI(
        title="certctl API",
        version=__version__,
        description="Certificate lifecycle management platform API (compatible with the reference contract).",
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    # RFC 8555 server; JWS is its authentication (docs/acme.md). First in line: ACME clients poll, and matching
    # /acme/ against every API route first cost more CPU than the ACME handler itself.
    app.router.routes.insert(0, Mount("/acme", app=acme_routes.router))

    # Added innermost first; the request passes them in the reverse order.
    app.add_middleware(HotRoutes, routes=api_routes(ROUTERS), handlers={**agents.HOT_HANDLERS,
                                                                         **certificates.HOT_HANDLERS})
    app.add_middleware(InputSanityMiddleware)
    app.add_middleware(AuditMiddleware, sink=lambda: _sink(app), clock=clock.now)
    app.add_middleware(
        RateLimitMiddleware,
        enabled=settings.rate_limit_enabled,
        per_key=TokenBuckets(settings.user_rps, settings.user_burst),
        per_ip=TokenBuckets(settings.rate_limit_rps, settings.rate_limit_burst),
        shared=lambda: _rate_limits(app),
    )
    app.add_middleware(
        AuthMiddleware, auth_type=settings.auth_type, keys=keys, bootstrap_token=settings.agent_bootstrap_token,
        agent_keys=lambda: getattr(app.state, "agent_keys", None),
    )
    app.add_middleware(CorsMiddleware, origins=settings.cors_origins)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_size)
    # OCSP is answered here, before the API layers it has no use for (see pki_status.OcspFastPath).
    app.add_middleware(pki_status.OcspFastPath)
    app.add_middleware(acme_routes.AcmeFastPath)  # likewise for /acme/ (JWS-authenticated, see docs/acme.md)
    app.add_middleware(RequestContextMiddleware)
    app.add_middleware(TelemetryMiddleware)  # outermost: metrics and the request's span (observability.md)
    return app


def _context(settings: Settings, db: Database, clock: Clock) -> ServiceContext:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    passphrase = settings.config_encryption_key or load_or_create_key_file(settings.data_dir / "config.key")
    return ServiceContext(db=db, clock=clock, settings=settings, sealer=ConfigSealer(passphrase))


async def first_boot(ctx: ServiceContext) -> None:
    """Migrations, seeds and the generated admin key: once per start, before anything serves."""
    await migrate.upgrade(ctx.db)
    await verify_sealed_configs(ctx)  # refuse to start if the config key cannot open stored configs
    await seed_defaults(ctx)
    await CAService(ctx).ensure_local_roots()  # the local CA exists (and its key is usable) before anything serves
    if ctx.settings.demo_seed:
        await seed_demo(ctx)  # no-op once any certificate exists
    generated = await ensure_admin_key(ctx)
    if generated is not None:
        _announce_admin_key(generated, ctx.settings)


async def prepare_server(settings: Settings, clock: Clock | None = None) -> None:
    """`certctl server` runs this once before any worker starts, so workers never race on first boot."""
    db = Database(settings.effective_database_url, pool_size=settings.database_max_conns)
    try:
        await first_boot(_context(settings, db, clock or Clock()))
    finally:
        await db.dispose()


def _rate_limits(app: FastAPI) -> RateLimits | None:
    services: Services | None = getattr(app.state, "services", None)
    return services.rate_limits if services else None


def _sink(app: FastAPI) -> AuditSink | None:
    services: Services | None = getattr(app.state, "services", None)
    return services.audit_sink if services else None


def _announce_admin_key(key: str, settings: Settings) -> None:
    # Printed once, to stdout, never logged: logs are shipped elsewhere, stdout is the operator's terminal.
    print(
        "\n  certctl generated an admin API key (shown once; stored only as a hash):\n\n"
        f"    {key}\n\n"
        f"  It is also in {settings.data_dir / 'admin.key'} (mode 0600).\n",
        file=sys.stdout,
        flush=True,
    )
