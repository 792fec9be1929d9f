"""iter_call_record_page_bodies: the same pages, errors and requests as iter_call_record_pages,
with the records read straight into Arrow where the page is plain JSON of the documented shape.

Against the simulator process, and against a small real HTTP server that serves hand-written
bodies (shapes the simulator never sends: pretty-printed, cursor first, NaN, a lying cursor).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from promptops.contracts.records import RAW_RECORD_TYPE
from promptops.errors import DataFormatError, PlatformInternalError
from promptops.platform.client import PlatformClient
from tests.helpers.client import WINDOW
from tests.helpers.simulator import settled_log

CALL_RECORDS = "/v1/call_records"


def test_same_pages_as_the_dict_api_one_request_per_page(make_client, clean_sim):
    client = make_client()
    dict_pages = list(client.iter_call_record_pages(*WINDOW, limit=300))
    settled_log(clean_sim, expect=len(dict_pages))
    clean_sim.clear_requests_log()

    pages = list(client.iter_call_record_page_bodies(*WINDOW, limit=300))

    assert len(pages) == len(dict_pages) >= 4
    for page, records in zip(pages, dict_pages, strict=True):
        assert page.columns is not None  # the simulator's pages are plain JSON
        assert page.columns.type == RAW_RECORD_TYPE
        assert len(page) == len(records)
        assert page.records() == records
        assert page.columns.field("call_id").to_pylist() == [r["call_id"] for r in records]
        assert page.columns.field("prompt_tokens").to_pylist() == [
            float(r["prompt_tokens"]) for r in records]
    # The next page is asked for early, from the cursor at the end of the body; every guess
    # was right, so no request was wasted and the cursors came in order.
    log = settled_log(clean_sim, expect=len(pages), path_prefix=CALL_RECORDS)
    assert len(log) == len(pages)
    assert "cursor" not in log[0]["query"] and all("cursor" in e["query"] for e in log[1:])
    assert len({e["query"]["cursor"] for e in log[1:]}) == len(pages) - 1


def test_a_page_is_retried_on_its_own(make_client, clean_sim):
    client = make_client()
    # Small pages: the pager runs at most three pages ahead, so later ones meet the fault.
    pages = client.iter_call_record_page_bodies(*WINDOW, limit=100)
    first = next(pages)
    clean_sim.set_faults([{"kind": "error", "code": 5000, "path_prefix": CALL_RECORDS,
                           "times": 1}])
    rest = [r for p in pages for r in p.records()]
    assert len(first) == 100 and len(rest) > 1000
    assert sum(1 for e in settled_log(clean_sim) if e["status"] == 500) == 1


def test_an_exhausted_page_raises_when_its_turn_comes(make_client, clean_sim):
    client = make_client(max_retries=0)
    pages = client.iter_call_record_page_bodies(*WINDOW, limit=100)
    assert len(next(pages)) == 100
    clean_sim.set_faults([{"kind": "error", "code": 5000, "path_prefix": CALL_RECORDS}])
    with pytest.raises(PlatformInternalError):
        for _ in pages:
            pass


@pytest.mark.parametrize("variant", ["not_json", "truncated", "wrong_shape", "data_not_list"])
def test_malformed_page_gives_the_dict_apis_error(make_client, clean_sim, variant):
    fault = {"kind": "malformed_body", "variant": variant, "path_prefix": CALL_RECORDS}
    errors = []
    for iterate in ("iter_call_record_pages", "iter_call_record_page_bodies"):
        clean_sim.clear_faults()
        clean_sim.set_faults([fault])
        with pytest.raises(DataFormatError) as info:
            list(getattr(make_client(), iterate)(*WINDOW))
        errors.append(str(info.value))
    assert errors[0] == errors[1] and "GET /v1/call_records" in errors[1]


def test_stopping_early_stops_the_pager(make_client, clean_sim):
    pages = make_client().iter_call_record_page_bodies(*WINDOW, limit=100)
    next(pages)
    pages.close()
    # What was under way finishes (the page handed over, one waiting, one being parsed, one
    # arriving); nothing is asked for after that.
    sent = settled_log(clean_sim, path_prefix=CALL_RECORDS, settle=0.5)
    assert 1 <= len(sent) <= 4
    assert len(settled_log(clean_sim, path_prefix=CALL_RECORDS, settle=0.5)) == len(sent)


def test_bad_arguments_fail_at_the_call(make_client):
    client = make_client()
    with pytest.raises(ValueError, match="limit"):
        client.iter_call_record_page_bodies(*WINDOW, limit=0)
    with pytest.raises(ValueError, match="before end"):
        client.iter_call_record_page_bodies(WINDOW[1], WINDOW[0])


# -- bodies the simulator never sends ------------------------------------------------------
class CannedPlatform:
    """A real HTTP server answering GET /v1/call_records with canned bodies by cursor."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}
        self.cursors: list[str] = []
        canned = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                query = parse_qs(urlsplit(self.path).query)
                cursor = query.get("cursor", [""])[0]
                canned.cursors.append(cursor)
                body = canned.bodies.get(cursor)
                status = 200 if body is not None else 422
                if body is None:
                    body = orjson.dumps({"error": {"code": 3002, "message": "cursor: unknown"}})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def canned() -> Iterator[CannedPlatform]:
    platform = CannedPlatform()
    yield platform
    platform.close()


