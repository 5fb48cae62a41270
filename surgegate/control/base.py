"""The window-policy contract: one decision per window, from that window's inputs.

Throttle and scaling policies are stepped once per closed window by the
service controller. Each keeps its own state, which :meth:`WindowPolicy.state`
returns as a typed record and :meth:`WindowPolicy.load` takes up again (the
decide agent checkpoints it in a Faust table), and each decision carries a
version that only grows (:func:`~surgegate.control.version.decision_version`).
"""

from __future__ import annotations

import abc
from typing import Any


class WindowPolicy(abc.ABC):
    """Decides once per window; the same inputs in the same state give the same decision."""

    #: the version of the newest decision made, -1 before any
    last_version: int = -1

    @abc.abstractmethod
    def decide(self, inputs: Any) -> Any:
        """The decision for the window after ``inputs``."""

    @abc.abstractmethod
    def state(self) -> Any:
        """What the policy has learned, as its typed record (:mod:`surgegate.control.state`)."""

    @abc.abstractmethod
    def load(self, state: Any) -> None:
        """Take up ``state`` (from :meth:`state`) and go on exactly as the policy that wrote it."""

    # ------------------------------------------------- for the contract suite (river's habit)

    @classmethod
    @abc.abstractmethod
    def _unit_test_params(cls, **config: Any) -> dict[str, Any]:
        """Keyword arguments of a valid instance; ``config`` overrides fields of its configuration."""

    @classmethod
    def _invalid_params(cls) -> list[dict[str, Any]]:
        """Configuration fields the policy's configuration must refuse, each with an error naming it."""
        return []
