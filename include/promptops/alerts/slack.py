"""Slack messages for the alert engine: Block Kit rendering and webhook delivery.

:func:`render_message` turns one group :class:`~promptops.alerts.engine.Notification` into
a Block Kit message: a header with the severity and count, a section per alert (what, the
value against its threshold and comparison, since when, the slice, root cause and heal
suggestion), a context line per alert with its fingerprint, and a footer with the link to
the Airflow run. Slack allows 50 blocks; alerts beyond what fits are summarised in one
section. Blocks are built with ``slack_sdk.models.blocks`` and validated before sending.

:class:`SlackNotifier` delivers through ``slack_sdk`` webhook clients that a
:class:`SlackWebhooks` builds from Slack connections by id: in a DAG task
:class:`promptops.airflow_adapters.connections.AirflowSlackWebhooks`, the Airflow Slack
provider's ``SlackWebhookHook`` (connection of type ``slackwebhook``; the webhook URL in its
*password*, or the token in the password and the endpoint in *host*). ``slack_sdk`` retry
handlers retry 429 (waiting the
``Retry-After`` it asks for, up to a bound), 500/503, and connection errors and timeouts. A
timed-out request may have reached Slack, so a retry after a timeout can post a message
twice: delivery is at-least-once. Errors are reported as a
:class:`~promptops.alerts.engine.Delivery` (never raised) and never contain the webhook URL.

With a bot token (:class:`SlackBots`: in a DAG task a Slack API connection, type ``slack``,
holding an ``xoxb-`` token with ``chat:write`` and the channel in its extra), an incident's
first message is posted with ``chat.postMessage`` and its ``ts`` kept in the incident's
state; its updates, reminders and all-clear are posted in that thread (``thread_ts``) and
``chat.update`` rewrites the opening message to the incident as it stands (severity,
metrics, or RESOLVED). A webhook cannot thread: there, every message is a new one, and the
engine spaces them by ``group_interval`` and ``incidents.min_message_interval``.
"""

from __future__ import annotations

import http.client
import logging
import random
import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol, cast
from urllib.error import URLError

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import (
    BackoffRetryIntervalCalculator,
    ConnectionErrorRetryHandler,
    HttpRequest,
    HttpResponse,
    RateLimitErrorRetryHandler,
    RetryHandler,
    RetryState,
)
from slack_sdk.http_retry.builtin_handlers import ServerErrorRetryHandler
from slack_sdk.models.blocks import (
    Block,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)
from slack_sdk.webhook import WebhookClient

from promptops.alerts.config import AlertingConfig
from promptops.alerts.engine import Delivery, Notification
from promptops.errors import InvalidInput, PromptOpsError
from promptops.secrets import redact

log = logging.getLogger(__name__)

MAX_BLOCKS = 50
_MAX_TEXT = 3000
_MAX_FIELD = 2000
_MAX_HEADER = 150
SEVERITY_EMOJI = {"critical": ":red_circle:", "warning": ":large_orange_circle:",
                  "info": ":large_blue_circle:"}
RESOLVED_EMOJI = ":white_check_mark:"
_REASON = {"new": "new alert", "resolved": "resolved", "repeat": "still firing (repeat)"}
#: Metrics that are fractions in [0, 1] and read best as percentages.
_FRACTION_HINTS = ("rate", "accuracy", "precision", "recall", "f1", "coverage", "share")
#: Annotations that get their own line, in this order, with these titles.
_KNOWN_ANNOTATIONS = {"root_cause": "Likely root cause", "moved": "What moved",
                      "heal_playbook": "Heal suggestion", "baseline": "Baseline",
                      "band": "Expected band", "runbook": "Runbook"}
#: Kept in the alert log, not in Slack (the table reads badly in mrkdwn; the set is for tools).
_HIDDEN_ANNOTATIONS = {"comparison", "root_cause_table", "root_cause_set"}


# -- rendering ------------------------------------------------------------------------------

