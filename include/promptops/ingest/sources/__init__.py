"""Where call records come from, besides the platform API (README "Where your records come
from").

A source turns its native records into pages of call records shaped like the platform
API's (:mod:`promptops.contracts.records`), so everything after it is shared: validation,
quarantine, dedupe, partitions, metrics, alerts. It is chosen per deployment with
``PROMPTOPS_SOURCE=platform_api|otel|litellm``:

- ``platform_api``: :class:`promptops.platform.client.PlatformClient` (the default, and the
  simulator's);
- ``otel``: OpenTelemetry GenAI spans, OTLP JSON as the Collector's file and S3 exporters
  write it (:mod:`.otel`);
- ``litellm``: the LiteLLM proxy's ``LiteLLM_SpendLogs`` table (:mod:`.litellm`).

Each source reads one ``[start, end)`` window at a time and is idempotent per hour, like
the API pull: a rerun of an hour gives the same partition. Which attribute, column or
metadata key gives ``app``, ``team``, ``user_id``... is the mapping's
(:mod:`.mapping`); a field no mapping provides is null, never invented.
"""

from promptops.ingest.sources.base import SourcePage, source_reject

__all__ = ["SourcePage", "source_reject"]
