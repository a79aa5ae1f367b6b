"""Shared fixtures for the decoder tests: the real MLflow payloads in ``tests/fixtures/``.

The JSON files are produced by ``tests/fixtures/make_fixtures.py`` (see its docstring to
regenerate them). Both fixtures are session-scoped factories, so Hypothesis tests can use them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES_DIR = ROOT / "tests" / "fixtures"


@cache
def _read(name: str) -> bytes:
    path = FIXTURES_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run tests/fixtures/make_fixtures.py")
    return path.read_bytes()


@pytest.fixture(scope="session")
def fixture_bytes() -> Callable[[str], bytes]:
    """``fixture_bytes("trace_ok.json")``: the file's bytes, as a producer would send them."""
    return _read


@pytest.fixture(scope="session")
def fixture_json() -> Callable[[str], Any]:
    """``fixture_json("trace_ok.json")``: a fresh parsed copy, safe to mutate."""

    def load(name: str) -> Any:
        return json.loads(_read(name))

    return load