def escape(text: Any) -> str:
    """Slack mrkdwn escaping: the three characters Slack reserves for links and mentions."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def format_value(metric: str, value: float | None) -> str:
    """A number as an operator reads it: percentages for rates, ms, USD."""
    if value is None:
        return "n/a"
    name = metric.lower()
    if any(h in name for h in _FRACTION_HINTS) and -1.0 <= value <= 1.0:
        return f"{value * 100:.2f}%"
    if name.endswith("_ms"):
        return f"{value:,.0f} ms"
    if name.endswith("_usd"):
        return f"${value:,.2f}"
    if float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.4g}"


def _when(iso: str | None) -> str:
    if not iso:
        return "n/a"
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")


def _slice(labels: dict[str, str]) -> str:
    dim, sl = labels.get("dimension"), labels.get("slice")
    if not dim or dim == "overall":
        return "overall"
    return f"{dim} = {sl}"


def _alert_blocks(alert: dict[str, Any], *, resolved: bool, new: bool) -> list[Block]:
    labels = alert.get("labels", {})
    metric = labels.get("metric", "")
    emoji = RESOLVED_EMOJI if resolved else SEVERITY_EMOJI.get(alert["severity"], "")
    title = f"{emoji} *{escape(alert['rule'])}*" + (" :new:" if new else "")
    lines = [f"{title}: {escape(alert.get('summary', ''))}"]
    ann = alert.get("annotations") or {}
    for key, name in _KNOWN_ANNOTATIONS.items():
        if ann.get(key):
            value = f"`{escape(ann[key])}`" if key == "heal_playbook" else escape(ann[key])
            lines.append(f"*{name}:* {value}")
    extra = [k for k in sorted(ann) if k not in _KNOWN_ANNOTATIONS and k not in _HIDDEN_ANNOTATIONS]
    lines += [f"*{escape(k)}:* {escape(ann[k])}" for k in extra[:5]]

    value = format_value(metric, alert.get("value"))
    threshold = format_value(metric, alert.get("threshold"))
    comparison = ann.get("comparison")
    value_text = f"{value} {escape(comparison)} {threshold}" if comparison \
        else f"{value} (threshold {threshold})"
    other = {k: v for k, v in labels.items() if k not in ("metric", "dimension", "slice")}
    fields = [
        f"*{'Last value' if resolved else 'Value vs threshold'}*\n{value_text}",
        f"*Slice*\n{escape(_slice(labels))}",
        f"*Since*\n{_when(alert.get('active_since'))}",
        (f"*Resolved*\n{_when(alert.get('resolved_at'))}" if resolved
         else f"*Severity*\n{escape(alert['severity'])}"),
    ]
    if metric:
        fields.append(f"*Metric*\n`{escape(metric)}`")
    if other:
        fields.append("*Labels*\n" + escape(", ".join(f"{k}={v}" for k, v in sorted(other.items()))))
    context = f"fingerprint `{alert['fingerprint']}`"
    if alert.get("fired_at"):
        context += f" · firing since {_when(alert['fired_at'])}"
    return [
        SectionBlock(text=MarkdownTextObject(text=_cut("\n".join(lines), _MAX_TEXT)),
                     fields=[MarkdownTextObject(text=_cut(f, _MAX_FIELD)) for f in fields[:10]]),
        ContextBlock(elements=[MarkdownTextObject(text=_cut(context, _MAX_TEXT))]),
    ]


_INCIDENT_STATUS = {"new": "INCIDENT", "update": "INCIDENT UPDATE",
                    "repeat": "INCIDENT STILL OPEN", "resolved": "INCIDENT RESOLVED"}
#: Annotations that may say how many samples a value rests on.
_SAMPLE_KEYS = ("calls", "samples", "n", "sample_size")


def _cause_text(cause: str) -> str:
    return cause.replace("&", ", ") if cause else "overall"


def _member_line(alert: dict[str, Any], *, resolved: bool, new: bool) -> str:
    """One affected metric: rule, slice, value against its level or expected value, samples
    (when the finding names them), and the finding's own one-line summary."""
    labels = alert.get("labels", {})
    metric = labels.get("metric", "") or alert.get("rule", "")
    ann = alert.get("annotations") or {}
    emoji = RESOLVED_EMOJI if resolved else SEVERITY_EMOJI.get(alert["severity"], "")
    value = format_value(metric, alert.get("value"))
    comparison = ann.get("comparison")
    level = f"{escape(comparison)} {format_value(metric, alert.get('threshold'))}" \
        if comparison else f"(level {format_value(metric, alert.get('threshold'))})"
    expected = ann.get("expected") or ann.get("band")
    if expected:
        level += f" (expected {escape(expected)})"
    samples = next((f" · {escape(ann[k])} {k}" for k in _SAMPLE_KEYS if ann.get(k)), "")
    state = " · recovered" if resolved else (" :new:" if new else "")
    return (f"{emoji} *{escape(alert['rule'])}* · {escape(_slice(labels))} · "
            f"{value} {level}{samples}{state}\n      _{escape(alert.get('summary', ''))}_ "
            f"· `{alert['fingerprint']}`")


