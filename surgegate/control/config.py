"""Per-service control configuration, validated on construction.

>>> cfg = ServiceConfig(service="chat", pool="gpu-a", replica_rps=40.0)
>>> cfg.tiers[0], cfg.floor_share["enterprise"]
('enterprise', 0.4)
>>> parse_services('{"chat": {"slo_p99_ms": -1}}')
Traceback (most recent call last):
...
ValueError: services.chat.slo_p99_ms=-1.0: must be > 0
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import msgspec

from surgegate.checks import check
from surgegate.control.scaling import PoolConfig
from surgegate.schemas.decisions import Mode

DEFAULT_TIERS = ("enterprise", "pro", "free")


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """What the control plane needs to know about one service.

    ``tiers`` lists tier names from highest to lowest priority; unknown tiers
    rank below all of them. ``tier_tokens_per_minute`` gives a tier a token
    budget (OpenAI's TPM) across the service, which edges apply in their share.
    ``floor_share`` reserves a share of safe capacity per tier for its realtime
    traffic. ``weights`` are w1..w4 of the priority
    score w1*tier + w2*request_type + w3*history_behaviour + w4*current_load.
    """

    service: str
    pool: str = ""
    slo_p99_ms: float = 10_000.0
    #: time-to-first-token SLO (p99) of streamed responses; None: not a target
    ttft_slo_ms: float | None = None
    error_budget: float = 0.05
    replica_rps: float = 50.0
    replicas: int = 5
    target_utilisation: float = 0.85
    tiers: tuple[str, ...] = DEFAULT_TIERS
    tier_value: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"enterprise": 1.0, "pro": 0.6, "free": 0.2})
    floor_share: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"enterprise": 0.4, "pro": 0.2, "free": 0.05})
    weights: tuple[float, float, float, float] = (0.5, 0.3, 0.15, 0.05)
    degraded_max_tokens: int = 256
    lookahead_windows: int = 3
    hysteresis_windows: int = 6
    lease_windows: int = 3
    mode: Mode = "enforce"
    scaling: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tier_tokens_per_minute: Mapping[str, float] = dataclasses.field(default_factory=dict)
    #: prompt and output tokens one replica serves a second within the SLO (a serving benchmark's
    #: figures); with both, capacity is counted in tokens at each window's mean request lengths
    replica_prompt_tps: float | None = None
    replica_output_tps: float | None = None

    def __post_init__(self) -> None:
        name = f"services.{self.service}"
        check(self.slo_p99_ms > 0, f"{name}.slo_p99_ms", self.slo_p99_ms, "must be > 0")
        check(self.ttft_slo_ms is None or self.ttft_slo_ms > 0, f"{name}.ttft_slo_ms", self.ttft_slo_ms,
              "must be > 0 (or absent)")
        check(0 < self.error_budget < 1, f"{name}.error_budget", self.error_budget, "must be within (0, 1)")
        check(self.replica_rps > 0, f"{name}.replica_rps", self.replica_rps, "must be > 0")
        check(self.replicas >= 1, f"{name}.replicas", self.replicas, "must be >= 1")
        check(0 < self.target_utilisation <= 1, f"{name}.target_utilisation", self.target_utilisation,
               "must be within (0, 1]")
        check(len(self.tiers) >= 1 and len(set(self.tiers)) == len(self.tiers), f"{name}.tiers", self.tiers,
               "must name at least one tier, each once")
        check(all(0 <= v <= 1 for v in self.floor_share.values()) and sum(self.floor_share.values()) <= 1,
               f"{name}.floor_share", dict(self.floor_share), "shares must be within [0, 1] and sum to <= 1")
        check(len(self.weights) == 4 and all(w >= 0 for w in self.weights), f"{name}.weights", self.weights,
               "must be four non-negative numbers")
        check(self.degraded_max_tokens >= 1, f"{name}.degraded_max_tokens", self.degraded_max_tokens, "must be >= 1")
        check(1 <= self.lookahead_windows <= 30, f"{name}.lookahead_windows", self.lookahead_windows,
               "must be within [1, 30]")
        check(self.hysteresis_windows >= 1, f"{name}.hysteresis_windows", self.hysteresis_windows, "must be >= 1")
        check(self.lease_windows >= 1, f"{name}.lease_windows", self.lease_windows, "must be >= 1")
        check(self.mode in ("enforce", "shadow"), f"{name}.mode", self.mode, "must be enforce or shadow")
        check(all(isinstance(v, (int, float)) and v > 0 for v in self.tier_tokens_per_minute.values()),
              f"{name}.tier_tokens_per_minute", dict(self.tier_tokens_per_minute), "every budget must be > 0")
        for field in ("replica_prompt_tps", "replica_output_tps"):
            value = getattr(self, field)
            check(value is None or value > 0, f"{name}.{field}", value, "must be > 0 (or absent)")
        check((self.replica_prompt_tps is None) == (self.replica_output_tps is None), f"{name}.replica_output_tps",
              self.replica_output_tps, "must be given with replica_prompt_tps, or neither")
        if not self.pool:
            object.__setattr__(self, "pool", self.service)
        self.pool_config()  # a bad scaling setting stops start-up, by name

    def pool_config(self) -> PoolConfig:
        """The scaling settings of this service's GPU pool (``scaling`` holds the overrides)."""
        known = {f.name for f in dataclasses.fields(PoolConfig)} - {"pool", "replica_rps"}
        unknown = set(self.scaling) - known
        check(not unknown, f"services.{self.service}.scaling", sorted(unknown),
              f"unknown settings (known: {', '.join(sorted(known))})")
        # a request may wait for a replica half its TTFT target (the rest is its prefill's), unless set
        allowance = {"queue_allowance_s": self.ttft_slo_ms / 2000} if self.ttft_slo_ms is not None else {}
        try:  # typed like the service's own settings: a wrong type is named, not a TypeError deep inside
            return msgspec.convert({"pool": self.pool, "replica_rps": self.replica_rps, **allowance, **self.scaling},
                                   PoolConfig)
        except msgspec.ValidationError as exc:
            raise ValueError(_named(f"services.{self.service}.scaling", exc)) from None

    def replica_rps_for(self, prompt_tokens: float, output_tokens: float) -> float | None:
        """Requests a second one replica serves at these mean lengths, by its token rates (None: not configured).

        >>> ServiceConfig(service="chat", replica_prompt_tps=10_000.0, replica_output_tps=2_000.0).replica_rps_for(
        ...     1_000, 200)
        5.0
        """
        if self.replica_prompt_tps is None or self.replica_output_tps is None:
            return None
        seconds = prompt_tokens / self.replica_prompt_tps + output_tokens / self.replica_output_tps
        return 1 / seconds if seconds > 0 else None

    def tier_rank(self, tier: str) -> int:
        """0 for the highest tier; unknown tiers rank last."""
        return self.tiers.index(tier) if tier in self.tiers else len(self.tiers)


def parse_services(text: str) -> dict[str, ServiceConfig]:
    """Service configs from JSON ``{"chat": {"pool": "gpu-a", ...}, ...}``."""
    try:
        raw = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"services: not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError("services: expected a JSON object of service name -> settings")
    known = {f.name for f in dataclasses.fields(ServiceConfig)} - {"service"}
    out = {}
    for service, fields in raw.items():
        if not isinstance(fields, dict):
            raise ValueError(f"services.{service}: expected an object")
        unknown = set(fields) - known
        if unknown:
            raise ValueError(f"services.{service}: unknown settings {sorted(unknown)}")
        try:  # every field typed (msgspec): a wrong type anywhere is one line naming it
            out[service] = msgspec.convert({**fields, "service": service}, ServiceConfig)
        except msgspec.ValidationError as exc:
            raise ValueError(_named(f"services.{service}", exc)) from None
    return out


def _named(where: str, exc: msgspec.ValidationError) -> str:
    """A validation error with its path under ``where`` (``Expected int, got str - at $.replicas`` becomes
    ``services.chat.replicas: Expected int, got str``); our own checks' messages name the field already."""
    text = str(exc)
    message, _, path = text.rpartition(" - at `$")
    if not message:
        return text
    return f"{where}{path.rstrip('`')}: {message}"
