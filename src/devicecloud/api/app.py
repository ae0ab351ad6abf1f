"""
The ASGI application: routers, middleware and error handlers around the services it is given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.middleware.cors import CORSMiddleware

from devicecloud import __version__
from devicecloud.api import docs_page, errors
from devicecloud.api.deps import ApiDeps
from devicecloud.api.middleware import (
    RateLimitMiddleware,
    RateLimits,
    RequestIdMiddleware,
    TrustedProxiesMiddleware,
)
from devicecloud.api.routes import (
    access_tokens,
    clients,
    customers,
    devices,
    diagnostics,
    events,
    firmware,
    groups,
    libraries,
    oauth,
    operations,
    product_devices,
    product_events,
    product_firmware,
    product_webhooks,
    products,
    provisioning,
    sims,
    usage,
    users,
    webhooks,
)
from devicecloud.api.sse import StreamRegistry
from devicecloud.api.text_guard import TextGuardMiddleware

Hook = Callable[[], Awaitable[None]]


def create_app(deps: ApiDeps, *, on_startup: Hook | None = None, on_shutdown: Hook | None = None) -> FastAPI:
    """
    Build the HTTP API. ``on_startup``/``on_shutdown`` let the runtime tie its own life to the server's.
    """

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if on_startup is not None:
            await on_startup()
        try:
            yield
        finally:
            if on_shutdown is not None:
                await on_shutdown()

    app = FastAPI(
        title="devicecloud",
        version=__version__,
        description="A self-hosted, Particle-compatible device cloud: the Particle Device Cloud API v1.",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.deps = deps
    rate_limits = RateLimits(deps.settings)
    app.state.rate_limits = rate_limits
    app.state.event_streams = StreamRegistry(
        deps.settings.max_streams_per_ip, clock=deps.clock, check_tokens=deps.tokens.revoked_or_expired
    )
    errors.install(app)

    # oauth first: its pyparticleio alias POST /v1/devices/oauth/token must win over POST /v1/devices/:id/:fn;
    # events before devices: /v1/devices/events[/…] and /v1/devices/:id/events[/…] must win over
    # /v1/devices/:id and /v1/devices/:id/:variable.
    for module in (
        operations,
        oauth,
        access_tokens,
        users,
        clients,
        provisioning,
        events,
        devices,
        diagnostics,
        usage,
        webhooks,
        products,
        customers,
        product_events,
        product_webhooks,
        groups,
        product_devices,
        product_firmware,
        libraries,
        firmware,
        sims,
    ):
        app.include_router(module.router)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(docs_page.render(app.openapi()))

    @app.get("/healthz", tags=["Server"], summary="Liveness check")
    async def healthz() -> JSONResponse:
        return JSONResponse({"ok": True, "version": __version__})

    _add_security_schemes(app)
    # Middleware added last runs first: trusted proxies, CORS, request ids, rate limits, then the text door
    # (path, query and Authorization are text before any route runs; bodies are checked by api/params.py).
    app.add_middleware(TextGuardMiddleware)
    app.add_middleware(RateLimitMiddleware, limits=rate_limits)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(deps.settings.cors_origins),
        allow_methods=["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=["X-Request-Id", "Retry-After"],
    )
    app.add_middleware(TrustedProxiesMiddleware, trusted=deps.settings.trusted_proxies)
    return app


def _add_security_schemes(app: FastAPI) -> None:
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = original()
        spec.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "basic": {"type": "http", "scheme": "basic"},
        }
        spec["security"] = [{"bearer": []}]
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
