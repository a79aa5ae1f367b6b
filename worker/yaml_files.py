"""Safe loading of our YAML files (rules, dataset specs, settings), and bounded error quoting.

A file is refused with a ``ConfigError`` naming it (and the line, when there is one) if it is
larger than ``MAX_YAML_BYTES``, holds an anchor or an alias (``&a`` / ``*a``: an "alias bomb"
expands to gigabytes once anything walks or prints it), nests deeper than ``MAX_YAML_DEPTH``,
or is not valid YAML. What any message quotes from a file goes through ``brief`` (a repr of at
most ``BRIEF_CHARS`` characters), so a hostile value never makes a huge error message.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent, NodeEvent

from consumers.errors import ConfigError

MAX_YAML_BYTES = 1024 * 1024
MAX_YAML_DEPTH = 64
BRIEF_CHARS = 80


def brief(value: Any, limit: int = BRIEF_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters. Containers are cut before they are printed,
    so that this stays cheap even for a huge value."""
    if isinstance(value, list | tuple | set | frozenset | dict) and len(value) > limit:
        value = list(value)[:limit]
    text = repr(value) if not isinstance(value, str) else repr(value[:limit])
    return text if len(text) <= limit else text[:limit - 3] + "..."


def cut(text: str, limit: int = 300) -> str:
    """A message from elsewhere (a parser, a validator) on one line, at most ``limit`` chars."""
    text = " ".join(text[:limit * 4].split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class GuardedLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors, aliases and nesting deeper than ``MAX_YAML_DEPTH``."""

    source = "<yaml>"
    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        line = event.start_mark.line + 1 if event.start_mark else 0
        if isinstance(event, AliasEvent) or (
                isinstance(event, NodeEvent) and event.anchor is not None):
            raise ConfigError(f"{self.source}: line {line}: YAML aliases/anchors are not allowed")
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise ConfigError(f"{self.source}: line {line}: YAML nested deeper than "
                                  f"{MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class Yaml12Loader(GuardedLoader):
    """The guarded SafeLoader (no anchors or aliases, bounded size and depth) with YAML 1.2
    booleans (true/false only: an unquoted no stays 'no') and floats (1e-3 is a number)."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml_text(text: str, source: str, loader: type[GuardedLoader] = GuardedLoader) -> Any:
    """The document in ``text``; ``source`` names it in errors (e.g. "rules file x.yaml")."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{source}: larger than 1 MiB ({MAX_YAML_BYTES} bytes); refused")
    instance = loader(text)
    instance.source = source
    try:
        return instance.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = " ".join(x for x in (exc.context, exc.problem) if x)
        raise ConfigError(f"{source}: {where}invalid YAML: {cut(problem)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {cut(str(exc))}") from None
    except RecursionError:  # a parser path the depth check does not cover
        raise ConfigError(f"{source}: YAML nested too deeply") from None
    finally:
        instance.dispose()


def load_yaml_file(path: str | Path, source: str,
                   loader: type[GuardedLoader] = GuardedLoader) -> Any:
    """The document of the file at ``path``, read as UTF-8, at most ``MAX_YAML_BYTES``."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read it: {exc.strerror or exc}") from None
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(f"{source}: larger than 1 MiB ({MAX_YAML_BYTES} bytes); refused")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text: {exc.reason} at byte {exc.start}"
                          ) from None
    return load_yaml_text(text, source, loader)
