"""What the tests share besides fixtures, one module per subject (``tests.helpers.alerts``,
``tests.helpers.client``, ``tests.helpers.stack`` ...). Fixtures stay in conftest.py files."""

from __future__ import annotations

from pathlib import Path

#: The repository's root: dags/, include/, plugins/, scripts/.
ROOT = Path(__file__).resolve().parents[2]
