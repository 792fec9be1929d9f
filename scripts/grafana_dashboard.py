"""Writes include/grafana/promptops.json, the Grafana dashboard of the metrics promptops
pushes to Prometheus (README "Integrations"), built with grafana-foundation-sdk:

    .venv/bin/python scripts/grafana_dashboard.py [--check]

``--check`` only compares: exit 1 when the committed JSON differs from what the code builds.
Cost by model, team and app; quality (success, intent accuracy, relevance); p95 latency with
the baseline band; open incidents, also as annotations.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import (
    AnnotationQuery,
    Dashboard,
    DatasourceVariable,
    Row,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import TimeZoneBrowser
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUT = Path(__file__).resolve().parents[1] / "include" / "grafana" / "promptops.json"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'job="promptops",dag="promptops_hourly"'


def q(expr: str, legend: str, ref: str = "A") -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DS)


def by(metric: str, dimension: str, title: str, unit: str) -> Timeseries:
    return (Timeseries().title(title).unit(unit).datasource(DS).height(8).span(8)
            .with_target(q(f'{metric}{{{SEL},dimension="{dimension}"}}', "{{slice}}")))


def build() -> Dashboard:
    return (
        Dashboard("promptops: LLM platform cost, quality and latency")
        .uid("promptops-overview")
        .tags(["promptops", "llm"])
        .refresh("5m")
        .time("now-24h", "now")
        .timezone(TimeZoneBrowser)
        .with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .annotation(AnnotationQuery().name("promptops incidents").datasource(DS).enable(True)
                    .icon_color("red")
                    .expr('sum by (severity) (promptops_open_incidents{job="promptops"}) > 0'))
        .with_row(Row("Cost"))
        .with_panel(Stat().title("Cost of the last hour").unit("currencyUSD").datasource(DS)
                    .height(8).span(6)
                    .with_target(q(f'promptops_hour_cost_usd{{{SEL},dimension="overall"}}',
                                   "cost")))
        .with_panel(by("promptops_hour_cost_usd", "model", "Cost by model", "currencyUSD")
                    .span(6))
        .with_panel(by("promptops_hour_cost_usd", "team", "Cost by team", "currencyUSD")
                    .span(6))
        .with_panel(by("promptops_hour_cost_usd", "app", "Cost by app", "currencyUSD")
                    .span(6))
        .with_row(Row("Quality"))
        .with_panel(by("promptops_hour_success_ratio", "model", "Success by model",
                       "percentunit"))
        .with_panel(by("promptops_hour_intent_accuracy_ratio", "app", "Intent accuracy by app",
                       "percentunit"))
        .with_panel(by("promptops_hour_relevance_score", "app", "Answer relevance by app",
                       "none"))
        .with_row(Row("Latency"))
        .with_panel(Timeseries().title("p95 latency with its baseline band").unit("s")
                    .datasource(DS).height(8).span(16)
                    .with_target(q('promptops_hour_latency_seconds{'
                                   f'{SEL},dimension="overall",quantile="0.95"}}', "p95"))
                    .with_target(q('promptops_baseline_lower{'
                                   f'{SEL},dimension="overall",metric="latency_p95_ms"}}',
                                   "expected low", "B"))
                    .with_target(q('promptops_baseline_upper{'
                                   f'{SEL},dimension="overall",metric="latency_p95_ms"}}',
                                   "expected high", "C")))
        .with_panel(Stat().title("Open incidents").datasource(DS).height(8).span(8)
                    .with_target(q('sum by (severity) (promptops_open_incidents'
                                   '{job="promptops"})', "{{severity}}")))
        .with_row(Row("Budgets"))
        .with_panel(Timeseries().title("Budget used and projected (share of the amount)")
                    .unit("percentunit").datasource(DS).height(8).span(16)
                    .with_target(q('promptops_budget_spent{job="promptops"} / ignoring(bound) '
                                   'promptops_budget_amount{job="promptops"}',
                                   "{{budget}} {{dimension}}={{slice}} spent"))
                    .with_target(q('promptops_budget_projected{job="promptops",bound="expected"}'
                                   ' / ignoring(bound) promptops_budget_amount{job="promptops"}',
                                   "{{budget}} {{dimension}}={{slice}} projected", "B")))
        .with_panel(Stat().title("Ingest lag").unit("s").datasource(DS).height(8).span(8)
                    .with_target(q('promptops_ingest_lag_seconds{job="promptops"}', "lag"))
                    .with_target(q('sum(promptops_ingest_rejected_records{job="promptops"})',
                                   "rejected", "B")))
    )


def render() -> str:
    return json.dumps(json.loads(JSONEncoder(sort_keys=True, indent=2).encode(build().build())),
                      indent=2, sort_keys=True) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is not what scripts/grafana_dashboard.py builds; run it to rewrite")
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
