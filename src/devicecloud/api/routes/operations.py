"""
For operators and orchestrators, not in the Particle API (beside `/healthz`, the liveness check in
`api/app.py`): `/readyz` (this process can serve: its database and event bus answer) and `/metrics`
(Prometheus). Neither needs a token, as probes and scrapers send none; they tell nothing about any account
or device. Both stay out of the API reference.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from devicecloud.api.deps import ApiDeps

router = APIRouter(tags=["Operations"])


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    deps: ApiDeps = request.app.state.deps
    checks = await deps.probes.readiness() if deps.probes is not None else {}
    problems = {name: found for name, found in checks.items() if found != "ok"}
    if problems:
        description = "; ".join(f"{name}: {found}" for name, found in problems.items())
        body = {"ok": False, "error": "not_ready", "error_description": description, "checks": checks}
        return JSONResponse(body, status_code=503, headers={"Cache-Control": "no-store"})
    return JSONResponse({"ok": True, "checks": checks}, headers={"Cache-Control": "no-store"})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    deps: ApiDeps = request.app.state.deps
    if deps.probes is None:
        body = {"ok": False, "error": "not_found", "error_description": "No metrics in this process"}
        return JSONResponse(body, status_code=404)
    text, content_type = await deps.probes.render()
    return Response(text, media_type=content_type, headers={"Cache-Control": "no-store"})