def incident_header(n: Notification) -> tuple[str, list[Block]]:
    """The incident's header as it stands: fallback text and header blocks (the opening
    message's top, and what ``chat.update`` rewrites it to on a bot token)."""
    status = _INCIDENT_STATUS["resolved"] if not n.firing else _INCIDENT_STATUS["new"]
    emoji = SEVERITY_EMOJI.get(n.severity, "") if n.firing else RESOLVED_EMOJI
    count = len(n.firing) if n.firing else len(n.resolved)
    what = f"{count} metric{'s' if count != 1 else ''}"
    header = _cut(f"{emoji} {status} · {n.severity.upper()} · {_cause_text(n.cause)} · {what}",
                  _MAX_HEADER)
    opened = _when(n.opened_at)
    lead = (n.firing or n.resolved or [{}])[0]
    lines = [f"*Primary cause:* {escape(_cause_text(n.cause))} · *Opened:* {opened} · "
             f"*Evaluated:* {n.evaluated_at:%Y-%m-%d %H:%M UTC}"]
    ann = lead.get("annotations") or {}
    if ann.get("root_cause"):
        lines.append(f"*Likely root cause:* {escape(ann['root_cause'])}")
    if n.firing and ann.get("heal_playbook"):
        lines.append(f"*Heal suggestion:* `{escape(ann['heal_playbook'])}`")
    # Alertmanager's fallback convention ([FIRING:n] / [RESOLVED:n]), which tools parse.
    text = f"[{'FIRING' if n.firing else 'RESOLVED'}:{count}] {n.severity} incident " \
           f"{_cause_text(n.cause)}: {what}"
    return _cut(text, _MAX_TEXT), [
        HeaderBlock(text=PlainTextObject(text=header, emoji=True)),
        SectionBlock(text=MarkdownTextObject(text=_cut("\n".join(lines), _MAX_TEXT)))]


def render_incident(n: Notification, *, max_alerts: int = 20) -> dict[str, Any]:
    """One incident's message: its header (worst severity, primary cause), then one line per
    affected metric (recovered ones marked), then the run link. Updates, repeats and the
    all-clear say why they were sent."""
    text, blocks = incident_header(n)
    why = {"new": "opened", "update": "severity or scope changed",
           "repeat": "still open (reminder)", "resolved": "every metric recovered",
           "header": f"as of {n.evaluated_at:%Y-%m-%d %H:%M UTC} (updates in the thread)"}
    blocks.insert(1, ContextBlock(elements=[MarkdownTextObject(
        text=f"*Why now:* {why.get(n.reason, n.reason)}")]))
    new = set(n.new)
    items = [(a, False) for a in n.firing] + [(a, True) for a in n.resolved]
    lines = [_member_line(a, resolved=r, new=a["fingerprint"] in new)
             for a, r in items[:max_alerts]]
    if len(items) > max_alerts:
        lines.append(f"…and *{len(items) - max_alerts} more* (see the alert log)")
    chunk: list[str] = []
    for line in lines:  # one section per ~3000 characters of lines
        if chunk and len("\n".join([*chunk, line])) > _MAX_TEXT:
            blocks.append(SectionBlock(text=MarkdownTextObject(text="\n".join(chunk))))
            chunk = []
        chunk.append(_cut(line, _MAX_TEXT))
    if chunk:
        blocks.append(SectionBlock(text=MarkdownTextObject(text="\n".join(chunk))))
    run = f"Airflow run `{escape(n.run_id)}`" if n.run_id else "Airflow run"
    if n.run_url:
        run = f"<{n.run_url}|{run}>"
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text=_cut(
        f"{run} · scope `{escape(n.scope)}` · incident `{n.incident_id}` · notification "
        f"`{n.id}`", _MAX_TEXT))]))
    if n.reason not in ("new", "header"):
        text = f"{text} ({why.get(n.reason, n.reason)})"
    message = {"text": text, "blocks": [b.to_dict() for b in blocks][:MAX_BLOCKS]}
    validate_message(message)
    return message


