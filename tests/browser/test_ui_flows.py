"""The Airflow UI flows our users rely on, driven in a real browser (chromium through
Playwright) against ``airflow standalone`` with the promptops DAGs and plugin:

1. log in; the DAG list shows every promptops DAG and no import errors;
2. trigger a dry-run heal from the ``promptops_heal`` Params form, approve it under
   Browse > Required Actions, and see the run succeed;
3. backfill two past hours of ``promptops_hourly`` from the Trigger dialog and see the runs;
4. open Browse > promptops reports: the empty state, then a real report once one exists.

Each step saves a full-page screenshot to ``test-artifacts/browser/`` (or
``$PROMPTOPS_TEST_ARTIFACTS/browser/``); a failing step saves ``failure-<step>.png``. What
the UI shows is checked against Airflow's REST API and the platform simulator.

The tests share one browser page and run in file order (each flow builds on the login).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
from playwright.sync_api import Locator, Page, expect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PROMPTOPS_DAGS = ("promptops_hourly", "promptops_daily", "promptops_health", "promptops_heal")
HEAL = "promptops_heal"
HOURLY = "promptops_hourly"
HEAL_RUN = "ui-heal-dry-run"
HEAL_REASON = "browser test: is the gateway restart wired up?"
HEAL_SUBJECT = "Approve heal: [dry run] restart_service api_gateway"
REPORTS_FRAME = "iframe[title='promptops reports']"
REPORT_DAY = "2026-11-09"  # the day of the staged report (tests.helpers.reports.DAY)
EXPECT_MS = 60_000
# The box is shared and loaded: give the UI time (Playwright's default is 5 s).
expect.set_options(timeout=EXPECT_MS)


# -- helpers -------------------------------------------------------------------------------

def shot(ui, name: str) -> None:
    ui.page.screenshot(path=str(ui.artifacts / f"{name}.png"), full_page=True)


@contextlib.contextmanager
def step(ui, name: str) -> Iterator[None]:
    """Saves ``failure-<name>.png`` when the step fails (a timeout included)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            ui.page.screenshot(path=str(ui.artifacts / f"failure-{name}.png"), full_page=True,
                               timeout=15_000)
        raise


def visible_after_reloads(page: Page, url: str, target: Callable[[], Locator], *,
                          timeout_s: float, what: str) -> None:
    """Opens ``url`` until ``target()`` shows: pages that list runs or actions are not
    all refreshed by the UI on their own."""
    deadline = time.monotonic() + timeout_s
    while True:
        page.goto(url)
        try:
            expect(target()).to_be_visible(timeout=15_000)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not shown within {timeout_s:.0f} s") from None


def ensure_logged_in(ui) -> None:
    page = ui.page
    page.goto(ui.stack.base + "/")
    page.wait_for_load_state("networkidle")
    if "/auth/login" in page.url:
        fill_login(ui)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda url: "/auth/login" not in url)


def fill_login(ui) -> None:
    page = ui.page
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(ui.admin_password)


def run_state_badge(page: Page, run_id: str) -> Locator:
    """The state badge next to the run id in the run page's header."""
    return page.get_by_role("heading", name=run_id, exact=True).locator("..") \
        .get_by_test_id("state-badge")


def open_browse_entry(page: Page, name: str) -> None:
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name=name, exact=True).click()


def utc(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


# -- the flows -----------------------------------------------------------------------------

def test_login_and_dag_list(ui):
    page, api, base = ui.page, ui.api, ui.stack.base
    with step(ui, "login"):
        page.goto(base + "/auth/login")
        expect(page.get_by_text("Sign into Airflow")).to_be_visible()
        fill_login(ui)
        shot(ui, "01-login")  # the password field shows dots only
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda url: "/auth/login" not in url)
        expect(page.get_by_role("link", name="Dags").first).to_be_visible()

    with step(ui, "dags"):
        page.goto(base + "/dags")
        for dag_id in PROMPTOPS_DAGS:
            name = api._call("GET", f"/dags/{dag_id}")["dag_display_name"]
            link = page.get_by_role("link", name=name, exact=True)
            expect(link).to_be_visible()
            expect(link).to_have_attribute("href", f"/dags/{dag_id}")
        page.wait_for_load_state("networkidle")
        # The list and the home page show a "Dag Import Errors" button when there are any.
        expect(page.get_by_text(re.compile("Import Error", re.I))).to_have_count(0)
        shot(ui, "02-dags")
        page.goto(base + "/")
        expect(page.get_by_text("Active Dags")).to_be_visible()
        page.wait_for_load_state("networkidle")
        expect(page.get_by_text(re.compile("Import Error", re.I))).to_have_count(0)
        assert api._call("GET", "/importErrors")["total_entries"] == 0


