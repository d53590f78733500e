"""The store dashboard at /dashboard: static files from this package, the charting library
from the registry package `make` installs (never a CDN); every number comes from /v1."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

log = logging.getLogger("gateway.dashboard")

STATIC = Path(__file__).resolve().parent / "static"
CHART_JS = STATIC / "vendor" / "chart.umd.min.js"
ASSETS = "/dashboard/assets"

# The page runs only its own scripts and talks only to this origin; the key it holds is
# never sent elsewhere (no referrer), and it is never framed.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def install_dashboard(app: FastAPI) -> None:
    """GET /dashboard and its assets."""
    if not CHART_JS.exists():
        log.warning(
            "%s is missing: run `make` (the dashboard draws no charts without it)", CHART_JS
        )
    app.mount(ASSETS, StaticFiles(directory=str(STATIC)), name="dashboard-assets")

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=HEADERS)

    @app.get("/dashboard/", include_in_schema=False)
    async def dashboard_slash() -> RedirectResponse:
        return RedirectResponse("/dashboard", status_code=308)