def render_message(n: Notification, *, max_alerts: int = 20) -> dict[str, Any]:
    """The webhook body (``text`` fallback and ``blocks``) for one group notification."""
    if n.incident_id is not None:
        return render_incident(n, max_alerts=max_alerts)
    firing, resolved = n.firing, n.resolved
    status = "FIRING" if firing else "RESOLVED"
    emoji = SEVERITY_EMOJI.get(n.severity, "") if firing else RESOLVED_EMOJI
    group = ", ".join(f"{k}={v}" for k, v in n.group_labels.items() if v) or "all alerts"
    counts = f"{len(firing)} firing" + (f", {len(resolved)} resolved" if resolved else "")
    if not firing:
        counts = f"{len(resolved)} resolved"
    header = _cut(f"{status} · {n.severity.upper()} · {counts} · {group}", _MAX_HEADER - 3)
    text = f"[{status}:{len(firing) or len(resolved)}] {n.severity} {group}"

    blocks: list[Block] = [
        # Plain text, but Slack still renders :emoji: codes there when emoji=True.
        HeaderBlock(text=PlainTextObject(text=_cut(f"{emoji} {header}", _MAX_HEADER),
                                         emoji=True)),
        SectionBlock(text=MarkdownTextObject(text=_cut(
            f"*Group:* {escape(group)} · *Why now:* {_REASON.get(n.reason, n.reason)} · "
            f"*Evaluated:* {n.evaluated_at:%Y-%m-%d %H:%M UTC}", _MAX_TEXT))),
    ]
    # Fixed blocks: header, intro, divider before resolved, overflow summary, footer.
    room = min(max_alerts, (MAX_BLOCKS - 5) // 2)
    items = [(a, False) for a in firing] + [(a, True) for a in resolved]
    shown, hidden = items[:room], items[room:]
    new = set(n.new)
    divider_done = False
    for alert, is_resolved in shown:
        if is_resolved and firing and not divider_done:
            blocks.append(DividerBlock())
            divider_done = True
        blocks += _alert_blocks(alert, resolved=is_resolved, new=alert["fingerprint"] in new)
    if hidden:
        names = ", ".join(f"{a['rule']} ({_slice(a.get('labels', {}))})"
                          + (" resolved" if r else "") for a, r in hidden)
        blocks.append(SectionBlock(text=MarkdownTextObject(text=_cut(
            f"…and *{len(hidden)} more* not shown: {escape(names)}", _MAX_TEXT))))
    run = f"Airflow run `{escape(n.run_id)}`" if n.run_id else "Airflow run"
    if n.run_url:
        run = f"<{n.run_url}|{run}>"
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text=_cut(
        f"{run} · scope `{escape(n.scope)}` · notification `{n.id}`", _MAX_TEXT))]))
    message = {"text": _cut(text, _MAX_TEXT), "blocks": [b.to_dict() for b in blocks]}
    validate_message(message)
    return message


def validate_message(message: dict[str, Any]) -> None:
    """Raise ``SlackObjectFormationError`` / ``ValueError`` if Slack would refuse it."""
    blocks = message.get("blocks", [])
    if len(blocks) > MAX_BLOCKS:
        raise InvalidInput(f"{len(blocks)} blocks; Slack allows {MAX_BLOCKS}")
    for raw in blocks:
        block = Block.parse(raw)
        if block is None:
            raise InvalidInput(f"unknown block type {raw.get('type')!r}")
        block.validate_json()


# -- delivery -------------------------------------------------------------------------------

class _Counter:
    def __init__(self) -> None:
        self.retries = 0


class _BoundedRateLimitHandler(RetryHandler):
    """Retry a 429 after its ``Retry-After`` (plus a little jitter), unless Slack asks for
    longer than ``max_wait_s``: then give up now and let the next evaluation retry, rather
    than hold a worker slot."""

    def __init__(self, max_retry_count: int, max_wait_s: float, counter: _Counter) -> None:
        super().__init__(max_retry_count)
        self.max_wait_s = max_wait_s
        self.counter = counter

    @staticmethod
    def _retry_after(response: HttpResponse) -> float:
        for name, values in response.headers.items():
            if name.lower() == "retry-after" and values:
                try:
                    return max(0.0, float(values[0]))
                except ValueError:
                    break
        return 1.0

    def _can_retry(self, *, state: RetryState, request: HttpRequest,
                   response: HttpResponse | None = None, error: Exception | None = None) -> bool:
        return (response is not None and response.status_code == 429
                and self._retry_after(response) <= self.max_wait_s)

    def prepare_for_next_attempt(self, *, state: RetryState, request: HttpRequest,
                                 response: HttpResponse | None = None,
                                 error: Exception | None = None) -> None:
        assert response is not None
        state.next_attempt_requested = True
        time.sleep(self._retry_after(response) + random.uniform(0, 0.1))
        state.increment_current_attempt()
        self.counter.retries += 1