def rec(call_id: str, **kw) -> dict:
    return {"call_id": call_id, "ts": "2026-11-20T12:30:00Z", "user_id": "u", "app": "a",
            "model": "m", "status": "success", "latency_ms": 1.5, "prompt_tokens": 3,
            "completion_tokens": 4, **kw}


def both_apis(url: str) -> tuple[list, list]:
    with PlatformClient(url, "canned-key", max_retries=0) as client:
        dicts = list(client.iter_call_record_pages(*WINDOW))
        bodies = list(client.iter_call_record_page_bodies(*WINDOW))
    return dicts, bodies


def test_pages_without_a_readable_cursor_at_the_end(canned):
    # Cursor first and pretty-printed: no early guess, the parsed cursor is followed.
    canned.bodies[""] = orjson.dumps({"next_cursor": "p2", "data": [rec("a"), rec("b")]},
                                     option=orjson.OPT_INDENT_2)
    canned.bodies["p2"] = orjson.dumps({"data": [rec("c", prompt_tokens=True)],
                                        "next_cursor": None})
    dicts, bodies = both_apis(canned.url)
    assert [p.records() for p in bodies] == dicts
    assert [r["call_id"] for p in dicts for r in p] == ["a", "b", "c"]
    assert bodies[1].columns is None  # a bool among the numbers: left to the dict path
    assert canned.cursors == ["", "p2", "", "p2"]


def test_a_guessed_cursor_is_dropped_when_the_body_is_broken(canned):
    # The end reads like a page with a next cursor, the middle is broken: the early request
    # for "zz" goes out, but the page's error is what the caller gets, as with dict pages.
    canned.bodies[""] = b'{"data":[{"call_id":"a"} {"call_id":"b"}],"next_cursor":"zz"}'
    canned.bodies["zz"] = orjson.dumps({"data": [rec("z")], "next_cursor": None})
    errors = []
    with PlatformClient(canned.url, "canned-key", max_retries=0) as client:
        for iterate in (client.iter_call_record_pages, client.iter_call_record_page_bodies):
            with pytest.raises(DataFormatError) as info:
                list(iterate(*WINDOW))
            errors.append(str(info.value))
    assert errors[0] == errors[1] and "not JSON" in errors[0]


@pytest.mark.parametrize("body, says", [
    (b'{"data":[{"call_id":"a","latency_ms":NaN}],"next_cursor":null}', "not JSON"),
    (b'{"data":[{"call_id":"a"}]}', "'next_cursor' is missing"),
    (b'{"data":[{"call_id":"a"}],"next_cursor":""}', "must be a non-empty string or null"),
    (b'{"data":[{"call_id":"a"}],"next_cursor":7}', "must be a non-empty string or null"),
    (b'{"data":{"call_id":"a"},"next_cursor":null}', "'data' is a JSON dict, expected list"),
    (b'{"data":[{"call_id":"a"}],"next_cursor":null}{}', "not JSON"),
])
def test_broken_envelopes_give_the_dict_apis_error(canned, body, says):
    canned.bodies[""] = body
    errors = []
    with PlatformClient(canned.url, "canned-key", max_retries=0) as client:
        for iterate in (client.iter_call_record_pages, client.iter_call_record_page_bodies):
            with pytest.raises(DataFormatError) as info:
                list(iterate(*WINDOW))
            errors.append(str(info.value))
    assert errors[0] == errors[1] and says in errors[0]


def test_a_cursor_that_does_not_advance_stops(canned):
    canned.bodies[""] = orjson.dumps({"data": [rec("a")], "next_cursor": "same"})
    canned.bodies["same"] = orjson.dumps({"data": [rec("b")], "next_cursor": "same"})
    with PlatformClient(canned.url, "canned-key", max_retries=0) as client:
        pages = client.iter_call_record_page_bodies(*WINDOW)
        assert next(pages).records() == [rec("a")]
        with pytest.raises(DataFormatError, match="did not advance"):
            next(pages)
