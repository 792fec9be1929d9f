"""A circuit breaker whose state outlives the process.

Every Airflow task runs in a new process, so a breaker kept in memory would forget the
outage between two task runs and every run would hammer a dead platform again. The state
lives in a :class:`BreakerStore` instead: a JSON file per breaker on this host by default, or
one Redis key per breaker shared by all workers (:mod:`promptops.platform.breaker_redis`);
:func:`store_from_settings` chooses.

States::

    closed --N consecutive failures--> open --cooldown over, one caller claims the probe-->
    half_open --probe succeeds--> closed
              --probe fails-----> open (fresh cooldown)
              --probe never reports back within probe_timeout_s--> another caller may probe

A *failure* is what the caller reports with :meth:`CircuitBreaker.record_failure`; the API
client reports only errors that say the platform is unwell (see docs/client.md).

CLI (without a store option it uses the store the settings choose, as the workers do)::

    python -m promptops.platform.breaker status [NAME ...] [--state-dir DIR | --redis-url URL] [--json]
    python -m promptops.platform.breaker reset NAME [--state-dir DIR | --redis-url URL]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import re
import shlex
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from promptops.errors import CircuitOpenError, ConfigError, InvalidInput, PromptOpsError

if TYPE_CHECKING:
    from promptops.secrets import SecretMasker
    from promptops.settings import Settings

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
T = TypeVar("T")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass
class BreakerState:
    """What the store keeps for one breaker. Times are Unix seconds (wall clock, because
    they must mean the same thing in another process)."""

    state: str = CLOSED
    consecutive_failures: int = 0
    #: When the circuit first opened in the current outage (kept across re-opens).
    open_since: float | None = None
    #: Start of the current cooldown (the last open or re-open).
    opened_at: float | None = None
    last_failure_at: float | None = None
    last_error: str | None = None
    last_error_code: int | None = None
    last_success_at: float | None = None
    #: The half-open probe: who holds it and since when.
    probe_id: str | None = None
    probe_started_at: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BreakerState:
        # Unknown keys are dropped so an older process can read a newer file.
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Ticket:
    """Handed out by :meth:`CircuitBreaker.before_call`; give it back with the outcome so
    the breaker knows whether this call was the half-open probe."""

    probe_id: str | None = None

    @property
    def is_probe(self) -> bool:
        return self.probe_id is not None


class BreakerStore(Protocol):
    """Where breaker state lives. Small on purpose: the Redis store needs only these three
    (``update`` as a WATCH/MULTI transaction)."""

    # Read-only properties: a store may implement them as attributes or properties.
    @property
    def location(self) -> str:
        """Where the state is, for people (no secrets)."""
        ...

    @property
    def cli_options(self) -> str:
        """The options that point ``python -m promptops.platform.breaker`` at this store."""
        ...

    def load(self, name: str) -> BreakerState:
        """The stored state, or a fresh closed state when there is none. May read without
        a lock, so it must never see a half-written state."""
        ...

    def update(self, name: str, fn: Callable[[BreakerState], T]) -> T:
        """Atomically: load, let ``fn`` mutate the state in place, save if it changed, and
        return what ``fn`` returned. No other ``update`` of ``name`` interleaves. ``fn`` may
        run more than once (an optimistic store runs it again on a fresh read when another
        writer got in first), so it must do nothing but change the state."""
        ...

    def names(self) -> list[str]:
        ...


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise InvalidInput(f"invalid breaker name {name!r}: use letters, digits, '_', '.', '-'")
    return name


class FileBreakerStore:
    """One JSON file per breaker in ``directory``; an ``fcntl`` lock on a side file makes
    read-modify-write atomic across processes, and a temp file + ``os.replace`` makes every
    write atomic, so lock-free readers never see a torn file. Local disk only (flock over
    NFS is not reliable)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    @property
    def location(self) -> str:
        return str(self.directory)

    @property
    def cli_options(self) -> str:
        return f"--state-dir {shlex.quote(str(self.directory))}"

    def _path(self, name: str) -> Path:
        return self.directory / f"{check_name(name)}.json"

    def load(self, name: str) -> BreakerState:
        path = self._path(name)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return BreakerState()
        try:
            return BreakerState.from_dict(json.loads(raw))
        except (ValueError, TypeError) as exc:
            # Cannot happen through this class (atomic writes); a hand-edited file must not
            # wedge every task, so start closed and say so.
            log.warning("breaker state file %s is unreadable (%s); treating it as closed",
                        path, exc)
            return BreakerState()

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / f"{check_name(name)}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def update(self, name: str, fn: Callable[[BreakerState], T]) -> T:
        with self._locked(name):
            state = self.load(name)
            before = state.to_dict()
            result = fn(state)
            if state.to_dict() != before:
                self._write(name, state)
            return result

    def _write(self, name: str, state: BreakerState) -> None:
        path = self._path(name)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(state.to_dict(), fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.json"))


def store_from_settings(settings: Settings, *, fallback: bool = True,
                        celery_broker_url: str | None = None,
                        mask_secret: SecretMasker | None = None) -> BreakerStore:
    """The store the settings choose: ``PROMPTOPS_BREAKER_STORE`` ``file``, or Redis (the
    configured URL, else ``celery_broker_url``: the Redis broker of Airflow's
    CeleryExecutor, read by ``airflow_adapters.connections.celery_redis_broker_url``) with
    this host's files as the ``fallback`` while Redis is unreachable. ``auto`` takes files
    when there is no Redis to use. ``mask_secret`` registers the Redis password with the
    log masker."""
    files = FileBreakerStore(settings.state_dir / "breakers")
    if settings.breaker_store == "file":
        return files
    configured = settings.breaker_redis_url
    url = (configured.get_secret_value() if configured else None) or celery_broker_url
    if not url:
        if settings.breaker_store == "redis":
            raise ConfigError(
                "PROMPTOPS_BREAKER_STORE is redis but there is no Redis to use: set "
                "PROMPTOPS_BREAKER_REDIS_URL (redis://[:password@]host[:port][/db]), or run "
                "Airflow's CeleryExecutor with a redis:// broker")
        return files
    if settings.breaker_state_ttl_s <= settings.breaker_cooldown_s:
        raise ConfigError(
            f"PROMPTOPS_BREAKER_STATE_TTL_S ({settings.breaker_state_ttl_s}) must be longer "
            f"than PROMPTOPS_BREAKER_COOLDOWN_S ({settings.breaker_cooldown_s:g}): an open "
            f"breaker's state would expire before its cooldown ends")
    from promptops.platform.breaker_redis import RedisBreakerStore

    # cli_options "": the CLI finds this store through the same settings.
    return RedisBreakerStore(url, prefix=settings.breaker_redis_prefix,
                             ttl_s=settings.breaker_state_ttl_s,
                             fallback=files if fallback else None, cli_options="",
                             mask_secret=mask_secret)


def _ts(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CircuitBreaker:
    """Closed / open / half-open breaker over a shared store.

    ``before_call()`` returns a :class:`Ticket` or raises :class:`CircuitOpenError` without
    the call being made; report the call's outcome with ``record_success(ticket)`` or
    ``record_failure(error, ticket)``.
    """

    def __init__(self, name: str, store: BreakerStore, failure_threshold: int = 5,
                 cooldown_s: float = 300.0, *, probe_timeout_s: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        if failure_threshold < 1:
            raise InvalidInput("failure_threshold must be >= 1")
        self.name = check_name(name)
        self.store = store
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.probe_timeout_s = probe_timeout_s
        self.clock = clock

    def __repr__(self) -> str:
        return (f"CircuitBreaker({self.name!r}, failure_threshold={self.failure_threshold}, "
                f"cooldown_s={self.cooldown_s})")

    # -- the three calls around a request ---------------------------------------------------
    def before_call(self) -> Ticket:
        # Fast path without the lock: a closed circuit is the common case.
        if self.store.load(self.name).state == CLOSED:
            return Ticket()
        decision = self._update(self._admit)
        if isinstance(decision, CircuitOpenError):
            raise decision
        return decision

    def _update(self, fn: Callable[[BreakerState, list[str]], T]) -> T:
        """``store.update`` that logs what ``fn`` noted in its committed run only."""
        notes: list[str] = []

        def run(st: BreakerState) -> T:
            notes.clear()
            return fn(st, notes)

        result = self.store.update(self.name, run)
        for note in notes:
            log.warning("circuit %s: %s", self.name, note)
        return result

    def _admit(self, st: BreakerState, notes: list[str]) -> Ticket | CircuitOpenError:
        if st.state == CLOSED:
            return Ticket()
        now = self.clock()
        probe_at = (st.opened_at or 0.0) + self.cooldown_s
        if now < probe_at:
            return self._open_error(st, probe_at, now)
        if st.probe_id is not None and now < (st.probe_started_at or 0.0) + self.probe_timeout_s:
            return self._open_error(st, (st.probe_started_at or 0.0) + self.probe_timeout_s, now,
                                    probing=True)
        if st.probe_id is not None:
            notes.append(f"the probe claimed at {_ts(st.probe_started_at)} never reported "
                         f"back; letting another call probe")
        st.state = HALF_OPEN
        st.probe_id = uuid.uuid4().hex
        st.probe_started_at = now
        notes.append("cooldown over, this call is the half-open probe")
        return Ticket(st.probe_id)

    def record_success(self, ticket: Ticket | None = None) -> None:
        st = self.store.load(self.name)
        if st.state == CLOSED and st.consecutive_failures == 0:
            return  # nothing to change: skip the lock and the write
        self._update(lambda s, notes: self._success(s, ticket, notes))

    def _success(self, st: BreakerState, ticket: Ticket | None, notes: list[str]) -> None:
        now = self.clock()
        if st.state == CLOSED:
            st.consecutive_failures = 0
            st.last_success_at = now
            return
        if ticket is not None and ticket.is_probe and ticket.probe_id == st.probe_id:
            notes.append(f"probe succeeded, closing (was open since {_ts(st.open_since)})")
            st.state = CLOSED
            st.consecutive_failures = 0
            st.open_since = st.opened_at = None
            st.probe_id = st.probe_started_at = None
            st.last_success_at = now
        # Otherwise a call admitted before the circuit opened came back late: only the
        # probe decides when an open circuit closes.

    def record_failure(self, error: BaseException | str, ticket: Ticket | None = None, *,
                       code: int | None = None) -> None:
        """Count a failure. ``error`` must be secret-free text (it is stored and shown)."""
        text = str(error)[:300]
        if code is None:
            code = getattr(error, "code", None)
        self._update(lambda s, notes: self._failure(s, ticket, text, code, notes))

    def _failure(self, st: BreakerState, ticket: Ticket | None, text: str,
                 code: int | None, notes: list[str]) -> None:
        now = self.clock()
        st.consecutive_failures += 1
        st.last_failure_at = now
        st.last_error = text
        st.last_error_code = code if isinstance(code, int) else None
        if st.state == CLOSED:
            if st.consecutive_failures >= self.failure_threshold:
                st.state = OPEN
                st.open_since = st.opened_at = now
                st.probe_id = st.probe_started_at = None
                notes.append(f"opened after {st.consecutive_failures} consecutive failures; "
                             f"last error: {text}")
            return
        if ticket is not None and ticket.is_probe and ticket.probe_id == st.probe_id:
            st.state = OPEN
            st.opened_at = now  # a fresh cooldown
            st.probe_id = st.probe_started_at = None
            notes.append(f"probe failed, open again until {_ts(now + self.cooldown_s)}")

    # -- inspection and operator actions ----------------------------------------------------
    def state(self) -> BreakerState:
        return self.store.load(self.name)

    def reset(self) -> None:
        def _reset(st: BreakerState) -> None:
            fresh = BreakerState(last_success_at=st.last_success_at)
            for f in fields(BreakerState):
                setattr(st, f.name, getattr(fresh, f.name))
        self.store.update(self.name, _reset)
        log.warning("circuit %s: reset to closed by an operator", self.name)

    def reset_command(self) -> str:
        options = getattr(self.store, "cli_options", "")
        command = f"python -m promptops.platform.breaker reset {self.name}"
        return f"{command} {options}" if options else command

    def _open_error(self, st: BreakerState, retry_at: float, now: float, *,
                    probing: bool = False) -> CircuitOpenError:
        code = f" (code {st.last_error_code})" if st.last_error_code is not None else ""
        wait = max(0.0, retry_at - now)
        if probing:
            nxt = (f"another caller is probing since {_ts(st.probe_started_at)}; a new probe "
                   f"is allowed at {_ts(retry_at)} (in {wait:.0f} s) if it never reports back")
        else:
            nxt = f"the next probe is allowed at {_ts(retry_at)} (in {wait:.0f} s)"
        err = CircuitOpenError(
            f"circuit breaker {self.name!r} is open: the call was not sent. The platform has "
            f"been failing since {_ts(st.open_since)} ({st.consecutive_failures} consecutive "
            f"failures); last error{code}: {st.last_error or 'unknown'}; {nxt}. What to do: "
            f"fix the platform (see the last error), or wait for the probe, or after a fix "
            f"reset it with `{self.reset_command()}`."
        )
        err.name = self.name  # type: ignore[attr-defined]
        err.open_since = st.open_since  # type: ignore[attr-defined]
        err.failures = st.consecutive_failures  # type: ignore[attr-defined]
        err.last_error = st.last_error  # type: ignore[attr-defined]
        err.last_error_code = st.last_error_code  # type: ignore[attr-defined]
        err.retry_at = retry_at  # type: ignore[attr-defined]
        return err


# -- CLI ---------------------------------------------------------------------------------------
def describe(name: str, st: BreakerState, cooldown_s: float | None = None,
             now: float | None = None) -> str:
    if st.state == CLOSED:
        tail = (f", {st.consecutive_failures} consecutive failure(s) so far, last error: "
                f"{st.last_error}" if st.consecutive_failures else "")
        return f"{name}: closed{tail}"
    line = (f"{name}: {st.state}, failing since {_ts(st.open_since)} after "
            f"{st.consecutive_failures} consecutive failures; cooldown started {_ts(st.opened_at)}")
    if cooldown_s is not None and st.opened_at is not None:
        probe_at = st.opened_at + cooldown_s
        due = " (due now)" if (now or time.time()) >= probe_at else ""
        line += f"; next probe at {_ts(probe_at)}{due}"
    if st.probe_id:
        line += f"; probe in flight since {_ts(st.probe_started_at)}"
    code = f" (code {st.last_error_code})" if st.last_error_code is not None else ""
    return line + f"\n  last error{code}: {st.last_error}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m promptops.platform.breaker",
        description="Inspect or reset persistent circuit breakers. Without --state-dir or "
                    "--redis-url: the store the settings choose, as the workers do "
                    "(PROMPTOPS_BREAKER_STORE, PROMPTOPS_BREAKER_REDIS_URL, the Celery broker, "
                    "else $PROMPTOPS_STATE_DIR/breakers).")
    parser.add_argument("--state-dir", help="files: the breaker directory")
    parser.add_argument("--redis-url", help="Redis: redis://[[user]:password@]host[:port][/db] "
                        "(the environment's PROMPTOPS_BREAKER_REDIS_URL keeps a password off "
                        "the command line)")
    parser.add_argument("--redis-prefix", help="Redis key prefix (default: "
                        "$PROMPTOPS_BREAKER_REDIS_PREFIX or promptops:breaker:)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_status = sub.add_parser("status", help="show breakers (all when no name is given)")
    p_status.add_argument("names", nargs="*")
    p_status.add_argument("--json", action="store_true", help="print the raw state as JSON")
    p_reset = sub.add_parser("reset", help="close a breaker now (after fixing the platform)")
    p_reset.add_argument("name")
    for p in (p_status, p_reset):  # accepted before or after the subcommand
        for opt in ("--state-dir", "--redis-url", "--redis-prefix"):
            p.add_argument(opt, dest=f"{opt[2:].replace('-', '_')}_sub", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    state_dir = args.state_dir_sub or args.state_dir
    redis_url = args.redis_url_sub or args.redis_url
    if state_dir and redis_url:
        parser.error("argument --redis-url: not allowed with argument --state-dir (give the "
                     "one store to use)")

    from promptops.settings import get_settings

    cooldown: float | None = None
    try:
        if state_dir:
            store: BreakerStore = FileBreakerStore(state_dir)
        elif redis_url:
            from promptops.platform.breaker_redis import RedisBreakerStore

            prefix = (args.redis_prefix_sub or args.redis_prefix
                      or get_settings().breaker_redis_prefix)
            store = RedisBreakerStore(redis_url, prefix=prefix)
        else:  # no fallback: the CLI must show the shared state or say it cannot
            settings = get_settings()
            store = store_from_settings(settings, fallback=False,
                                        celery_broker_url=_celery_broker_url())
            cooldown = settings.breaker_cooldown_s
        if args.command == "reset":
            CircuitBreaker(args.name, store).reset()
            print(f"{args.name}: reset to closed ({store.location})")
            return 0
        names = args.names or store.names()
        if not names:
            print(f"no breakers in {store.location}")
            return 0
        states = {n: store.load(n) for n in names}
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PromptOpsError as exc:  # the Redis store is unreachable
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({n: s.to_dict() for n, s in states.items()}, indent=1))
    else:
        for n, s in states.items():
            print(describe(n, s, cooldown))
    return 0


def _celery_broker_url() -> str | None:
    # The CLI is an entry point, like a DAG file: it finds the store as the workers do, so
    # it asks Airflow's config for a Celery broker, where Airflow is installed.
    try:
        from promptops.airflow_adapters.connections import celery_redis_broker_url
    except ImportError:
        return None
    return celery_redis_broker_url()


if __name__ == "__main__":
    sys.exit(main())
