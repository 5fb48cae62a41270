"""Spill-over at the edge: which requests go to another region's gateway, as the throttle decision names.

A decision's ``spill`` gives, per other region, the share of each lower tier to send there before this region
admits the rest. Only realtime calls go: batch work waits in this region's deferral lane, whose task ids the
callers poll here. Each (region, tier) keeps a credit that grows by the share with every request of the tier and
sends one request whenever it reaches 1, so exactly that share goes, evenly spread, with no randomness. A
request spilled here from another region (it carries ``X-Surgegate-Spilled-From``) is never sent on; the top
tier never leaves; a decision past its lease, or one in shadow mode, sends nothing (shadow mode counts what it
would have sent).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping

from surgegate.schemas.decisions import ThrottleDecision


class SpillRouter:
    """The regions this edge may spill to (name -> base URL of that region's gateway) and the credits."""

    def __init__(self, region: str, upstreams: Mapping[str, str], top_tier: str) -> None:
        self.region = region
        self.upstreams = {name: url.rstrip("/") for name, url in upstreams.items()}
        self.top_tier = top_tier
        self.credit: dict[tuple[str, str], float] = {}
        self.counts: collections.Counter[str] = collections.Counter()

    def target(self, decision: ThrottleDecision | None, tier: str, *, spilled_in: bool, now_ms: float
               ) -> tuple[str, str] | None:
        """(region, base URL) to send this request of ``tier`` to, or None to admit it here."""
        if decision is None or not decision.spill or not self.upstreams or spilled_in or tier == self.top_tier \
                or now_ms > decision.valid_until:
            return None
        for spill in decision.spill:
            share = spill.share.get(tier, 0.0)
            url = self.upstreams.get(spill.region)
            if share <= 0.0 or url is None:
                continue
            key = (spill.region, tier)
            credit = self.credit.get(key, 0.0) + share
            if credit >= 1.0 - 1e-9:
                self.credit[key] = credit - 1.0
                if decision.mode == "shadow":
                    self.counts[f"spill_shadow.{spill.region}"] += 1
                    return None
                self.counts[f"spilled.{spill.region}"] += 1
                return spill.region, url
            self.credit[key] = credit
        return None
