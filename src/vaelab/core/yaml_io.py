"""The one YAML reader of vaelab: every config, sweep spec, sweep.yaml and `--set` value is read here.

`safe_load` is `yaml.safe_load` (plain values only, never a tag that builds a Python object) with bounds a hostile
or broken file cannot get past: the document's size (`MAX_CHARS`), its nesting depth (`MAX_DEPTH`), the number of
nodes it holds once every alias is expanded (`MAX_NODES`: a "billion laughs" block of nested aliases is refused
while it is read, in milliseconds, instead of exploding later when the value is walked, copied or printed),
aliases to a node that contains them (a recursive structure) and a key given twice in one mapping (which PyYAML
would silently resolve to the last value). Each refusal is a `Refused`, a `yaml.YAMLError`, so callers that
already turn YAML errors into one line keep doing so; `load` does that itself (a VaelabError naming the document
and its fix) and `problem` is the one-line reason of any YAML error.

A leaf: imports only vaelab.core.errors and PyYAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
import yaml.constructor

from vaelab.core.errors import VaelabError

MAX_CHARS = 16 * 2**20          # a config is a few KB; sweep.yaml of thousands of runs a few MB
MAX_DEPTH = 64                  # configs nest 3 levels, sweep.yaml 6
MAX_NODES = 250_000             # scalars, lists and mappings, every alias expanded (sweep.yaml: ~20 a run)
MERGE_TAG = "tag:yaml.org,2002:merge"


class Refused(yaml.MarkedYAMLError):
    """A document this reader refuses although a YAML parser might take it: too large, too deep, too many nodes
    once its aliases are expanded, a recursive alias, or a duplicate key."""

    def __init__(self, problem: str, mark: yaml.Mark | None = None) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that counts what it composes: depth, and nodes with every alias expanded."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth, self._nodes = 0, 0
        self._sizes: dict[int, int] = {}       # id(node) -> its node count, aliases expanded (once composed)

    def _count(self, n: int, mark: yaml.Mark) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise Refused(f"more than {MAX_NODES:,} values once its aliases (*name) are expanded: an alias bomb?",
                          mark)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)          # the anchored node itself (or a ComposerError)
            if id(node) not in self._sizes:
                raise Refused("an alias (*name) inside the node it names: a recursive structure", mark)
            self._count(self._sizes[id(node)], mark)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise Refused(f"nested more than {MAX_DEPTH} levels deep", mark)
        before = self._nodes
        self._count(1, mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._sizes[id(node)] = self._nodes - before
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:                       # `<<: *base` merges; its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:                                   # unhashable: the constructor says so below
                continue
            if duplicate:
                raise Refused(f"the key {key!r} appears twice in one mapping (keep one)", key_node.start_mark)
        return super().construct_mapping(node, deep)


def safe_load(text: str | bytes) -> Any:
    """`yaml.safe_load(text)` within this module's bounds; a refusal is a `Refused` (a yaml.YAMLError)."""
    if len(text) > MAX_CHARS:
        raise Refused(f"{len(text):,} characters, more than the {MAX_CHARS:,} vaelab reads")
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def problem(err: yaml.YAMLError) -> str:
    """A one-line reason for a YAML error (PyYAML's own messages span several lines)."""
    what = getattr(err, "problem", None) or err.__class__.__name__
    mark = getattr(err, "problem_mark", None)
    return " ".join(f"{what}{f' at line {mark.line + 1}' if mark else ''}".split())


def load(text: str | bytes, what: str, fix: str) -> Any:
    """`safe_load`, every failure one VaelabError line naming `what` (e.g. "sweep spec s.yaml") and `fix`."""
    try:
        return safe_load(text)
    except Refused as err:
        raise VaelabError(f"{what} is refused ({problem(err)}): {fix}") from err
    except yaml.constructor.ConstructorError as err:
        raise VaelabError(f"{what} uses a YAML tag vaelab does not load ({problem(err)}; only plain values are "
                          f"read, never !!python tags): {fix}") from err
    except yaml.YAMLError as err:
        raise VaelabError(f"{what} is not valid YAML ({problem(err)}): {fix}") from err


def read_mapping(path: str | Path, fix: str, what: str | None = None) -> dict[str, Any]:
    """The mapping a YAML file holds (a config.yaml, a sweep spec, sweep.yaml; empty: {}), every fault one
    VaelabError line naming the file (`what`, by default its path) and `fix`: unreadable, too large, not UTF-8,
    not YAML, refused by `safe_load`'s bounds, or not a mapping."""
    path, what = Path(path), what or str(path)
    try:
        if path.stat().st_size > 4 * MAX_CHARS:               # UTF-8: at most 4 bytes a character
            raise Refused(f"{path.stat().st_size:,} bytes, more than vaelab reads")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise VaelabError(f"{what} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}): "
                          f"{fix}") from err
    except OSError as err:
        raise VaelabError(f"cannot read {what} ({err.strerror or err}): {fix}") from err
    except Refused as err:
        raise VaelabError(f"{what} is refused ({problem(err)}): {fix}") from err
    values = load(text, what, fix)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise VaelabError(f"{what} must hold a mapping (key: value lines), not a {type(values).__name__}: {fix}")
    return values
