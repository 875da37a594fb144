"""Dotted keys over nested dicts: `train.learning_rate` <-> {"train": {"learning_rate": ...}}."""

from __future__ import annotations

from typing import Any


def flatten(tree: dict, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; an empty section disappears."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        flat.update(flatten(value, name + sep, sep) if isinstance(value, dict) else {name: value})
    return flat


def nested(flat: dict[str, Any], sep: str = ".") -> dict[str, Any]:
    """{'a.b': 1} -> {'a': {'b': 1}}, keys in sorted order."""
    out: dict[str, Any] = {}
    for key, value in sorted(flat.items()):
        put(out, key, value, create=True, sep=sep)
    return out


def get(tree: dict, key: str) -> Any:
    """The value at a dotted key; KeyError(key) when any part is missing."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def put(tree: dict, key: str, value: Any, *, create: bool = False, sep: str = ".") -> None:
    """Set the value at a dotted key; with create, missing sections are made (else KeyError)."""
    *parents, leaf = key.split(sep)
    node = tree
    for part in parents:
        if create:
            node = node.setdefault(part, {})
        elif part in node:
            node = node[part]
        else:
            raise KeyError(key)
    node[leaf] = value


def drop(tree: dict, key: str) -> None:
    """Remove a dotted key if it is there."""
    *parents, leaf = key.split(".")
    node: Any = tree
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(leaf, None)
