"""Load a YAML file into plain data while remembering where every key stands.

PyYAML's ``safe_load`` forgets line numbers and silently keeps the last of two
duplicate keys. For a security configuration both are unacceptable: an error must
name its line, and a duplicated ``policy:`` must never quietly replace the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Loc = tuple[str | int, ...]


class YamlError(ValueError):
    """The file is not valid YAML (or repeats a key); carries the 1-based line."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass
class LocatedYaml:
    """Plain data plus a map from key path to the 1-based line it was written on."""

    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int | None:
        """The line of ``loc`` or of its closest written ancestor."""
        probe = tuple(loc)
        while probe:
            if probe in self.lines:
                return self.lines[probe]
            probe = probe[:-1]
        return self.lines.get((), None)


def load_located(text: str) -> LocatedYaml:
    """Parse ``text``; raise :class:`YamlError` with a line for any defect."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise YamlError(str(exc.problem or exc), line) from None
    except yaml.YAMLError as exc:
        raise YamlError(str(exc), None) from None
    if node is None:
        return LocatedYaml({}, {(): 1})
    lines: dict[Loc, int] = {(): node.start_mark.line + 1}
    _check_and_index(node, (), lines)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # pragma: no cover - compose already succeeded
        raise YamlError(str(exc), None) from None
    return LocatedYaml(data, lines)


def _check_and_index(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key == "<<":
                continue
            if key in seen:
                raise YamlError(
                    f"key {key!r} appears twice (lines {seen[key]} and {line}); "
                    "remove one so it is clear which applies",
                    line,
                )
            seen[key] = line
            lines[(*loc, key)] = line
            _check_and_index(value_node, (*loc, key), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*loc, index)] = item.start_mark.line + 1
            _check_and_index(item, (*loc, index), lines)
