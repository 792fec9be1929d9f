"""The two ways :class:`~promptops.platform.client.PlatformClient` pages through
``GET /v1/call_records``, and the page format they share.

- :func:`dict_pages`: pages as lists of dicts; a background thread fetches (and parses) page
  k+1 while the caller works on page k.
- :func:`body_pages`: pages as :class:`CallRecordPage`, records read straight into Arrow
  (:func:`read_page_columns`) where the page is plain JSON of the documented shape. The next
  page is asked for as soon as this one has arrived (its cursor read off the end of the
  body), a pager thread parses, the caller works: three pages in flight.

This module knows nothing of HTTP: the client hands in how to fetch the page after a cursor
and how to decode an answer (its retries, breaker and error texts stay in the client).
"""

from __future__ import annotations

import contextlib
import queue
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import orjson

from promptops.errors import DataFormatError, InvalidInput

if TYPE_CHECKING:
    import pyarrow as pa

CALL_RECORDS = "/v1/call_records"
MAX_PAGE_LIMIT = 10_000


class _Answer(Protocol):
    """What :func:`body_pages` needs of a fetched answer: its body, as received."""

    @property
    def body(self) -> bytes: ...


_A = TypeVar("_A", bound=_Answer)


class CallRecordPage:
    """One page of ``GET /v1/call_records`` as it arrived, with its records decoded once.

    ``body`` is the answer body, verbatim. ``columns`` holds the records read straight into
    Arrow (:data:`promptops.contracts.records.RAW_RECORD_TYPE`, one struct per record) when
    the page is plain well-formed JSON of the documented shape, else None; :meth:`records`
    gives them as Python objects (parsed with orjson on first use, as :func:`dict_pages`'
    pages are).
    """

    __slots__ = ("body", "columns", "_records")

    def __init__(self, body: bytes, columns: pa.StructArray | None,
                 records: list | None) -> None:
        if columns is None and records is None:
            raise InvalidInput("a CallRecordPage needs its Arrow columns or its records")
        self.body = body
        self.columns = columns
        self._records = records

    def __len__(self) -> int:
        return len(self.columns) if self.columns is not None else len(self.records())

    def records(self) -> list:
        """The page's ``data`` list as Python objects (dicts for well-formed records)."""
        if self._records is None:
            try:
                self._records = orjson.loads(self.body)["data"]
            except orjson.JSONDecodeError as exc:
                # Only a body nested deeper than orjson's limit (1024 levels, inside a field
                # the record schema ignores) gets here: the Arrow reader had no such limit.
                raise DataFormatError(f"the page body could not be parsed as JSON ({exc})",
                                      http_status=200, endpoint=f"GET {CALL_RECORDS}") from None
        return self._records

    def __repr__(self) -> str:
        how = "arrow" if self.columns is not None else "dicts"
        return f"<CallRecordPage {len(self)} records, {len(self.body):,} bytes, {how}>"


# The end of a page that names the next one; group 1 is the cursor (no escapes in it). A key
# preceded by a backslash would be an escaped quote inside a string, not a key.
_CURSOR_TAIL = re.compile(
    rb'(?<!\\)"next_cursor"[ \t\r\n]*:[ \t\r\n]*"([^"\\\x00-\x1f]+)"[ \t\r\n]*\}[ \t\r\n]*\Z')
# The end of a page whose next_cursor is null. The Arrow reader cannot tell a null from a
# missing key, and a missing next_cursor is a broken page (3002), so the null must be seen.
_NULL_CURSOR_TAIL = re.compile(
    rb'(?<!\\)"next_cursor"[ \t\r\n]*:[ \t\r\n]*null[ \t\r\n]*\}[ \t\r\n]*\Z')
# NaN and Infinity in a value position: RapidJSON (the Arrow reader) accepts them, orjson
# and JSON do not.
_NON_JSON_NUMBER = re.compile(rb"[:,\[][ \t\r\n]*-?(?:NaN|Inf)")
_UTF8_BOM = b"\xef\xbb\xbf"
_arrow_reader: tuple[Any, Any, Any] | None = None


def _guess_next_cursor(body: bytes) -> str | None:
    """The next page's cursor as the end of the body shows it, or None when it shows none.
    Only a guess, to ask for the next page early: the parsed body has the last word."""
    m = _CURSOR_TAIL.search(body[-4096:])
    return m.group(1).decode("utf-8", "replace") if m else None