def test_heal_triggered_from_form_and_approved_in_required_actions(ui):
    page, api, base = ui.page, ui.api, ui.stack.base
    ensure_logged_in(ui)

    with step(ui, "heal-trigger"):
        page.goto(f"{base}/dags/{HEAL}")
        page.get_by_role("button", name="Trigger").first.click()
        form = page.get_by_role("dialog").first
        expect(form.get_by_text("Run Parameters")).to_be_visible()
        form.get_by_role("combobox").first.click()  # the Action enum
        page.get_by_role("option", name="restart_service", exact=True).click()
        form.locator("input[name=element_target]").fill("api_gateway")
        form.locator("input[name=element_reason]").fill(HEAL_REASON)
        # Dry run is ticked by default and stays ticked.
        expect(form.locator("input[name=element_dry_run]")).to_be_checked()
        shot(ui, "03-heal-trigger-form")
        form.get_by_role("button", name="Advanced Options").click()
        form.locator("input[name=dagRunId]").fill(HEAL_RUN)
        form.get_by_test_id("trigger-dag-submit").click()
        expect(page.get_by_text("Dag Run Triggered").first).to_be_visible()
        page.wait_for_url(f"**/dags/{HEAL}/runs/{HEAL_RUN}")
        run = api.run(HEAL, HEAL_RUN)
        assert {k: run["conf"][k] for k in ("action", "target", "dry_run", "reason")} == {
            "action": "restart_service", "target": "api_gateway", "dry_run": True,
            "reason": HEAL_REASON}, run["conf"]

    with step(ui, "required-actions"):
        # The policy copy sends dry runs to a person: the request waits in Required Actions.
        # Its buttons are enabled once the task is parked (the request row is written a
        # moment before, while the Slack announcement goes out), and a page opened earlier
        # does not re-enable them on its own: wait for the state first.
        api.wait_task(HEAL, HEAL_RUN, "approve", {"awaiting_input"}, timeout=300)
        page.goto(base + "/dags")
        open_browse_entry(page, "Required Actions")
        page.wait_for_url("**/required_actions")
        visible_after_reloads(page, base + "/required_actions",
                              lambda: page.get_by_role("link", name=HEAL_SUBJECT),
                              timeout_s=300, what="the heal's approval request")
        shot(ui, "04-required-actions")
        page.get_by_role("link", name=HEAL_SUBJECT).click()
        page.wait_for_url(f"**/dags/{HEAL}/runs/{HEAL_RUN}/tasks/approve/required_actions")
        expect(page.get_by_text(f"Reason: {HEAL_REASON}")).to_be_visible()
        shot(ui, "05-approval-request")
        # Nothing reached the platform before the approval.
        assert ui.new_actions() == []
        page.get_by_role("button", name="Approve", exact=True).click()
        expect(page.get_by_text("approve response successful").first).to_be_visible()
        expect(page.get_by_text(re.compile(r"Response received at .* from admin"))) \
            .to_be_visible()

    with step(ui, "heal-success"):
        visible_after_reloads(page, f"{base}/dags/{HEAL}/runs/{HEAL_RUN}",
                              lambda: run_state_badge(page, HEAL_RUN).filter(has_text="Success"),
                              timeout_s=300, what=f"run {HEAL_RUN} in state Success")
        shot(ui, "06-heal-success")

    assert api.wait_run(HEAL, HEAL_RUN, timeout=60) == "success"
    states = api.task_states(HEAL, HEAL_RUN)
    assert {t: states[t] for t in ("approve", "apply_actions", "report", "denied")} == {
        "approve": "success", "apply_actions": "success", "report": "success",
        "denied": "skipped"}, states
    hitl = api._call("GET", f"/dags/{HEAL}/dagRuns/{quote(HEAL_RUN, safe='')}/taskInstances/"
                            "approve/-1/hitlDetails")
    assert hitl["chosen_options"] == ["Approve"]
    assert hitl["responded_by_user"]["name"] == "admin"
    outcome = api.xcom(HEAL, HEAL_RUN, "report")
    assert (outcome["status"], outcome["decision"], outcome["decided_by"]) == \
        ("dry_run", "approved", "admin"), outcome
    # The platform got exactly the approved dry run, which changes nothing.
    actions = ui.new_actions()
    assert [(a["action"], a["target"], a["dry_run"], a["reason"]) for a in actions] == [
        ("restart_service", "api_gateway", True, HEAL_REASON)], actions


