"""Which of the user's classes are ImageNet classes, by folder name.

A backbone pretrained on ImageNet already has a classifier for its 1000 classes. When every class
folder names one of them (``ants`` → "ant, emmet, pismire", ``bees`` → "bee", ``n02219486``, or
``001.Tiger_shark`` → "tiger shark"), the new head can start from those rows of the old classifier:
the zero-shot classifier restricted to the user's classes, which training then adapts
(``--head-init auto``; hymenoptera, an ImageNet subset: 0.974 after the first head epoch against 0.954
from a random head, lite0). The names come with timm (``timm.data.ImageNetInfo``); nothing is downloaded.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Sequence

IMAGENET_CLASSES = 1000
_PREFIX = re.compile(r"^\d+[._\-\s]+")  # "001.Black_footed_Albatross", "03-daisy"


def _normal(name: str) -> str:
    return " ".join(_PREFIX.sub("", name.strip()).replace("_", " ").replace("-", " ").lower().split())


@lru_cache(maxsize=1)
def _index() -> tuple[dict[str, frozenset[int]], dict[str, int], tuple[str, ...]]:
    """Synonym → ImageNet indices, WordNet id → index, and each index's description."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    by_name: dict[str, set[int]] = {}
    descriptions = tuple(info.index_to_description(i) for i in range(IMAGENET_CLASSES))
    for index, description in enumerate(descriptions):
        for synonym in description.split(","):
            by_name.setdefault(_normal(synonym), set()).add(index)
    by_wnid = {info.index_to_label_name(i): i for i in range(IMAGENET_CLASSES)}
    return {k: frozenset(v) for k, v in by_name.items()}, by_wnid, descriptions


def _forms(name: str) -> list[str]:
    """The name, then its singular forms (ants → ant, daisies → daisy, boxes → box)."""
    forms = [name]
    if name.endswith("ies") and len(name) > 4:
        forms.append(name[:-3] + "y")
    if name.endswith("es") and len(name) > 3:
        forms.append(name[:-2])
    if name.endswith("s") and not name.endswith("ss") and len(name) > 2:
        forms.append(name[:-1])
    return forms


def imagenet_index(name: str) -> int | None:
    """The one ImageNet class a folder name names, or None (no match, or more than one: "crane")."""
    by_name, by_wnid, _ = _index()
    if name.strip() in by_wnid:
        return by_wnid[name.strip()]
    for form in _forms(_normal(name)):
        found = by_name.get(form)
        if found:
            return next(iter(found)) if len(found) == 1 else None
    return None


def imagenet_rows(classes: Sequence[str]) -> list[int] | None:
    """ImageNet indices of ``classes`` in order, when each names a different ImageNet class; else None."""
    rows = [imagenet_index(c) for c in classes]
    if len(rows) < 2 or any(r is None for r in rows) or len(set(rows)) != len(rows):
        return None
    return rows  # type: ignore[return-value]


def describe(index: int) -> str:
    """ImageNet's name of class ``index`` (its first synonym)."""
    return _index()[2][index].split(",")[0].strip()
