"""The project's label list: the categories objects are annotated with (`fbrs app --labels cat,dog`).

A label is a name and a display colour (#rrggbb). The list is checked once, when the app starts: names
non-empty, at most 64 characters, without control characters, unique (ignoring case); colours #rrggbb.
With no list given the project has one label, "object", whose objects keep their per-object colours
(the app's behaviour before labels existed). In the COCO files the list is the categories, ids 1..N in
the given order; each object's label is its annotation's category.

Sources: ``--labels "cat,dog:#ff8800"`` (a colour after a colon is optional) or ``--labels-file PATH``:
a text file with one label per line (``name`` or ``name #rrggbb``; blank lines and lines starting with
``#`` ignored) or a JSON file (a list of names or of ``{"name": ..., "color": ...}``, or ``{"labels": [...]}``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fbrs.errors import ConfigError

DEFAULT_LABEL = "object"
MAX_LABELS = 1000
MAX_LABEL_LENGTH = 64
_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Label:
    """A category: `name`, and `color` #rrggbb (None: objects use their per-object colours)."""

    name: str
    color: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "color": self.color}


def palette_color(index: int) -> str:
    """The colour of the index-th label (0-based) when none was given: golden-ratio hue steps."""
    from fbrs.app.export import color_hex

    return color_hex(index + 1)


def check_label_name(name: Any, what: str = "label") -> str:
    """A valid label name (stripped), else ConfigError."""
    if not isinstance(name, str):
        raise ConfigError(f"{what} must be a string, got {type(name).__name__}")
    text = name.strip()
    if not text:
        raise ConfigError(f"{what} must not be empty")
    if len(text) > MAX_LABEL_LENGTH:
        raise ConfigError(f"{what} {text[:MAX_LABEL_LENGTH]!r}... is longer than {MAX_LABEL_LENGTH} characters")
    if _CONTROL.search(text):
        raise ConfigError(f"{what} {text!r} contains control characters")
    return text


class LabelSet:
    """The project's labels, checked; `names` in order (COCO category ids 1..N)."""

    def __init__(self, labels: Iterable[Label | str | dict[str, Any]] | None = None) -> None:
        items = list(labels) if labels is not None else []
        if not items:
            items = [Label(DEFAULT_LABEL)]
            self.explicit = False
        else:
            self.explicit = True
        if len(items) > MAX_LABELS:
            raise ConfigError(f"{len(items)} labels given; at most {MAX_LABELS}")
        checked: list[Label] = []
        seen: dict[str, str] = {}
        for index, item in enumerate(items):
            if isinstance(item, str):
                name, color = item, None
            elif isinstance(item, Label):
                name, color = item.name, item.color
            elif isinstance(item, dict):
                unknown = set(item) - {"name", "color"}
                if unknown or "name" not in item:
                    raise ConfigError(f"label {index + 1} must be {{'name': ..., 'color': '#rrggbb'}}, got {item!r}")
                name, color = item["name"], item.get("color")
            else:
                raise ConfigError(f"label {index + 1} must be a name or {{name, color}}, got {item!r}")
            name = check_label_name(name, f"label {index + 1}")
            if name.casefold() in seen:
                raise ConfigError(f"label {name!r} is given twice (as {seen[name.casefold()]!r} before)")
            seen[name.casefold()] = name
            if color is None:
                color = palette_color(index) if self.explicit else None
            elif not isinstance(color, str) or not _COLOR.fullmatch(color.strip()):
                raise ConfigError(f"colour of label {name!r} must be #rrggbb, got {color!r}")
            else:
                color = color.strip().lower()
            checked.append(Label(name, color))
        self.labels: tuple[Label, ...] = tuple(checked)

    @property
    def names(self) -> list[str]:
        return [label.name for label in self.labels]

    @property
    def default(self) -> str:
        return self.labels[0].name

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __len__(self) -> int:
        return len(self.labels)

    def require(self, name: Any) -> str:
        """`name` if it is one of the labels, else ConfigError (the API answers 400)."""
        if isinstance(name, str) and name in self.names:
            return name
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:80] + "..."
        raise ConfigError(f"unknown label {shown}; the project's labels are {', '.join(self.names)}")

    def color_of(self, name: str) -> str | None:
        for label in self.labels:
            if label.name == name:
                return label.color
        return None

    def categories(self, extra: Sequence[str] = ()) -> list[dict[str, Any]]:
        """COCO categories: the labels with ids 1..N, then any `extra` name (a saved object's label the
        list no longer has), so that no annotation loses its category."""
        names = self.names + [name for name in dict.fromkeys(extra) if name not in self.names]
        return [{"id": index, "name": name, "supercategory": "object"}
                for index, name in enumerate(names, start=1)]

    def to_list(self) -> list[dict[str, Any]]:
        return [label.to_dict() for label in self.labels]


def parse_labels_option(text: str) -> LabelSet:
    """``--labels "cat,dog:#ff8800"`` -> LabelSet."""
    items: list[dict[str, Any]] = []
    for index, part in enumerate(text.split(",")):
        name, _, color = part.partition(":")
        if not name.strip():
            raise ConfigError(f"--labels: label {index + 1} is empty (in {text!r})")
        items.append({"name": name, "color": color.strip() or None})
    if not items:
        raise ConfigError("--labels needs at least one name")
    return LabelSet(items)


def load_labels_file(path: str | os.PathLike) -> LabelSet:
    """A labels file (.json, else one label per line) -> LabelSet; ConfigError says what is wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read labels file {path}: {error}") from None
    if path.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except ValueError as error:
            raise ConfigError(f"labels file {path} is not valid JSON: {error}") from None
        if isinstance(values, dict) and set(values) == {"labels"}:
            values = values["labels"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"labels file {path} must hold a non-empty list of labels")
        try:
            return LabelSet(values)
        except ConfigError as error:
            raise ConfigError(f"labels file {path}: {error}") from None
    items: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, color = line, None
        head, _, tail = line.rpartition(" ")
        if head and tail.startswith("#"):
            name, color = head, tail
        items.append({"name": name, "color": color})
    if not items:
        raise ConfigError(f"labels file {path} holds no labels")
    try:
        return LabelSet(items)
    except ConfigError as error:
        raise ConfigError(f"labels file {path}: {error}") from None
