"""Fixtures for the browser tests: Debian's chromium, the README's stack (simulator, Slack
sink, ``airflow standalone``: the stack tests' shared one, the hourly DAG unpaused for this
module) and one logged-out Playwright page on it, shared by the module.

Playwright drives the system chromium (``/usr/bin/chromium``); ``playwright install``
downloads a browser of its own, which does not work on these machines.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.stack import AirflowRest, SharedStack

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
HOURLY = "promptops_hourly"
UI_TIMEOUT_MS = 60_000


@dataclass
class UiStack:
    """What the UI tests share: the running stack, its REST client and the browser page."""

    stack: SharedStack
    api: AirflowRest
    page: object  # playwright.sync_api.Page
    artifacts: Path
    lake_dir: Path
    staged_reports: Path  # reports/ of a lake with one built report, published on demand
    admin_password: str = field(repr=False)
    earlier_actions: set[str] = field(default_factory=set)  # the other stack tests'

    def new_actions(self) -> list[dict]:
        """The simulated platform's actions since the module started."""
        return [a for a in self.stack.sim("/_sim/truth")["actions"]
                if a["action_id"] not in self.earlier_actions]


def _apt_install_chromium() -> str:
    """Install Debian's chromium; returns what apt said if it did not work."""
    log = ""
    for cmd in (["apt-get", "install", "-y", "chromium"], ["apt-get", "update"],
                ["apt-get", "install", "-y", "chromium"]):
        if CHROMIUM.exists():
            break
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                                  env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            log = (done.stdout + done.stderr)[-1500:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            log = str(exc)
    return log


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        log = _apt_install_chromium()
        if not CHROMIUM.exists():
            pytest.fail("the browser tests need Debian's chromium at /usr/bin/chromium and "
                        "could not install it. Run (as root): apt-get update && apt-get "
                        "install -y chromium  (do not run `playwright install`).\n"
                        f"apt said: {log}")
    return CHROMIUM


@pytest.fixture(scope="module")
def artifacts() -> Path:
    base = os.environ.get("PROMPTOPS_TEST_ARTIFACTS")
    folder = (Path(base) if base else ROOT / "test-artifacts") / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):  # screenshots of an earlier run would mislead
        old.unlink()
    return folder


def _stage_report(staging: Path) -> Path:
    """A real daily report (the report tests' fixture lake, built by build_report) in a
    lake of its own; the test copies it into the stack's lake when it wants one to exist."""
    from promptops.reports.cost_report import build_report
    from tests.helpers.reports import DAY, NOW, build_fixture_lake

    lake = build_fixture_lake(f"file://{staging}")
    build_report(lake, DAY, budget_tokens=100_000, budget_cost_usd=1000, now=NOW)
    return staging / "reports"


@pytest.fixture(scope="module")
def ui(chromium: Path, artifacts: Path, airflow_stack: SharedStack,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiStack]:
    """The shared stack (its heal policy sends dry runs to a person, so the UI has something
    to approve) with the hourly DAG running, and a browser page."""
    from playwright.sync_api import sync_playwright

    stack, api = airflow_stack, airflow_stack.api
    assert api is not None
    staged_reports = _stage_report(tmp_path_factory.mktemp("browser") / "staged-lake")
    password = json.loads((stack.home / "simple_auth_manager_passwords.json.generated")
                          .read_text())["admin"]
    earlier_actions = stack.sim_action_ids()
    with contextlib.ExitStack() as cleanup:
        api.set_paused(HOURLY, False)
        cleanup.callback(api.set_paused, HOURLY, True)
        pw = cleanup.enter_context(sync_playwright())
        browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        cleanup.callback(browser.close)
        context = browser.new_context(viewport={"width": 1400, "height": 900},
                                      timezone_id="UTC")
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        page.set_default_navigation_timeout(UI_TIMEOUT_MS)
        yield UiStack(stack=stack, api=api, page=page, artifacts=artifacts,
                      lake_dir=stack.lake_dir, staged_reports=staged_reports,
                      admin_password=password, earlier_actions=earlier_actions)
