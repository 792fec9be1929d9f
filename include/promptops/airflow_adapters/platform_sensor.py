"""The hourly DAG's *Wait for platform health* sensor: Airflow's poke protocol around
:func:`promptops.pipelines.health.look_at_platform`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import PokeReturnValue
from airflow.sdk.exceptions import AirflowSensorTimeout

from promptops.airflow_adapters.resources import platform_client

#: Airflow checks the sensor's timeout right after the poke returns: a moment later.
_TIMEOUT_MARGIN = timedelta(seconds=1)


def poke_platform(context: Any) -> PokeReturnValue:
    """Done when ``/health`` says ok.

    When the sensor's time is up after a look that was not ok, it fails naming what that
    look saw (Airflow's own timeout says only "Sensor has timed out"); a timed-out sensor is
    not retried.
    """
    from promptops.pipelines.health import look_at_platform
    from promptops.settings import get_settings

    source = get_settings().source
    if source != "platform_api":  # spans and spend logs are read where they lie
        print(f"records come from {source!r}, not the platform API: nothing to wait for")
        return PokeReturnValue(is_done=True, xcom_value=f"source {source}")
    look = look_at_platform(platform_client)
    print(look.said)
    if not look.ready and _sensor_time_is_up(context):
        timeout = context["task"].timeout
        raise AirflowSensorTimeout(f"the platform was not ready within the sensor's timeout "
                                   f"of {timeout:g} s; the last look said: {look.said}")
    return PokeReturnValue(is_done=look.ready, xcom_value=look.status)


def _sensor_time_is_up(context: Any) -> bool:
    """Whether Airflow would time the sensor out after this poke: its timeout counts from
    the first poke (reschedule mode) or from the start of the try (poke mode)."""
    task, ti = context["task"], context["ti"]
    now = datetime.now(UTC)
    started = (ti.get_first_reschedule_date(context) if task.reschedule else None) \
        or ti.start_date or now
    return now + _TIMEOUT_MARGIN - started >= timedelta(seconds=task.timeout)
