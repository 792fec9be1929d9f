"""promptops.platform.paging: the client's two paging paths, driven without HTTP (the client
hands in how to fetch and decode a page; here plain functions do)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest

from promptops.platform.paging import CallRecordPage, body_pages, dict_pages, read_page_columns

BODIES = {None: b'{"data": [{"call_id": "c1"}], "next_cursor": "b"}',
          "b": b'{"data": [{"call_id": "c2"}], "next_cursor": "c"}',
          "c": b'{"data": [], "next_cursor": null}'}


@dataclass(frozen=True)
class Answer:
    body: bytes


def decode(answer: Answer, cursor: str | None) -> tuple[CallRecordPage, str | None]:
    fast = read_page_columns(answer.body)
    assert fast is not None
    columns, nxt = fast
    return CallRecordPage(answer.body, columns, None), nxt


def test_dict_pages_follow_the_cursor_to_the_last_page():
    pages = {None: ([{"n": 1}], "b"), "b": ([{"n": 2}], "c"), "c": ([], None)}
    asked = []

    def page(cursor):
        asked.append(cursor)
        return pages[cursor]

    assert list(dict_pages(page)) == [[{"n": 1}], [{"n": 2}], []]
    assert asked == [None, "b", "c"]


def test_body_pages_ask_early_for_the_cursor_the_body_ends_with_once_each():
    fetched = []

    def fetch(cursor):
        fetched.append(cursor)
        return Answer(BODIES[cursor])

    pages = list(body_pages(fetch, decode))
    assert [p.body for p in pages] == list(BODIES.values())
    assert [len(p) for p in pages] == [1, 1, 0]
    assert fetched == [None, "b", "c"]


def test_an_error_comes_at_the_page_it_belongs_to():
    def failing(answer, cursor):
        if cursor == "c":  # the page fetched with cursor c
            raise ValueError("page c is broken")
        return decode(answer, cursor)

    pages = body_pages(lambda cursor: Answer(BODIES[cursor]), failing)
    assert next(pages).body == BODIES[None]
    assert next(pages).body == BODIES["b"]
    with pytest.raises(ValueError, match="page c is broken"):
        next(pages)


def test_paging_needs_no_http_stack():
    code = ("import sys, promptops.platform.paging; print(sorted(m for m in "
            "('requests', 'tenacity', 'promptops.platform.client') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[]\n"
