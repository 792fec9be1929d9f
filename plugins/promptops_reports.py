"""Airflow UI plugin: the promptops daily cost reports, served from the lake.

Airflow 3 plugins add FastAPI apps to the API server (``fastapi_apps``, mounted under their
``url_prefix``) and entries to the UI (``external_views``; with a ``url_route`` the page
opens inside the UI, in an iframe). This one serves:

- ``/promptops-reports/``: the days that have a report, newest first;
- ``/promptops-reports/latest``: the newest report;
- ``/promptops-reports/{date}/``: the report itself (one self-contained HTML page);
- ``/promptops-reports/{date}/{file}``: its PNGs, CSVs and ``summary.json``.

``/promptops-reports/{date}`` redirects to ``{date}/`` so the page's relative links to its
CSVs resolve. Every route needs a signed-in Airflow user (the UI's session cookie or a
bearer token) whom the auth manager lets see the custom view ``promptops-reports``.

Reports are read through :class:`promptops.lake.store.Lake` (``PROMPTOPS_LAKE_URI``). This module is
imported by every Airflow component that loads plugins, so it stays cheap: the lake, the
report module and Airflow's security helpers are imported inside the handlers.
"""

# No ``from __future__ import annotations``: FastAPI reads the handlers' annotations, and
# their types are imported inside create_app (kept out of module import time).

import contextlib
import html
import re
from collections.abc import Callable
from datetime import date
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/promptops-reports"
VIEW_NAME = "promptops-reports"
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MEDIA_TYPES = {"html": "text/html; charset=utf-8", "png": "image/png",
                "csv": "text/csv; charset=utf-8", "json": "application/json"}


def create_app(lake_factory: Callable[[], Any] | None = None, *,
               require_auth: bool = True) -> "FastAPI":
    """The reports app. ``lake_factory``: returns the :class:`~promptops.lake.store.Lake` to read
    (default: the configured lake, built per request so a changed setting applies)."""

    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse, RedirectResponse, Response

    def lake() -> Any:
        if lake_factory is not None:
            return lake_factory()
        from promptops.airflow_adapters.resources import lake as configured_lake

        return configured_lake()

    async def require_viewer(request: Request) -> None:
        """A signed-in user allowed to see this view (401 / 403 otherwise)."""
        if not require_auth:
            return
        from airflow.api_fastapi.app import get_auth_manager
        from airflow.api_fastapi.core_api.security import get_user
        from fastapi.security import HTTPAuthorizationCredentials
        from fastapi.security.utils import get_authorization_scheme_param

        scheme, token = get_authorization_scheme_param(request.headers.get("authorization"))
        bearer = HTTPAuthorizationCredentials(scheme=scheme, credentials=token) \
            if scheme.lower() == "bearer" and token else None
        # Airflow's own resolution: a bearer token first, then the UI's session cookie.
        user = await get_user(request, None, bearer)
        if not get_auth_manager().is_authorized_custom_view(
                method="GET", resource_name=VIEW_NAME, user=user):
            raise HTTPException(status_code=403,
                                detail="not allowed to see the promptops reports")

    def parse_day(value: str) -> date:
        if _DATE_RE.match(value):
            with contextlib.suppress(ValueError):
                return date.fromisoformat(value)
        raise HTTPException(status_code=404, detail=f"{value!r} is not a date (YYYY-MM-DD)")

    app = FastAPI(title="promptops reports", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(require_viewer)])

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        from promptops.reports.cost_report import list_report_dates

        days = list_report_dates(lake())
        items = "\n".join(
            f'<li><a href="{d.isoformat()}/">{d.isoformat()}</a> '
            f'<span class="muted">({d:%A})</span>'
            f'{" · latest" if i == 0 else ""}</li>' for i, d in enumerate(days))
        body = f"<ul>{items}</ul>" if days else (
            "<p>No report yet. The daily DAG writes one per day; a report can also be built "
            "with <code>promptops.reports.cost_report.build_report</code>.</p>")
        return HTMLResponse(_page("promptops daily cost reports", body))

    @app.get("/latest")
    def latest() -> RedirectResponse:
        from promptops.reports.cost_report import list_report_dates

        days = list_report_dates(lake())
        if not days:
            raise HTTPException(status_code=404, detail="no report yet")
        return RedirectResponse(f"{days[0].isoformat()}/", status_code=307)

    @app.get("/{day}")
    def report_without_slash(day: str) -> RedirectResponse:
        parse_day(day)
        # Relative, so it works under whatever prefix the API server mounts us.
        return RedirectResponse(f"{day}/", status_code=307)

    @app.get("/{day}/")
    def report(day: str) -> Response:
        return _file(day, "index.html")

    @app.get("/{day}/{name}")
    def report_file(day: str, name: str) -> Response:
        return _file(day, name)

    def _file(day: str, name: str) -> Response:
        from promptops.reports.cost_report import REPORT_FILE_RE, read_report_file

        parsed = parse_day(day)
        if not REPORT_FILE_RE.match(name):
            raise HTTPException(status_code=404, detail="no such report file")
        data = read_report_file(lake(), parsed, name)
        if data is None:
            raise HTTPException(status_code=404,
                                detail=f"no report file {name} for {parsed.isoformat()}")
        media = _MEDIA_TYPES[name.rsplit(".", 1)[1]]
        headers = {"Cache-Control": "no-cache"}
        if name.endswith(".csv"):
            headers["Content-Disposition"] = f'inline; filename="{parsed.isoformat()}-{name}"'
        return Response(content=data, media_type=media, headers=headers)

    return app


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>body{{font-family:system-ui,sans-serif;"
            f"margin:1.5rem;color:#1c2833}}.muted{{color:#566573}}li{{margin:.2rem 0}}</style>"
            f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>")


class LazyApp:
    """An ASGI app that builds the FastAPI app on its first request, so that processes
    which load plugins without serving them (scheduler, workers) never import FastAPI."""

    def __init__(self, factory: Callable[[], Any] = create_app) -> None:
        self._factory = factory
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            self._app = self._factory()
        await self._app(scope, receive, send)


app = LazyApp()


class PromptopsReportsPlugin(AirflowPlugin):
    """The daily cost reports in the Airflow UI (Browse -> promptops reports)."""

    name = "promptops_reports"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "promptops reports"}]
    external_views = [{
        "name": "promptops reports",
        "href": f"{URL_PREFIX}/",
        # With a url_route the page opens inside the UI (at /plugin/promptops-reports).
        "url_route": VIEW_NAME,
        "destination": "nav",
        "category": "browse",
    }]
