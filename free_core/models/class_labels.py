"""Class choices for class-conditional DiTs: ImageNet-1k names (DiT-XL/2) and the embedded model's classes.

A choice is shown as "<index> <name>" (ImageNet) or "<index> <name> [embedded]", so a searchable
list finds a class by name or by number; `resolve_class` turns a choice (or an explicit index) into
the label for a given model and refuses a class the model does not have.
"""

from __future__ import annotations

from ..training.data import CLASS_NAMES
from .imagenet_classes import IMAGENET_CLASSES

EMBEDDED_TAG = " [embedded]"


def class_choices() -> list[str]:
    """The embedded model's classes first, then the 1000 ImageNet classes."""
    embedded = [f"{i} {name}{EMBEDDED_TAG}" for i, name in enumerate(CLASS_NAMES)]
    return embedded + [f"{i} {name}" for i, name in enumerate(IMAGENET_CLASSES)]


def class_names_for(num_classes: int) -> tuple[str, ...] | None:
    """The names of a model's classes when we know them: 1000 = ImageNet-1k, 10 = the embedded model."""
    if num_classes == len(IMAGENET_CLASSES):
        return IMAGENET_CLASSES
    if num_classes == len(CLASS_NAMES):
        return CLASS_NAMES
    return None


def resolve_class(choice: str, index: int, num_classes: int) -> tuple[int, str]:
    """(label, name) for a model with `num_classes` classes; `index` >= 0 overrides `choice`."""
    names = class_names_for(num_classes)
    if index >= 0:
        if index >= num_classes:
            raise ValueError(f"class_index {index} is out of range: this model has classes 0..{num_classes - 1}")
        return index, names[index] if names else f"class {index}"
    head, _, rest = choice.partition(" ")
    if not head.isdigit():
        raise ValueError(f"class_name {choice!r} is not a class choice; pick one from the list (\"<index> <name>\")")
    label, embedded = int(head), choice.endswith(EMBEDDED_TAG)
    name = rest[: -len(EMBEDDED_TAG)] if embedded else rest
    if embedded and names is not CLASS_NAMES:
        raise ValueError(
            f"class_name {choice!r} is a class of the embedded 10-class model, but this model has {num_classes} classes; "
            "pick an ImageNet class (e.g. \"207 Golden Retriever\") or set class_index"
        )
    if not embedded and names is CLASS_NAMES:
        raise ValueError(
            f"class_name {choice!r} is an ImageNet class, but this is the embedded 10-class model; pick one of "
            f"{[f'{i} {n}{EMBEDDED_TAG}' for i, n in enumerate(CLASS_NAMES)]}"
        )
    if label >= num_classes:
        raise ValueError(f"class {label} ({name}) is out of range: this model has classes 0..{num_classes - 1}; set class_index")
    return label, name
