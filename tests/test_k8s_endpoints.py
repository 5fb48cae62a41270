"""The edge's replicas from a Kubernetes Service's EndpointSlices, through the official client, against a
stand-in of the API."""

from __future__ import annotations

import asyncio

import pytest
from k8s_standin import KubeStandIn
from test_kubernetes_scaler import api_client

from surgegate.edge.balancer import Balancer
from surgegate.edge.k8s_endpoints import EndpointSliceWatcher, parse_service
from surgegate.errors import SurgegateError

PORTS = [{"name": "metrics", "port": 9100, "protocol": "TCP"}, {"name": "http", "port": 8000, "protocol": "TCP"}]


def endpoint(ip: str, ready: bool | None = True, terminating: bool | None = None) -> dict:
    conditions = {k: v for k, v in (("ready", ready), ("terminating", terminating)) if v is not None}
    return {"addresses": [ip], "conditions": conditions}


@pytest.fixture
def kube():
    standin = KubeStandIn({}, slices={("llm", "vllm"): [
        {"ports": PORTS, "endpoints": [endpoint("10.0.0.1"), endpoint("10.0.0.2", ready=False),
                                       endpoint("10.0.0.3", ready=None)]},
        {"ports": PORTS, "endpoints": [endpoint("10.0.1.1"), endpoint("10.0.1.2", terminating=True)]},
    ], ("llm", "other"): [{"ports": PORTS, "endpoints": [endpoint("10.9.9.9")]}]})
    yield standin
    standin.close()


def test_the_balancer_follows_the_services_ready_endpoints_on_the_named_port(kube):
    balancer = Balancer()
    watcher = EndpointSliceWatcher(balancer, "llm", "vllm", port_name="http", api_client=api_client(kube))

    async def go():
        await watcher.refresh()
        first = sorted(balancer.endpoints)
        kube.slices[("llm", "vllm")][0]["endpoints"][1]["conditions"]["ready"] = True  # a replica became ready
        kube.slices[("llm", "vllm")][1]["endpoints"] = []  # a slice emptied: its pod went away
        await watcher.refresh()
        return first, sorted(balancer.endpoints)

    first, then = asyncio.run(go())
    # not ready and terminating endpoints left out; an unset condition means ready, as the API defines it;
    # another Service's slices (10.9.9.9) never, as the label selector asks
    assert first == ["http://10.0.0.1:8000", "http://10.0.0.3:8000", "http://10.0.1.1:8000"]
    assert then == ["http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"]


def test_without_a_port_name_the_first_tcp_port_and_the_api_server_away_keeps_the_replicas_known(kube):
    balancer = Balancer()
    watcher = EndpointSliceWatcher(balancer, "llm", "other", api_client=api_client(kube))

    async def go():
        await watcher.refresh()
        kube.fail = True
        await watcher.refresh()

    asyncio.run(go())
    assert list(balancer.endpoints) == ["http://10.9.9.9:9100"]
    assert watcher.counts == {"reads": 1, "read_failures": 1}


@pytest.mark.parametrize("spec", ["vllm", "llm/", "/vllm", "llm/vllm:", "llm/a/b"])
def test_a_malformed_service_is_refused_naming_the_option(spec):
    with pytest.raises(SurgegateError, match="--k8s-service"):
        parse_service(spec)
    assert parse_service("llm/vllm:http") == ("llm", "vllm", "http")