def read_page_columns(body: bytes) -> tuple[pa.StructArray, str | None] | None:
    """A page body read straight into Arrow: (records as RAW_RECORD_TYPE, next_cursor).

    None whenever the result might differ from orjson's reading of the same body: not one
    JSON object, ``data`` missing or not a list of objects/nulls, a value of the wrong JSON
    type for its field (the dict path reports it as wrong_type), a repeated key, NaN or
    Infinity, invalid UTF-8, a byte order mark, or a null ``next_cursor`` that cannot be seen
    to be present. The caller then parses the body with orjson, which decides.
    """
    pa_, pj, options = _get_arrow_reader()
    if body.startswith(_UTF8_BOM):  # the Arrow reader skips it, orjson refuses it
        return None
    if (b"NaN" in body or b"Inf" in body) and _NON_JSON_NUMBER.search(body):
        return None
    if not body.isascii():
        try:
            body.decode("utf-8")  # the Arrow reader copies invalid UTF-8 through unchecked
        except UnicodeDecodeError:
            return None
    read_options = pj.ReadOptions(use_threads=False, block_size=max(len(body) + 1, 1 << 16))
    try:
        table = pj.read_json(pa_.BufferReader(body), read_options=read_options,
                             parse_options=options)
    except pa_.ArrowException:
        return None
    if table.num_rows != 1:  # empty, or several concatenated documents
        return None
    data = table.column("data").chunk(0) if table.column("data").num_chunks == 1 else None
    if data is None or data.null_count:
        return None  # data missing or null: the general path names the problem
    nxt = table.column("next_cursor")[0].as_py()
    if nxt is None and not _NULL_CURSOR_TAIL.search(body[-256:]):
        return None
    return data.flatten(), nxt


def _get_arrow_reader() -> tuple[Any, Any, Any]:
    """pyarrow and the page schema, imported on first use (the client alone stays light)."""
    global _arrow_reader
    if _arrow_reader is None:
        import pyarrow as pa_
        import pyarrow.json as pj

        from promptops.contracts.records import RAW_RECORD_TYPE

        schema = pa_.schema([pa_.field("data", pa_.list_(RAW_RECORD_TYPE)),
                             pa_.field("next_cursor", pa_.string())])
        options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        _arrow_reader = (pa_, pj, options)
    return _arrow_reader


def dict_pages(page: Callable[[str | None], tuple[list[dict], str | None]]
               ) -> Iterator[list[dict]]:
    """The pages ``page(cursor)`` returns, from the first (cursor None) to the one whose
    next cursor is None. While the caller works on one page, a background thread fetches
    the next, so at most two pages are held at once; an error on a later page is raised when
    the caller asks for that page."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="promptops-prefetch")
    pending: Future[tuple[list[dict], str | None]] | None = None
    try:
        pending = pool.submit(page, None)
        while pending is not None:
            data, cursor = pending.result()
            pending = pool.submit(page, cursor) if cursor is not None else None
            yield data
    finally:
        if pending is not None:
            pending.cancel()
        # Do not wait for an in-flight prefetch when the caller stopped early; it ends
        # on its own within the timeouts and its result is dropped.
        pool.shutdown(wait=False, cancel_futures=True)


def body_pages(fetch: Callable[[str | None], _A],
               decode: Callable[[_A, str | None], tuple[CallRecordPage, str | None]]
               ) -> Iterator[CallRecordPage]:
    """The pages ``fetch(cursor)`` answers, decoded by ``decode(answer, cursor)`` into the
    page and the next cursor (None after the last page).

    Three things at once: the platform builds page k+2 (asked for early), a pager
    thread parses page k+1 (the Arrow reader lets go of the GIL), the caller works on
    page k. Pages, then the end or an error, come through a queue of one, in order."""
    out: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()
    # Two fetch workers: a dropped early request must not hold up the right one.
    fetcher = ThreadPoolExecutor(max_workers=2, thread_name_prefix="promptops-prefetch")
    # A daemon: a pager whose caller forgot the iterator must not keep the process alive.
    threading.Thread(target=_run_pager, args=(fetch, decode, fetcher, out, stop),
                     name="promptops-pager", daemon=True).start()
    try:
        while True:
            kind, item = out.get()
            if kind == "error":
                raise item
            if kind == "end":
                return
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            out.get_nowait()  # frees a pager waiting to hand over a page
        # Do not wait for in-flight requests when the caller stopped early; they end on
        # their own within the timeouts and their results are dropped.
        fetcher.shutdown(wait=False, cancel_futures=True)


def _run_pager(fetch: Callable[[str | None], _A],
               decode: Callable[[_A, str | None], tuple[CallRecordPage, str | None]],
               fetcher: ThreadPoolExecutor, out: queue.Queue[tuple[str, Any]],
               stop: threading.Event) -> None:
    """Fetch and parse page after page for :func:`body_pages` until the last page,
    an error, or the caller stopping."""

    def hand_over(kind: str, item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put((kind, item), timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    pending: Future[_A] | None = None
    cursor: str | None = None
    try:
        pending = fetcher.submit(fetch, None)
        while pending is not None:
            answer = pending.result()
            guess = _guess_next_cursor(answer.body)
            early = guess if guess is not None and guess != cursor else None
            pending = fetcher.submit(fetch, early) if early is not None else None
            page, nxt = decode(answer, cursor)
            if nxt != early:  # the guess was wrong, or there was none
                if pending is not None:
                    pending.cancel()
                pending = fetcher.submit(fetch, nxt) if nxt is not None else None
            cursor = nxt
            if not hand_over("page", page):
                return
        hand_over("end", None)
    except BaseException as exc:  # the caller gets it at the page it belongs to
        hand_over("error", exc)
    finally:
        if pending is not None:
            pending.cancel()
