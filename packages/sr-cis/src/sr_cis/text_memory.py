"""Textual scenario memory (spec §3.3): descriptions per class instead of images.

Prompts of the large model (spec §3.3, §3.8) live here too, byte-for-byte.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from papers_shared.checkpoints import atomic_write_text

__all__ = ["CHOOSE_TEMPLATE", "CLASS_NAME_TEMPLATE", "DESCRIBE_TEMPLATE", "TextMemory", "choose_prompt"]

DESCRIBE_TEMPLATE = "Describe the scene of this image in one sentence. The main object is a {name}."
CHOOSE_TEMPLATE = (
    "Answer which class the picture is belong to: {fill}? Please choose one most possible class."
)
CLASS_NAME_TEMPLATE = "a photo of a {name}"


def choose_prompt(names: Sequence[str]) -> str:
    """The ICL slow-path prompt: ``fill = ", ".join(names[:-1]) + " or " + names[-1]`` (spec §3.8)."""
    names = list(names)
    if not names or any(not isinstance(n, str) or not n for n in names):
        raise ValueError(f"need at least one non-empty candidate name, got {names}")
    fill = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return CHOOSE_TEMPLATE.format(fill=fill)


class TextMemory:
    """``class id -> list of descriptions`` plus the class names; counted in UTF-8 bytes."""

    def __init__(self) -> None:
        self.texts: dict[int, list[str]] = {}
        self.names: dict[int, str] = {}

    def add(self, class_id: int, text: str, name: str | None = None) -> None:
        if not isinstance(text, str):
            raise TypeError(f"descriptions must be strings, got {type(text).__name__}")
        self.texts.setdefault(int(class_id), []).append(text)
        if name is not None:
            self.names[int(class_id)] = name

    def set_name(self, class_id: int, name: str) -> None:
        self.names[int(class_id)] = name
        self.texts.setdefault(int(class_id), [])

    def for_class(self, class_id: int) -> list[str]:
        if int(class_id) not in self.texts:
            raise KeyError(f"no text memory for class {class_id}; memorised: {sorted(self.texts)}")
        return list(self.texts[int(class_id)])

    @property
    def classes(self) -> list[int]:
        return sorted(self.texts)

    def nbytes(self) -> int:
        """UTF-8 size of every stored description (class names are counted too)."""
        n = sum(len(t.encode("utf-8")) for ts in self.texts.values() for t in ts)
        return n + sum(len(v.encode("utf-8")) for v in self.names.values())

    def to_dict(self) -> dict:
        return {
            "texts": {str(k): v for k, v in self.texts.items()},
            "names": {str(k): v for k, v in self.names.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> TextMemory:
        if not isinstance(d, dict) or "texts" not in d:
            raise ValueError("text memory JSON must hold a 'texts' mapping")
        out = cls()
        for k, v in d["texts"].items():
            out.texts[int(k)] = [str(t) for t in v]
        for k, v in d.get("names", {}).items():
            out.names[int(k)] = str(v)
        return out

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> TextMemory:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"text memory file not found: {p}")
        return cls.from_dict(json.loads(p.read_text(encoding="utf-8")))