def test_backfill_hourly_from_trigger_dialog(ui):
    page, api, base = ui.page, ui.api, ui.stack.base
    ensure_logged_in(ui)
    # Two hourly runs well before the scheduler's own latest run (logical dates are
    # interval starts, both ends included).
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start, end = hour - timedelta(hours=4), hour - timedelta(hours=3)

    with step(ui, "backfill-form"):
        page.goto(f"{base}/dags/{HOURLY}")
        page.get_by_role("button", name="Trigger").first.click()
        dialog = page.get_by_role("dialog").first
        dialog.get_by_text("Backfill", exact=True).click()
        expect(dialog.get_by_text("Date Range")).to_be_visible()
        for i, when in enumerate((start, end)):  # From, To: date and time pickers in UTC
            opener = dialog.get_by_test_id("datetime-input").nth(i)
            opener.click()
            picker = page.locator(
                f"[id='{opener.get_attribute('id').replace(':trigger', ':content')}']")
            picker.get_by_placeholder("YYYY/MM/DD").fill(when.strftime("%Y/%m/%d"))
            picker.get_by_placeholder("HH:mm").fill(when.strftime("%H:%M"))
            page.keyboard.press("Escape")  # closes the picker, not the dialog
            expect(picker).to_be_hidden()
        expect(dialog.get_by_text("2 runs will be triggered.")).to_be_visible()
        shot(ui, "07-backfill-form")
        dialog.get_by_role("button", name="Run Backfill").click()
        expect(page.get_by_text("Backfill generated").first).to_be_visible()

    backfills = api._call("GET", "/backfills", params={"dag_id": HOURLY})
    assert backfills["total_entries"] == 1, backfills  # the stack itself backfills nothing
    backfill = backfills["backfills"][0]
    assert (utc(backfill["from_date"]), utc(backfill["to_date"])) == (start, end), backfill
    runs = api._call("GET", f"/dags/{HOURLY}/dagRuns", params={"run_type": "backfill"})
    assert sorted(utc(r["logical_date"]) for r in runs["dag_runs"]) == [start, end], runs
    run_ids = [r["dag_run_id"] for r in runs["dag_runs"]]

    with step(ui, "backfill-runs"):
        page.goto(f"{base}/dags/{HOURLY}/backfills")
        expect(page.get_by_text("1 Backfill")).to_be_visible()
        expect(page.get_by_role("cell", name=f"{start:%Y-%m-%d %H:%M:%S}")).to_be_visible()
        expect(page.get_by_role("cell", name=f"{end:%Y-%m-%d %H:%M:%S}")).to_be_visible()
        for run_id in run_ids:
            visible_after_reloads(page, f"{base}/dags/{HOURLY}/runs",
                                  lambda run_id=run_id: page.get_by_role("link", name=run_id,
                                                                         exact=True),
                                  timeout_s=120, what=f"backfill run {run_id}")
        shot(ui, "08-backfill-runs")


def test_daily_report_view(ui):
    page, base = ui.page, ui.stack.base
    ensure_logged_in(ui)

    with step(ui, "reports-empty"):
        page.goto(base + "/dags")
        open_browse_entry(page, "promptops reports")
        page.wait_for_url("**/plugin/promptops-reports**")
        frame = page.frame_locator(REPORTS_FRAME)
        expect(frame.get_by_role("heading", name="promptops daily cost reports")).to_be_visible()
        # No daily run yet: the index says so instead of failing.
        expect(frame.get_by_text("No report yet.")).to_be_visible()
        shot(ui, "09-reports-empty")

    with step(ui, "report"):
        # A report appears where the daily DAG writes them (a real build_report output).
        shutil.copytree(ui.staged_reports, ui.lake_dir / "reports", dirs_exist_ok=True)
        page.goto(base + "/dags")
        open_browse_entry(page, "promptops reports")
        frame = page.frame_locator(REPORTS_FRAME)
        frame.get_by_role("link", name=REPORT_DAY).click()
        expect(frame.get_by_role("heading", name=f"promptops daily cost report · {REPORT_DAY}")) \
            .to_be_visible()
        expect(frame.get_by_role("heading", name="Completeness")).to_be_visible()
        charts = frame.locator("img")
        expect(charts.first).to_be_visible()
        assert charts.first.evaluate("img => img.complete && img.naturalWidth > 0")
        shot(ui, "10-report")
