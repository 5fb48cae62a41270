"""Envoy's rate limit service answered by the edge gate: how requests are read and answered."""

from __future__ import annotations

import json
import time

import msgspec
import pytest
from envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import RateLimitDescriptor
from envoy.service.ratelimit.v3 import rls_pb2
from test_admission import decision

from surgegate.edge.gate import EdgeGate
from surgegate.edge.ratelimit import OK, OVER_LIMIT, BadDescriptor, RateLimitService
from surgegate.settings import Settings

SERVICES = json.dumps({"chat": {"pool": "gpu-a", "replica_rps": 10, "tier_tokens_per_minute": {"pro": 6000}}})


def request(*descriptors: dict[str, str], domain: str = "chat", hits: int = 0) -> rls_pb2.RateLimitRequest:
    return rls_pb2.RateLimitRequest(domain=domain, hits_addend=hits, descriptors=[
        RateLimitDescriptor(entries=[RateLimitDescriptor.Entry(key=k, value=v) for k, v in d.items()])
        for d in descriptors])


@pytest.fixture
def service():
    gate = EdgeGate(Settings(services=SERVICES), "chat", edge_id="rls", report="off", bootstrap_from_redis=False)
    assert gate.offer(msgspec.json.encode(decision(now=time.time(), valid_for_s=600)))
    return RateLimitService(gate)


def test_a_tier_is_admitted_up_to_its_burst_then_over_limit_with_retry_after(service):
    codes = [service.decide(request({"tenant": "acme", "tier": "free"})) for _ in range(10)]
    # free: realtime 2 rps, batch 1 rps, burst 6 split by rate: 4 realtime requests at once
    assert [r.overall_code for r in codes[:5]] == [OK] * 4 + [OVER_LIMIT]
    refused = codes[-1]
    assert refused.overall_code == OVER_LIMIT
    status = refused.statuses[0]
    assert status.code == OVER_LIMIT and status.current_limit.requests_per_unit == 2
    assert status.current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.SECOND
    assert status.current_limit.name == "chat/free/realtime" and status.limit_remaining == 0
    assert status.duration_until_reset.ToNanoseconds() > 0
    headers = {h.key: h.value for h in refused.response_headers_to_add}
    assert int(headers["retry-after"]) >= 1 and headers["x-surgegate-decision-version"] == "1"
    # a higher tier is not touched by the free tier's refusals
    assert service.decide(request({"tenant": "acme", "tier": "pro"})).overall_code == OK


def test_over_limit_when_any_descriptor_is_and_unknown_keys_are_ignored(service):
    for _ in range(4):
        service.decide(request({"tier": "free"}))
    both = service.decide(request({"tier": "pro", "remote_address": "10.0.0.1"}, {"tier": "free"}))
    assert [s.code for s in both.statuses] == [OK, OVER_LIMIT] and both.overall_code == OVER_LIMIT


def test_hits_addend_is_the_token_cost_reserved_from_the_tiers_budget(service):
    # pro: 6,000 tokens a minute; its request bucket has room for all of these
    assert service.decide(request({"tenant": "a", "tier": "pro"}, hits=4000)).overall_code == OK
    refused = service.decide(request({"tenant": "a", "tier": "pro"}, hits=4000))
    assert refused.overall_code == OVER_LIMIT and service.counts["refused_tokens"] == 1
    # a descriptor's own hits_addend wins over the request's
    d = RateLimitDescriptor(entries=[RateLimitDescriptor.Entry(key="tier", value="pro")])
    d.hits_addend.value = 1
    one = rls_pb2.RateLimitRequest(domain="chat", hits_addend=4000, descriptors=[d])
    assert service.decide(one).overall_code == OK


@pytest.mark.parametrize(("req", "field"), [
    (request({"tier": "pro"}, domain="search"), "domain"),
    (request(), "descriptors"),
    (request({"tier": "gold"}), "descriptors[0].tier"),
    (request({"tier": "pro"}, {"request_type": "bulk"}), "descriptors[1].request_type"),
    (request({"tenant": "a b"}), "descriptors[0].tenant"),
])
def test_a_request_that_cannot_be_read_names_the_field(service, req, field):
    with pytest.raises(BadDescriptor, match=field.replace("[", r"\[").replace("]", r"\]")):
        service.decide(req)


def test_shadow_mode_answers_ok_and_counts_what_it_would_refuse():
    gate = EdgeGate(Settings(services=SERVICES), "chat", edge_id="rls", report="off", bootstrap_from_redis=False,
                    shadow=True)
    gate.offer(msgspec.json.encode(decision(now=time.time(), valid_for_s=600)))
    service = RateLimitService(gate)
    assert {service.decide(request({"tier": "free"})).overall_code for _ in range(20)} == {OK}
    assert gate.admission.tally.totals["would_reject"] > 0


def test_batch_work_the_decision_defers_is_over_limit_as_envoy_has_no_queue(service):
    service.gate.offer(msgspec.json.encode(decision(version=2, now=time.time(), valid_for_s=600, defer_batch=True)))
    answer = service.decide(request({"tier": "pro", "request_type": "batch"}))
    assert answer.overall_code == OVER_LIMIT