class _Counting:
    """Mixed into slack_sdk's retry handlers: count every retry they decide to make."""

    def __init__(self, counter: _Counter, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.counter = counter

    def prepare_for_next_attempt(self, **kwargs: Any) -> None:
        # A mixin: the slack_sdk handler after it in the MRO defines the method.
        super().prepare_for_next_attempt(**kwargs)  # type: ignore[misc]
        self.counter.retries += 1


class _CountingConnectionHandler(_Counting, ConnectionErrorRetryHandler):
    pass


class _CountingServerErrorHandler(_Counting, ServerErrorRetryHandler):
    pass


#: Transport errors worth another try: refused/reset connections and timeouts.
RETRYABLE_ERRORS: list[type[Exception]] = [URLError, ConnectionError, TimeoutError,
                                           http.client.RemoteDisconnected,
                                           http.client.IncompleteRead]
#: Slack's answers that mean the webhook itself is wrong, not the message.
_INVALID_WEBHOOK = {"no_service", "invalid_token", "channel_not_found", "channel_is_archived",
                    "no_team", "team_disabled", "action_prohibited", "no_active_hooks",
                    "posting_to_general_channel_denied", "user_not_found"}


class _Redactor(logging.Filter):
    """Keeps webhook URLs out of what slack_sdk logs ("Going to retry ... <url>")."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg, record.args = redact(record.getMessage(), self.secrets), ()
        return True


_REDACTOR = _Redactor()
#: The logger handed to slack_sdk's client. At INFO, so the client's DEBUG dumps of URL and
#: body are skipped (it checks ``logger.level``), and filtered, so the INFO retry line is not.
_SDK_LOG = logging.getLogger("promptops.alerts.slack.sdk")
_SDK_LOG.setLevel(logging.INFO)
_SDK_LOG.addFilter(_REDACTOR)


def secret_parts(url: str) -> set[str]:
    """The URL and its path (the token), each of which must stay out of logs and errors."""
    parts = {url}
    scheme_rest = url.split("://", 1)[-1]
    if "/" in scheme_rest:
        path = scheme_rest.split("/", 1)[1].strip("/")
        if len(path) >= 8:
            parts.add(path)
    return parts


class SlackConnectionMissing(PromptOpsError):
    """The Slack connection does not exist, or holds no webhook URL."""


class SlackWebhooks(Protocol):
    """Slack incoming webhooks by connection id (in a DAG task:
    :class:`promptops.airflow_adapters.connections.AirflowSlackWebhooks`)."""

    def exists(self, conn_id: str) -> bool:
        """Whether the connection is there to try (a lookup that fails for another reason
        says yes, and delivery reports what happens)."""
        ...

    def client(self, conn_id: str, *, timeout: float, retry_handlers: list[RetryHandler],
               logger: logging.Logger) -> WebhookClient:
        """A client for the connection's webhook, its URL registered with the log masker;
        raises :class:`SlackConnectionMissing` when there is no such connection or URL."""
        ...


@dataclass(frozen=True)
class SlackBot:
    """A bot token's Web API client and the channel its messages go to."""

    client: WebClient
    channel: str


class SlackBots(Protocol):
    """Bot-token connections by id (in a DAG task
    :class:`promptops.airflow_adapters.resources.AirflowSlackBots`)."""

    def bot(self, conn_id: str, *, timeout: float, retry_handlers: list[RetryHandler],
            logger: logging.Logger) -> SlackBot | None:
        """The connection's Web API client and channel, its token registered with the log
        masker; None when the connection is an incoming webhook (or missing). Raises
        :class:`SlackConnectionMissing` when it holds no token or names no channel."""
        ...


#: Web API errors that retrying cannot fix: the token or the channel is wrong.
_BOT_CONFIG_ERRORS = {"not_authed", "invalid_auth", "account_inactive", "token_revoked",
                      "token_expired", "no_permission", "missing_scope", "not_in_channel",
                      "channel_not_found", "is_archived", "restricted_action",
                      "org_login_required", "ekm_access_denied", "team_access_not_granted"}


class SlackNotifier:
    """Deliver group notifications to Slack incoming webhooks held in connections, or
    through a bot token where the connection holds one (incidents then thread)."""

    def __init__(self, *, webhooks: SlackWebhooks, timeout_s: float = 10.0,
                 max_retries: int = 3, max_retry_after_s: float = 30.0,
                 backoff_s: float = 0.5, max_alerts_per_message: int = 20,
                 bots: SlackBots | None = None) -> None:
        self.webhooks = webhooks
        # Connections that are bot tokens: given, or told by the webhooks object itself
        # (``airflow_adapters.resources.slack_webhooks`` knows both kinds).
        self.bots: SlackBots | None = bots if bots is not None else \
            (cast("SlackBots", webhooks) if callable(getattr(webhooks, "bot", None)) else None)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_retry_after_s = max_retry_after_s
        self.backoff_s = backoff_s
        self.max_alerts_per_message = max_alerts_per_message
        self._resolved: dict[tuple[str, ...], str | None] = {}

    @classmethod
    def from_config(cls, config: AlertingConfig, *, webhooks: SlackWebhooks,
                    **kwargs: Any) -> SlackNotifier:
        return cls(webhooks=webhooks, max_alerts_per_message=config.max_alerts_per_message,
                   **kwargs)

    def resolve_connection(self, candidates: list[str]) -> str | None:
        """The first of the route's connections that exists (e.g. ``slack_alerts_critical``
        falling back to ``slack_alerts``)."""
        key = tuple(candidates)
        if key not in self._resolved:
            self._resolved[key] = next((c for c in candidates if self.webhooks.exists(c)),
                                       None)
        return self._resolved[key]

    def _retry_handlers(self, counter: _Counter) -> list[RetryHandler]:
        interval = BackoffRetryIntervalCalculator(backoff_factor=self.backoff_s)
        return [
            _BoundedRateLimitHandler(self.max_retries, self.max_retry_after_s, counter),
            _CountingConnectionHandler(counter, max_retry_count=self.max_retries,
                                       interval_calculator=interval,
                                       error_types=RETRYABLE_ERRORS),
            _CountingServerErrorHandler(counter, max_retry_count=self.max_retries,
                                        interval_calculator=interval),
        ]

    def deliver(self, notification: Notification) -> Delivery:
        conn_id = self.resolve_connection(notification.connections)
        if conn_id is None:
            names = ", ".join(repr(c) for c in notification.connections)
            return Delivery(ok=False, attempts=0, permanent=True, error=(
                f"no Slack connection: none of {names} exists; create one of type "
                f"'slackwebhook' with the incoming-webhook URL as its password"))
        try:
            message = render_message(notification, max_alerts=self.max_alerts_per_message)
        except Exception as exc:  # our bug, not Slack's: say so, keep the alert
            log.exception("could not render notification %s", notification.id)
            return Delivery(ok=False, connection_id=conn_id, attempts=0, permanent=True,
                            error=f"could not build the Slack message ({type(exc).__name__}: "
                                  f"{exc}); this is a promptops bug")

        counter = _Counter()
        secrets: set[str] = set()
        if self.bots is not None:
            try:
                bot = self.bots.bot(conn_id, timeout=self.timeout_s,
                                    retry_handlers=self._retry_handlers(counter),
                                    logger=_SDK_LOG)
            except SlackConnectionMissing as exc:
                return Delivery(ok=False, connection_id=conn_id, attempts=0, permanent=True,
                                error=str(exc))
            except Exception as exc:
                return self._failure(conn_id, exc, counter, secrets)
            if bot is not None:
                return self._deliver_bot(bot, conn_id, notification, message, counter)
        try:
            client, secrets = _guarded_client(self.webhooks, conn_id, timeout=self.timeout_s,
                                              retry_handlers=self._retry_handlers(counter))
            response = client.send_dict(message)
        except Exception as exc:
            return self._failure(conn_id, exc, counter, secrets)
        attempts = counter.retries + 1
        if response.status_code == 200:
            return Delivery(ok=True, connection_id=conn_id, attempts=attempts)
        body = redact(str(response.body or "").strip(), secrets)[:200]
        status = response.status_code
        if status in (403, 404, 410) or body in _INVALID_WEBHOOK:
            error = (f"Slack rejected the webhook of connection {conn_id!r} (HTTP {status} "
                     f"{body}): the webhook URL is wrong or was revoked; put a valid "
                     f"incoming-webhook URL in the connection's password")
            return Delivery(ok=False, connection_id=conn_id, attempts=attempts, error=error,
                            permanent=True)
        if status == 429:
            error = (f"Slack rate-limited connection {conn_id!r} (HTTP 429) after {attempts} "
                     f"attempts; the next evaluation retries")
        elif status == 400:
            error = (f"Slack refused the message for connection {conn_id!r} (HTTP 400 {body}); "
                     f"this is a promptops bug, report it with notification {notification.id}")
        else:
            error = (f"Slack answered HTTP {status} ({body}) for connection {conn_id!r} after "
                     f"{attempts} attempts; the next evaluation retries")
        return Delivery(ok=False, connection_id=conn_id, attempts=attempts, error=error,
                        permanent=status == 400)

    def _deliver_bot(self, bot: SlackBot, conn_id: str, n: Notification,
                     message: dict[str, Any], counter: _Counter) -> Delivery:
        """Post with the Web API: an incident's first message opens its thread; later ones
        reply in it and rewrite the opening message to the incident as it stands."""
        thread = n.threads.get(conn_id) if n.incident_id is not None else None
        try:
            if thread is None:
                response = bot.client.chat_postMessage(channel=bot.channel, **message)
                return Delivery(ok=True, connection_id=conn_id, attempts=counter.retries + 1,
                                ts=str(response.get("ts") or "") or None)
            bot.client.chat_postMessage(channel=bot.channel, thread_ts=thread, **message)
        except SlackApiError as exc:
            return self._api_failure(conn_id, exc, counter)
        except Exception as exc:
            return self._failure(conn_id, exc, counter, set())
        try:  # the header is a convenience: the thread already has the news
            top = render_incident(replace(n, reason="header"),
                                  max_alerts=self.max_alerts_per_message)
            bot.client.chat_update(channel=bot.channel, ts=thread, **top)
        except Exception as exc:
            log.warning("incident %s: could not rewrite its opening message in connection "
                        "%r (%s); the update is in its thread", n.incident_id, conn_id,
                        type(exc).__name__)
        return Delivery(ok=True, connection_id=conn_id, attempts=counter.retries + 1,
                        ts=thread)

    @staticmethod
    def _api_failure(conn_id: str, exc: SlackApiError, counter: _Counter) -> Delivery:
        """A Web API refusal, by its error code (never the token)."""
        code = str(exc.response.get("error") or f"HTTP {exc.response.status_code}")
        attempts = counter.retries + 1
        if code in _BOT_CONFIG_ERRORS:
            return Delivery(ok=False, connection_id=conn_id, attempts=attempts, permanent=True,
                            error=f"Slack refused the bot token of connection {conn_id!r} "
                                  f"({code}): give the token chat:write, invite the bot to "
                                  f"the channel named in the connection's extra, or fix "
                                  f"the token in its password")
        return Delivery(ok=False, connection_id=conn_id, attempts=attempts, error=(
            f"Slack answered {code} for connection {conn_id!r} after {attempts} attempts; "
            f"the next evaluation retries"))

    def _failure(self, conn_id: str, exc: Exception, counter: _Counter,
                 secrets: set[str]) -> Delivery:
        attempts = counter.retries + 1
        kind = type(exc).__name__
        if isinstance(exc, SlackConnectionMissing):
            return Delivery(ok=False, connection_id=conn_id, attempts=0, permanent=True,
                            error=f"Airflow connection {conn_id!r} has no webhook URL in its "
                                  f"password; set the incoming-webhook URL there")
        reason = redact(str(getattr(exc, "reason", "") or exc), secrets)[:200]
        timed_out = isinstance(exc, TimeoutError) or "timed out" in reason.lower()
        what = "timed out" if timed_out else f"failed ({kind}: {reason})"
        return Delivery(ok=False, connection_id=conn_id, attempts=attempts, error=(
            f"sending to Slack through connection {conn_id!r} {what} after {attempts} "
            f"attempts; the next evaluation retries (a timed-out message may still arrive)"))


def _guarded_client(webhooks: SlackWebhooks, conn_id: str, *, timeout: float,
                    retry_handlers: list[RetryHandler]) -> tuple[WebhookClient, set[str]]:
    """The connection's webhook client, with the URL's secret parts registered for
    redaction in our logs (the webhooks register them with the log masker) before anything
    is sent."""
    client = webhooks.client(conn_id, timeout=timeout, retry_handlers=retry_handlers,
                             logger=_SDK_LOG)
    secrets = secret_parts(client.url)
    _REDACTOR.secrets |= secrets
    return client, secrets


class SlackSendError(PromptOpsError):
    """A message that could not be posted; names the connection, never the webhook URL."""


def send_message(message: dict[str, Any], *, conn_id: str, webhooks: SlackWebhooks,
                 what: str = "the message", timeout_s: float = 10.0,
                 max_retries: int = 3) -> None:
    """Post one Block Kit message to the webhook of connection ``conn_id`` (in a DAG task
    one of type ``slackwebhook``), retrying rate limits, server errors and dropped
    connections."""
    handlers = [RateLimitErrorRetryHandler(max_retry_count=max_retries),
                ConnectionErrorRetryHandler(max_retry_count=max_retries,
                                            error_types=RETRYABLE_ERRORS),
                ServerErrorRetryHandler(max_retry_count=max_retries)]
    if callable(getattr(webhooks, "bot", None)) and \
            _send_with_bot(message, conn_id=conn_id, bots=cast("SlackBots", webhooks),
                           what=what, timeout_s=timeout_s, handlers=handlers):
        return
    try:
        client, secrets = _guarded_client(webhooks, conn_id, timeout=int(timeout_s),
                                          retry_handlers=handlers)
        response = client.send_dict(message)
    except Exception as exc:
        kind = type(exc).__name__
        if isinstance(exc, SlackConnectionMissing):
            raise SlackSendError(f"Slack connection {conn_id!r} does not exist (or has no "
                                 f"webhook URL); create it with type 'slackwebhook' and the "
                                 f"incoming-webhook URL as its password") from None
        raise SlackSendError(f"sending {what} through connection {conn_id!r} failed "
                             f"({kind})") from None
    if response.status_code != 200:
        body = redact(str(response.body or ""), secrets)[:100]
        raise SlackSendError(f"Slack answered HTTP {response.status_code} ({body}) for "
                             f"connection {conn_id!r}; check the webhook URL in its password")


def _send_with_bot(message: dict[str, Any], *, conn_id: str, bots: SlackBots, what: str,
                   timeout_s: float, handlers: list[RetryHandler]) -> bool:
    """Post through the connection's bot token; False when it is a webhook. Raises
    :class:`SlackSendError` (naming the connection and Slack's error, never the token)."""
    try:
        bot = bots.bot(conn_id, timeout=timeout_s, retry_handlers=handlers, logger=_SDK_LOG)
    except SlackConnectionMissing as exc:
        raise SlackSendError(str(exc)) from None
    if bot is None:
        return False
    try:
        bot.client.chat_postMessage(channel=bot.channel, **message)
    except SlackApiError as exc:
        code = exc.response.get("error") or f"HTTP {exc.response.status_code}"
        raise SlackSendError(f"Slack refused {what} through connection {conn_id!r} ({code}); "
                             f"check the bot token's chat:write scope and the channel in the "
                             f"connection's extra") from None
    except Exception as exc:
        raise SlackSendError(f"sending {what} through connection {conn_id!r} failed "
                             f"({type(exc).__name__})") from None
    return True


def send_to_first(message: dict[str, Any], connections: list[str], *, what: str,
                  webhooks: SlackWebhooks) -> str | None:
    """Post one message to the first of ``connections`` that exists. Returns the problem
    (never the webhook URL) instead of raising, for callers a failed post must not stop."""
    conn_id = next((c for c in connections if webhooks.exists(c)), None)
    if conn_id is None:
        return (f"no Slack connection for {what}: none of {', '.join(connections)} exists; "
                f"create one of type 'slackwebhook' with the incoming-webhook URL as its "
                f"password")
    try:
        send_message(message, conn_id=conn_id, webhooks=webhooks, what=what)
    except SlackSendError as exc:
        return str(exc)
    return None
