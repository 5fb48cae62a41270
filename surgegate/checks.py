"""Hyperparameter checks shared by the pure objects.

>>> check(0 < 1.5 <= 1, "alpha", 1.5, "must be within (0, 1]")
Traceback (most recent call last):
...
ValueError: alpha=1.5: must be within (0, 1]
"""

from __future__ import annotations


def check(ok: bool, name: str, value: object, bound: str) -> None:
    """Raise ``ValueError`` naming a hyperparameter, its value and the bound it broke."""
    if not ok:
        raise ValueError(f"{name}={value!r}: {bound}")
