"""The budgets file: the shipped examples, every validation error (naming file, budget and
field), the Airflow Variable's overrides, and the scope helpers."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from promptops.detection.budgets.config import (
    DEFAULT_PATH,
    FILE_ENV,
    BudgetConfigError,
    load_budgets,
    scope_dimension,
    scope_values,
)
from promptops.errors import ConfigError

BASE = """\
budgets:
  - name: search-app
    scope: {app: [search-qa, support-chat]}
    metric: cost
    amount: 100
    period: month
    switch_model: {to: gpt-4o-mini}
    thresholds:
      - {at: 1.0, severity: critical, heal: switch_model}
      - {at: 0.8, severity: warning}
  - name: every-user
    scope: {user: "*"}
    metric: cost
    amount: 5
    amounts: {user-091: 150}
    period: day
    thresholds:
      - {at: 1.0, severity: warning}
"""


def write(tmp_path, text: str, name: str = "budgets.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def budget_file(tmp_path, **fields) -> Path:
    """A file with one budget 'search-app': valid defaults, then ``fields`` (None drops)."""
    budget = {"name": "search-app", "scope": "overall", "metric": "cost", "amount": 10,
              "period": "day", "thresholds": [{"at": 0.8, "severity": "warning"}]}
    budget.update(fields)
    budget = {k: v for k, v in budget.items() if v is not None}
    return write(tmp_path, yaml.safe_dump({"budgets": [budget]}))


def error(path, **kwargs) -> str:
    with pytest.raises(BudgetConfigError) as exc:
        load_budgets(path, **kwargs)
    assert isinstance(exc.value, ConfigError)
    return str(exc.value)


def test_no_budget_is_set_by_default_and_the_example_file_is_valid(monkeypatch):
    monkeypatch.delenv(FILE_ENV, raising=False)
    assert load_budgets().budgets == []
    cfg = load_budgets(DEFAULT_PATH.with_name("budgets.example.yaml"))
    monthly = cfg.get("platform-monthly")
    assert monthly is not None and scope_dimension(monthly) is None
    assert (monthly.metric, monthly.period, monthly.timezone) == ("cost", "month",
                                                                  "Europe/Berlin")
    assert [(t.at, t.on, t.severity) for t in monthly.thresholds] == [
        (0.5, "spent", "info"), (0.8, "spent", "warning"), (1.0, "forecast", "critical"),
        (1.0, "spent", "critical"), (1.2, "spent", "critical")]
    users = cfg.get("user-daily")
    assert users is not None and scope_dimension(users) == "user" and scope_values(users) is None
    assert len(users.amounts) == 2 and users.amount_for("user-nobody") == users.amount
    teams = cfg.get("team-weekly-tokens")
    assert teams is not None and (teams.metric, teams.period) == ("tokens", "week")
    app = cfg.get("search-qa-monthly")
    assert app is not None and scope_dimension(app) == "app"
    assert app.switch_model is not None and app.switch_model.to == "gpt-4o-mini"
    assert any(t.heal == "switch_model" and t.at == 1.0 for t in app.thresholds)
    keys = cfg.get("keys-rolling-7d")
    assert keys is not None and keys.soft and keys.period == "rolling" and keys.rolling_days == 7
    assert scope_dimension(keys) == "key"
    assert cfg.get("no-such-budget") is None
    # Budgets without a timezone take the file's.
    assert users.timezone == cfg.timezone == "UTC"
    assert DEFAULT_PATH.name == "budgets.yaml"


def test_file_from_env_and_top_level_timezone_inherited(tmp_path, monkeypatch):
    path = write(tmp_path, "timezone: Asia/Kolkata\n" + BASE, name="other.yaml")
    monkeypatch.setenv(FILE_ENV, str(path))
    cfg = load_budgets()
    assert [b.timezone for b in cfg.budgets] == ["Asia/Kolkata", "Asia/Kolkata"]


def test_thresholds_are_sorted_by_share(tmp_path):
    cfg = load_budgets(write(tmp_path, BASE))
    assert [t.at for t in cfg.budgets[0].thresholds] == [0.8, 1.0]


def test_wildcard_and_list_scopes(tmp_path):
    cfg = load_budgets(write(tmp_path, BASE))
    listed, every = cfg.budgets
    assert (scope_dimension(listed), scope_values(listed)) == ("app",
                                                               ["search-qa", "support-chat"])
    assert (scope_dimension(every), scope_values(every)) == ("user", None)
    assert every.amount_for("user-091") == 150 and every.amount_for("user-001") == 5


@pytest.mark.parametrize(("fields", "expected"), [
    ({"thresholds": [{"at": 0.8, "severity": "warning"}, {"at": 0, "severity": "info"}]},
     "budget 'search-app': thresholds.1.at: must be > 0"),
    ({"thresholds": [{"at": 80, "severity": "warning"}]},
     "budget 'search-app': thresholds.0.at: must be a share of the amount (0.8 = 80%)"),
    ({"thresholds": []}, "budget 'search-app': thresholds: must hold at least 1 item"),
    ({"thresholds": [{"at": 0.8, "severity": "loud"}]},
     "budget 'search-app': thresholds.0.severity: must be one of 'info', 'warning' or "
     "'critical', got 'loud'"),
    ({"thresholds": [{"at": 0.8, "severity": "info", "on": "someday"}]},
     "budget 'search-app': thresholds.0.on: must be one of 'spent' or 'forecast'"),
    ({"thresholds": [{"at": 0.8, "severity": "info"}, {"at": 0.8, "severity": "warning"}]},
     "budget 'search-app': thresholds: two thresholds at 0.8 on 'spent'; keep one"),
    ({"thresholds": [{"at": 0.8, "severity": "info", "colour": "red"}]},
     "budget 'search-app': thresholds.0.colour: unknown field"),
    ({"amount": 0}, "budget 'search-app': amount: must be > 0"),
    ({"amount": "100"}, "budget 'search-app': amount: Input should be a valid number"),
    ({"amount": None}, "budget 'search-app': amount: required field is missing"),
    ({"metric": "calls"}, "budget 'search-app': metric: must be one of 'cost' or 'tokens'"),
    ({"period": "year"}, "budget 'search-app': period: must be one of 'day', 'week', "
                         "'month' or 'rolling', got 'year'"),
    ({"period": "rolling"}, "budget 'search-app': rolling_days: required for period "
                            "'rolling'"),
    ({"period": "rolling", "rolling_days": 91}, "budget 'search-app': rolling_days: must be "
                                                "<= 90"),
    ({"rolling_days": 7}, "budget 'search-app': rolling_days: only for period 'rolling'"),
    ({"week_starts": "sunday"}, "budget 'search-app': week_starts: only for period 'week'"),
    ({"period": "week", "week_starts": "friday"},
     "budget 'search-app': week_starts: must be one of 'monday' or 'sunday'"),
    ({"timezone": "Mars/Olympus"}, "budget 'search-app': timezone: unknown time zone "
                                   "'Mars/Olympus'"),
    ({"scope": "everyone"}, "budget 'search-app': scope: must be 'overall' or one dimension"),
    ({"scope": {"user": "*", "team": "*"}}, "budget 'search-app': scope: must be 'overall'"),
    ({"scope": {"region": ["eu"]}}, "budget 'search-app': scope: unknown dimension 'region'"),
    ({"scope": {"user": "user-001"}}, "budget 'search-app': scope: user: write a list, "
                                      "[user-001], or '*' for every user"),
    ({"scope": {"user": []}}, "budget 'search-app': scope: user: must be a non-empty list"),
    ({"scope": {"team": ["a", "a"]}}, "budget 'search-app': scope: team: a listed more than "
                                      "once"),
    ({"amounts": {"user-001": 3}}, "budget 'search-app': amounts: only for user, team, app or "
                                   "key scopes"),
    ({"scope": {"team": ["support"]}, "amounts": {"growth": 3}},
     "budget 'search-app': amounts: growth not in scope.team"),
    ({"scope": {"team": "*"}, "amounts": {"growth": -1}},
     "budget 'search-app': amounts: growth: must be > 0"),
    ({"switch_model": {"to": "gpt-4o-mini"}}, "budget 'search-app': switch_model: only for "
                                               "app scopes"),
    ({"scope": {"app": ["search-qa"]}, "switch_model": {"to": ""}},
     "budget 'search-app': switch_model.to: String should have at least 1 character"),
    ({"thresholds": [{"at": 1.0, "severity": "critical", "heal": "switch_model"}]},
     "budget 'search-app': thresholds.0.heal: switch_model needs the budget's switch_model"),
    ({"soft": True, "thresholds": [{"at": 1.0, "severity": "info", "heal": "rate_limit_user"}]},
     "budget 'search-app': thresholds.0.heal: a soft budget only reports and never heals"),
    ({"name": "Search App"}, "budget 'Search App': name: 'Search App' must be lowercase"),
    ({"budget": 5}, "budget 'search-app': budget: unknown field"),
])
def test_each_error_names_file_budget_and_field(tmp_path, fields, expected):
    message = error(budget_file(tmp_path, **fields))
    assert message.startswith("budgets.yaml: ")
    assert expected in message, message


def test_every_problem_is_listed_one_per_line(tmp_path):
    message = error(budget_file(tmp_path, amount=-1, metric="calls"))
    lines = message.splitlines()
    assert len(lines) == 2
    assert all(line.startswith("budgets.yaml: budget 'search-app': ") for line in lines)
    # Cross-field problems too, each whole on its own line.
    message = error(budget_file(tmp_path, soft=True, rolling_days=3, thresholds=[
        {"at": 1.0, "severity": "info", "heal": "rate_limit_user"}]))
    assert message.splitlines() == [
        "budgets.yaml: budget 'search-app': rolling_days: only for period 'rolling' (this "
        "budget's period is 'day'); remove it",
        "budgets.yaml: budget 'search-app': thresholds.0.heal: a soft budget only reports and "
        "never heals; remove heal or set soft: false",
    ]


def test_file_level_errors(tmp_path):
    twice = BASE + BASE.split("budgets:\n", 1)[1].replace("search-app", "other-app")
    assert error(write(tmp_path, twice)) == ("budgets.yaml: budget 'every-user': name: used by "
                                             "more than one budget (names must be unique)")
    # A bad file-wide time zone is reported once, not again for each budget inheriting it.
    assert error(write(tmp_path, "timezone: CEST\n" + BASE)).startswith(
        "budgets.yaml: timezone: unknown time zone 'CEST'; use an IANA name")
    assert len(error(write(tmp_path, "timezone: CEST\n" + BASE)).splitlines()) == 1
    assert "budgets.yaml: budgets: must be a list" in error(write(tmp_path, "budgets: {}\n"))
    assert error(write(tmp_path, "budgets: [monthly]\n")).startswith(
        "budgets.yaml: budgets.0: Input should be")
    assert "budgets.yaml: not valid YAML" in error(write(tmp_path, "budgets: [\n"))
    assert "file not found" in error(tmp_path / "missing.yaml")
    # An empty file is no budgets, not an error.
    assert load_budgets(write(tmp_path, "")).budgets == []


def test_variable_replaces_fields_deep_merged(tmp_path):
    path = write(tmp_path, BASE)
    cfg = load_budgets(path, variable_overrides={"budgets": [
        {"name": "search-app", "amount": 250, "switch_model": {"restore": False}},
        {"name": "every-user", "amounts": {"user-012": 75}, "scope": {"team": "*"}},
    ]})
    app = cfg.get("search-app")
    assert app is not None and app.amount == 250
    # Mappings merge: `to` stays from the file, `restore` comes from the Variable.
    assert app.switch_model is not None
    assert (app.switch_model.to, app.switch_model.restore) == ("gpt-4o-mini", False)
    assert [t.at for t in app.thresholds] == [0.8, 1.0]  # untouched fields stay
    users = cfg.get("every-user")
    assert users is not None and users.amounts == {"user-091": 150, "user-012": 75}
    # A scope is replaced whole, never merged into a two-dimension scope.
    assert (scope_dimension(users), scope_values(users)) == ("team", None)


def test_variable_null_drops_a_field_and_lists_replace(tmp_path):
    cfg = load_budgets(write(tmp_path, BASE), variable_overrides={"budgets": [
        {"name": "every-user", "amounts": None,
         "thresholds": [{"at": 0.5, "severity": "info"}]}]})
    users = cfg.get("every-user")
    assert users is not None and users.amounts == {}
    assert [(t.at, t.severity) for t in users.thresholds] == [(0.5, "info")]


def test_variable_adds_and_removes_budgets(tmp_path):
    cfg = load_budgets(write(tmp_path, BASE), variable_overrides={"budgets": [
        {"name": "every-user", "remove": True},
        {"name": "growth-week", "scope": {"team": ["growth"]}, "metric": "tokens",
         "amount": 5e7, "period": "week", "week_starts": "sunday",
         "thresholds": [{"at": 1, "severity": "warning"}]},
    ]})
    assert [b.name for b in cfg.budgets] == ["search-app", "growth-week"]
    added = cfg.get("growth-week")
    assert added is not None and added.week_starts == "sunday"


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"budgets": [{"name": "search-app", "amount": -5}]},
     "budgets.yaml: budget 'search-app': amount: must be > 0 (from Airflow Variable "
     "promptops_budgets)"),
    ({"budgets": [{"name": "new-one", "scope": "overall", "metric": "cost", "amount": 1,
                   "period": "day", "thresholds": [{"at": 1, "severity": "severe"}]}]},
     "budget 'new-one': thresholds.0.severity: must be one of 'info', 'warning' or 'critical'"
     ", got 'severe' (from Airflow Variable promptops_budgets)"),
    ({"budgets": [{"name": "ghost", "remove": True}]},
     "budgets.yaml: Airflow Variable promptops_budgets: budget 'ghost': remove: no such "
     "budget in budgets.yaml; known: every-user, search-app"),
    ({"budgets": [{"name": "search-app", "remove": True, "amount": 3}]},
     "Airflow Variable promptops_budgets: budget 'search-app': remove: write"),
    ({"budgets": [{"amount": 3}]},
     "Airflow Variable promptops_budgets: budgets.0: each entry needs a 'name'"),
    ({"search-app": {"amount": 3}},
     "Airflow Variable promptops_budgets: must be a JSON object {\"budgets\": [...]}"),
])
def test_variable_errors_name_the_variable(tmp_path, overrides, expected):
    message = error(write(tmp_path, BASE), variable_overrides=overrides)
    assert expected in message, message


def test_file_errors_do_not_blame_the_variable(tmp_path):
    broken = BASE.replace("amount: 5\n", "amount: 0\n")
    message = error(write(tmp_path, broken), variable_overrides={"budgets": [
        {"name": "search-app", "amount": 7}]})
    assert message == "budgets.yaml: budget 'every-user': amount: must be > 0"
