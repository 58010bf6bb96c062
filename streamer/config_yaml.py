"""A config file's YAML, read strictly and within bounds: PyYAML's safe loader, but a key given
twice in one mapping is an error (PyYAML keeps the last: a second `publish:` block would
silently replace the first), merges (``<<``) follow the YAML spec (the mapping's own keys win,
then the merged mappings in the order given) in time linear in what they produce, and the tree
is refused past MAX_VALUES values, MAX_CHARS characters of text or MAX_DEPTH levels, its
aliases expanded (an alias is the same object wherever it is used: one that contains itself
never ends, and aliases of aliases multiply)."""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

# 256 sources with their settings are ~10,000 values, ~100 KB of text and 6 levels.
MAX_VALUES = 200_000
MAX_CHARS = 4_000_000
MAX_DEPTH = 64
MAX_NUMBER_CHARS = 100

MERGE_TAG = "tag:yaml.org,2002:merge"
VALUE_TAG = "tag:yaml.org,2002:value"  # (a plain `=`: a string key)
STR_TAG = "tag:yaml.org,2002:str"


class YamlError(ValueError):
    """The text is not YAML this loader accepts; the message says why (and where)."""


def load_yaml(text: str) -> Any:
    """The tree of `text`, or YamlError (also for what PyYAML raises on a malformed tagged
    scalar such as ``!!bool maybe``, and for nesting beyond Python's recursion)."""
    try:
        data = yaml.load(text, Loader=_Loader)  # (a SafeLoader)
    except RecursionError:
        raise YamlError("nested too deep") from None
    except yaml.YAMLError as e:
        raise YamlError(str(e)) from None
    except Exception as e:  # (PyYAML's constructors raise what they hit: `!!bool maybe`)
        raise YamlError(f"a value it cannot read ({type(e).__name__}: {e})") from None
    too_big = _too_big(data)
    if too_big is not None:
        raise YamlError(f"{too_big} (counting what aliases stand for)")
    return data


class _Loader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._flat: set[int] = set()  # mapping nodes already flattened (alive while loading)
        self._merged = 0  # pairs that merges looked at, all told (taken or not)
        self._nodes = 0  # nodes composed

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        """Each node as it is read: past MAX_VALUES of them the text is refused before it is
        all read (a 4-MiB list of numbers is a million nodes: 40 s and 1.4 GB of PyYAML's)."""
        self._nodes += 1
        if self._nodes > MAX_VALUES:
            raise ComposerError(f"more than {MAX_VALUES:,} values written out")
        return super().compose_node(parent, index)

    def flatten_mapping(self, node: MappingNode) -> None:
        """Rewrite `node`'s pairs as the mapping means them: its own (each key once), then
        those of its merged mappings in order, each key only where no earlier pair had it."""
        if id(node) in self._flat:
            return
        self._flat.add(id(node))
        own, merged = [], []
        merges = 0
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                merges += 1
                if merges > 1:  # (a key like any other: `<<: [*a, *b]` merges several)
                    raise ConstructorError(None, None, "key '<<' given twice", key_node.start_mark)
                merged += _to_merge(node, value_node)
            else:
                if key_node.tag == VALUE_TAG:
                    key_node.tag = STR_TAG
                own.append((key_node, value_node))
        seen: set[object] = set()
        pairs = []
        for key_node, value_node in own:
            key = self._key(key_node)
            if key in seen:
                raise ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
            pairs.append((key_node, value_node))
        for sub in merged:
            self.flatten_mapping(sub)
            self._merged += len(sub.value)  # (what is looked at costs, taken or not)
            if self._merged > MAX_VALUES:
                raise ConstructorError(
                    None, None, f"merges bring more than {MAX_VALUES:,} values", node.start_mark
                )
            for key_node, value_node in sub.value:
                if key_node.tag == MERGE_TAG:  # (a mapping that merges itself: not yet flat)
                    continue
                key = self._key(key_node)
                if key not in seen:
                    seen.add(key)
                    pairs.append((key_node, value_node))
        node.value = pairs

    def _key(self, node: Node) -> object:
        """The key `node` stands for (`!!str {=: a}` is "a"); one that cannot be hashed is
        itself, and refused as unhashable when the mapping is built."""
        key = self.construct_object(node)
        try:
            hash(key)
        except TypeError:
            return ("node", id(node))
        return key

    def construct_yaml_int(self, node: ScalarNode) -> int:
        _short_number(node)  # (PyYAML reads 1:2:3... in time quadratic in its length)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: ScalarNode) -> float:
        _short_number(node)
        return super().construct_yaml_float(node)


def _short_number(node: ScalarNode) -> None:
    if len(node.value) > MAX_NUMBER_CHARS:
        raise ConstructorError(
            None, None, f"a number longer than {MAX_NUMBER_CHARS} characters", node.start_mark
        )


def _to_merge(node: MappingNode, value: Node) -> list[MappingNode]:
    subs: list[Node] = value.value if isinstance(value, SequenceNode) else [value]
    out = []
    for sub in subs:
        if not isinstance(sub, MappingNode):
            raise ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"expected a mapping (or a list of them) to merge, but found {type(sub).__name__}",
                sub.start_mark,
            )
        out.append(sub)
    return out


def _too_big(data: Any) -> str | None:
    """What makes a loaded tree too big, or None. Walked without recursion; each container's
    children are counted before they are taken on, so the walk never holds more than
    MAX_VALUES of them."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    values = 1
    chars = 0
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (str, bytes)):  # (bytes: !!binary)
            chars += len(node)
            if chars > MAX_CHARS:
                return f"more than {MAX_CHARS:,} characters of text"
        elif isinstance(node, (dict, list, tuple, set)) and node:  # (tuple: !!pairs, set: !!set)
            if depth >= MAX_DEPTH:
                return f"nested deeper than {MAX_DEPTH} levels"
            values += 2 * len(node) if isinstance(node, dict) else len(node)
            if values > MAX_VALUES:
                return f"more than {MAX_VALUES:,} values"
            children = (c for kv in node.items() for c in kv) if isinstance(node, dict) else node
            stack += ((child, depth + 1) for child in children)
    return None


# (PyYAML's table holds its own functions: overriding the methods is not enough)
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_yaml_float)
