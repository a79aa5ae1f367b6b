"""Hostile YAML files (rules, dataset specs, settings): refused with a short ConfigError that
names the file and line, without expanding aliases, reading huge documents or recursing deeply.

The bomb tests carry a generous ``thread`` timeout: a regression (an expanded alias bomb) must
not hang CI, and a C-level ``repr`` of a bomb cannot be interrupted by a signal.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from consumers.errors import ConfigError
from worker.curation.specs import load_specs
from worker.rules.engine import load_rules
from worker.settings import load_settings

MAX_YAML_BYTES = 1 << 20  # the documented bound
BOUND = 600  # no message quotes more than this many characters

bomb_timeout = pytest.mark.timeout(60, method="thread")


def _bomb(indent: str, levels: int = 9) -> str:
    """The 'billion laughs' mapping: level n is a list of nine aliases of level n-1."""
    names = "abcdefghijklmnopqrstuvwxyz"
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip(names[:levels - 1], names[1:levels], strict=True):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "".join(f"{indent}{line}\n" for line in lines)


# Each bomb sits where a validation message quotes the value; its first anchor is on line 4.
def _rules_bomb() -> str:
    return "rules:\n  - name: boom\n    filter:\n" + _bomb(" " * 6)


def _datasets_bomb() -> str:
    return "datasets:\n  - name: boom\n    strategy:\n" + _bomb(" " * 6)


def _settings_bomb() -> str:
    return "group_id: g\nhttp_port: 0\nlog_level:\n" + _bomb("  ")


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@bomb_timeout
@pytest.mark.parametrize(("name", "bomb", "load"), [
    ("rules.yaml", _rules_bomb, load_rules),
    ("datasets.yaml", _datasets_bomb, load_specs),
    ("config.yaml", _settings_bomb, load_settings),
], ids=["rules", "datasets", "settings"])
def test_an_alias_bomb_is_refused(tmp_path: Path, name: str, bomb: Callable[[], str],
                                  load: Callable[[Path], object]) -> None:
    path = _write(tmp_path, name, bomb())
    with pytest.raises(ConfigError) as info:
        load(path)
    msg = str(info.value)
    assert "YAML aliases/anchors are not allowed" in msg
    assert str(path) in msg and "line 4" in msg
    assert len(msg) < BOUND


def test_an_alias_is_refused_where_it_is_used(tmp_path: Path) -> None:
    # A harmless-looking alias is refused too, naming the line of the anchor.
    text = "rules:\n  - name: a\n    filter: &f \"attributes.status = 'ERROR'\"\n" \
           "  - name: b\n    filter: *f\n"
    with pytest.raises(ConfigError, match=r"line 3: YAML aliases/anchors are not allowed"):
        load_rules(_write(tmp_path, "r.yaml", text))


@pytest.mark.parametrize("kind", ["rules", "datasets", "settings"])
def test_an_oversized_document_is_refused(tmp_path: Path, kind: str) -> None:
    head = {"rules": "rules: []\n", "datasets": "datasets: [{name: x}]\n",
            "settings": "group_id: g\n"}[kind]
    path = _write(tmp_path, f"{kind}.yaml", head + "# padding\n" * (MAX_YAML_BYTES // 10 + 1))
    load = {"rules": load_rules, "datasets": load_specs, "settings": load_settings}[kind]
    with pytest.raises(ConfigError, match=r"larger than 1 MiB") as info:
        load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("kind", ["rules", "datasets", "settings"])
def test_deep_nesting_is_refused(tmp_path: Path, kind: str) -> None:
    key = {"rules": "rules", "datasets": "datasets", "settings": "group_id"}[kind]
    path = _write(tmp_path, f"{kind}.yaml", f"{key}: " + "[" * 3000 + "]" * 3000 + "\n")
    load = {"rules": load_rules, "datasets": load_specs, "settings": load_settings}[kind]
    with pytest.raises(ConfigError, match=r"line 1: YAML nested deeper than") as info:
        load(path)
    assert str(path) in str(info.value)


def test_a_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.yaml", "datasets:\n  - name: x\n    tag: {key: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_specs(path)
    msg = str(info.value)
    assert msg.startswith(f"datasets file {path}: line ") and "invalid YAML" in msg
    assert "\n" not in msg


def test_load_yaml_text_keeps_ordinary_documents() -> None:
    from worker.yaml_files import load_yaml_text

    assert load_yaml_text("a: [1, {b: c}]\nd: null\n", "<t>") == {"a": [1, {"b": "c"}],
                                                                  "d": None}


def test_brief_cuts_long_values() -> None:
    from worker.yaml_files import brief

    assert brief("x" * 10) == repr("x" * 10)
    cut = brief("y" * 10_000)
    assert len(cut) <= 80 and cut.endswith("...")


LONG = "z" * 20_000


@pytest.mark.parametrize("text", [
    f"rules:\n  - name: x\n    filter: \"{LONG}\"\n",  # MLflow's parser quotes it
    f"rules:\n  - name: \"{LONG}\"\n    filter: \"attributes.status = 'NOPE'\"\n",
    f"rules:\n  - name: x\n    filter: \"attributes.status = 'ERROR'\"\n    {LONG}: 1\n",
    f"rules:\n  - name: x\n    sample_rate: \"{LONG}\"\n    filter: \"tags.a = 'b'\"\n",
    f"rules:\n  - name: x\n    feedback: {{name: q, below: \"{LONG}\"}}\n",
    f"rules:\n  - name: x\n    feedback: {{name: q, in: [[\"{LONG}\"]]}}\n",
    f"rules:\n  - name: x\n    filter: \"tags.a = 'b'\"\n    tag: {{key: [\"{LONG}\"]}}\n",
    f"{LONG}: 1\nrules: []\n",
])
def test_rules_messages_are_bounded(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_rules(_write(tmp_path, "r.yaml", text))
    assert len(str(info.value)) < BOUND


@pytest.mark.parametrize("text", [
    f"datasets:\n  - name: \"{LONG}\"\n    strategy: \"{LONG}\"\n",
    f"datasets:\n  - name: x\n    {LONG}: 1\n",
    f"datasets:\n  - name: x\n    sink: {{kind: \"{LONG}\"}}\n",
    f"datasets:\n  - name: x\n    sink: {{kind: files, path: /tmp, {LONG}: 1}}\n",
    f"datasets:\n  - name: x\n    since: \"{LONG}\"\n",
    f"datasets:\n  - name: x\n    filter: \"{LONG}\"\n",
    f"datasets:\n  - name: x\n    fast_ms: \"{LONG}\"\n",
    "datasets:\n" + "".join(f"  - name: {LONG[:500]}\n" for _ in range(3)),
])
def test_dataset_spec_messages_are_bounded(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_specs(_write(tmp_path, "d.yaml", text))
    assert len(str(info.value)) < BOUND


@pytest.mark.parametrize("text", [
    f"{LONG}: 1\n",
    f"log_level: \"{LONG}\"\n",
    f"store_url: \"{LONG}\"\n",
])
def test_settings_messages_are_bounded(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, "c.yaml", text))
    assert len(str(info.value)) < BOUND


@bomb_timeout
def test_the_cli_refuses_a_rules_bomb_with_exit_2(tmp_path: Path) -> None:
    path = _write(tmp_path, "bomb.yaml", _rules_bomb())
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACE_CURATOR_")}
    env["TRACE_CURATOR_STORE_URL"] = f"sqlite:///{tmp_path / 'none.db'}"
    cli = str(Path(sys.executable).parent / "trace-curator")
    out = subprocess.run([cli, "rules", "test", str(path)],
                         capture_output=True, text=True, env=env, timeout=50, check=False)
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1
    assert "YAML aliases/anchors are not allowed" in out.stderr
