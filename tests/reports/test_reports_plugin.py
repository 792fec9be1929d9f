"""The Airflow UI plugin: it loads in Airflow's plugin manager, Airflow mounts its FastAPI app,
and the app serves the list of reports and each report (behind Airflow's auth)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from promptops.reports.cost_report import read_report_file, report_url, slack_summary
from tests.helpers import ROOT
from tests.helpers.reports import DAY

# Airflow puts the plugins folder on sys.path when it loads plugins; a plain import needs it.
sys.path.insert(0, str(ROOT / "plugins"))
promptops_reports = importlib.import_module("promptops_reports")


@pytest.fixture()
def client(report, report_lake) -> TestClient:
    """The app as the API server mounts it (under its prefix), auth off, on the fixture lake."""
    root = FastAPI()
    root.mount(promptops_reports.URL_PREFIX,
               promptops_reports.create_app(lambda: report_lake, require_auth=False))
    return TestClient(root)


def test_list_of_reports_newest_first(client):
    resp = client.get("/promptops-reports/")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    links = [part.split('"')[0] for part in resp.text.split('<a href="')[1:]]
    assert links[:2] == [f"{DAY.isoformat()}/", f"{(DAY - timedelta(days=1)).isoformat()}/"]
    assert "latest" in resp.text


def test_report_page_and_its_files(client, report_lake):
    resp = client.get(f"/promptops-reports/{DAY.isoformat()}")
    # Redirected to the folder URL so the page's relative CSV links resolve.
    assert resp.history and resp.history[0].status_code == 307
    assert str(resp.url).endswith(f"/promptops-reports/{DAY.isoformat()}/")
    assert resp.status_code == 200
    assert resp.content == read_report_file(report_lake, DAY)
    assert 'id="completeness"' in resp.text

    csv_resp = client.get(f"/promptops-reports/{DAY.isoformat()}/cost_by_hour.csv")
    assert csv_resp.status_code == 200 and csv_resp.headers["content-type"].startswith("text/csv")
    assert csv_resp.content == read_report_file(report_lake, DAY, "cost_by_hour.csv")
    png = client.get(f"/promptops-reports/{DAY.isoformat()}/quality.png")
    assert png.headers["content-type"] == "image/png"
    assert png.content == read_report_file(report_lake, DAY, "quality.png")

    latest = client.get("/promptops-reports/latest")
    assert latest.status_code == 200 and str(latest.url).endswith(f"/{DAY.isoformat()}/")


def test_the_slack_link_opens_the_days_report(client, report, report_lake):
    """The daily run knows its day as the interval's start, a timestamp (00:30 UTC); the
    link in its Slack summary must open that day's report in the plugin."""
    interval_start = datetime(2026, 11, 9, 0, 30, tzinfo=UTC)
    message = slack_summary(report, report_url("http://127.0.0.1:8080", interval_start))
    button = next(b for b in message["blocks"] if b["type"] == "actions")["elements"][0]
    link = urlsplit(button["url"])
    assert link.path == f"/promptops-reports/{DAY.isoformat()}/" and button["url"] in \
        message["text"]
    resp = client.get(link.path)
    assert resp.status_code == 200
    assert resp.content == read_report_file(report_lake, DAY)
    assert f"promptops daily cost report · {DAY.isoformat()}" in resp.text


@pytest.mark.parametrize("path", [
    "/promptops-reports/2026-01-01/",            # no report that day
    "/promptops-reports/2026-13-01/",            # not a date
    "/promptops-reports/yesterday",
    "/promptops-reports/2026-11-09/secret.txt",  # not a report file name
    "/promptops-reports/2026-11-09/..%2F..%2Fmetrics",
    "/promptops-reports/2026-11-09/nothing.csv",
])
def test_unknown_or_unsafe_paths_are_404(client, path):
    assert client.get(path).status_code == 404


def test_plugin_loads_in_airflows_plugin_manager():
    """In a fresh process, as Airflow components load it: no errors, nothing heavy imported."""
    code = (
        "import json, sys\n"
        "from airflow import plugins_manager\n"
        "plugins, errors = plugins_manager._get_plugins()\n"
        "info = [i for i in plugins_manager.get_plugin_info() if i['name'] == 'promptops_reports']\n"
        "heavy = [m for m in ('fastapi', 'pandas', 'matplotlib') if m in sys.modules]\n"
        "print(json.dumps({'errors': errors, 'info': info, 'heavy': heavy}, default=str))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert not [e for e in result["errors"] if "promptops_reports" in e], result["errors"]
    assert len(result["info"]) == 1
    info = result["info"][0]
    assert info["fastapi_apps"] == [{"app": "promptops_reports.LazyApp",
                                     "url_prefix": "/promptops-reports",
                                     "name": "promptops reports"}]
    assert info["external_views"][0]["href"] == "/promptops-reports/"
    assert info["external_views"][0]["url_route"] == "promptops-reports"
    assert result["heavy"] == []


@pytest.mark.slow
def test_airflow_mounts_the_app_behind_its_auth(airflow_db, report):
    """Airflow's own mounting code and auth manager: no token 401, a viewer's token 200."""
    from airflow import plugins_manager
    from airflow.api_fastapi.app import init_auth_manager, init_plugins
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    plugins, _ = plugins_manager._get_plugins()
    assert "promptops_reports" in [p.name for p in plugins]
    root = FastAPI()
    init_plugins(root)
    auth = init_auth_manager()
    client = TestClient(root)

    assert client.get("/promptops-reports/").status_code == 401
    assert client.get("/promptops-reports/",
                      headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403
    nobody = auth.generate_jwt(SimpleAuthManagerUser(username="nobody", role=None))
    assert client.get("/promptops-reports/",
                      headers={"Authorization": f"Bearer {nobody}"}).status_code == 403
    viewer = auth.generate_jwt(SimpleAuthManagerUser(username="ops", role="viewer"))
    resp = client.get("/promptops-reports/", headers={"Authorization": f"Bearer {viewer}"})
    assert resp.status_code == 200 and "promptops daily cost reports" in resp.text
    # The UI's session cookie works as well (the page opens inside the Airflow UI).
    client.cookies.set("_token", viewer)
    assert client.get("/promptops-reports/").status_code == 200
