"""The Kubernetes scaler through the official client, against a stand-in of the API that records every call."""

from __future__ import annotations

import msgspec
import pytest
from k8s_standin import KubeStandIn
from kubernetes import client
from test_keda import decision

from surgegate.errors import SurgegateError
from surgegate.gpu.scaler import KubernetesScaler, ScalingSubscriber
from surgegate.schemas.decisions import Overflow
from surgegate.settings import Settings


@pytest.fixture
def kube():
    standin = KubeStandIn({("llm", "gpu-a"): 2, ("llm", "gpu-a-warm"): 0, ("llm", "cloud-b"): 0,
                           ("llm", "owned"): 3}, hpas={"llm": [("owned-hpa", "owned")]})
    yield standin
    standin.close()


def api_client(kube: KubeStandIn) -> client.ApiClient:
    config = client.Configuration()
    config.host = kube.url
    return client.ApiClient(config)


def test_the_whole_decision_is_carried_out_pool_warm_standby_and_overflow(kube):
    scaler = KubernetesScaler("gpu-a", "llm", warm_deployment="gpu-a-warm", overflow_deployment="cloud-b",
                              api_client=api_client(kube))
    subscriber = ScalingSubscriber(Settings(), "gpu-a", scaler)
    assert subscriber.offer(msgspec.json.encode(decision(version=1, desired=6, warm=2)))
    assert kube.patches() == [("gpu-a", 6), ("gpu-a-warm", 2)]  # no overflow asked: cloud-b stays at 0, untouched
    # the pool at its maximum: overflow replicas asked of the secondary pool
    assert subscriber.offer(msgspec.json.encode(decision(version=2, desired=6, warm=2,
                                                         overflow=Overflow(pool="cloud-b", replicas=3))))
    assert kube.patches()[2:] == [("cloud-b", 3)]  # only what changed is written
    assert subscriber.offer(msgspec.json.encode(decision(version=3, desired=4, warm=1)))
    assert kube.patches()[3:] == [("gpu-a", 4), ("gpu-a-warm", 1), ("cloud-b", 0)]
    assert kube.deployments[("llm", "gpu-a")] == 4 and kube.deployments[("llm", "cloud-b")] == 0
    # the same counts again: nothing is called
    calls = len(kube.calls)
    assert not subscriber.offer(msgspec.json.encode(decision(version=4, desired=4, warm=1)))
    assert len(kube.calls) == calls
    assert subscriber.counts["applied"] == 3 and subscriber.counts["scaler_errors"] == 0


def test_a_deployment_an_hpa_scales_is_refused_by_name(kube):
    with pytest.raises(SurgegateError, match=r"owned-hpa.*surgegate keda"):
        KubernetesScaler("owned", "llm", api_client=api_client(kube))
    assert not kube.patches()


def test_a_missing_deployment_is_a_counted_scaler_error_and_the_next_change_retries(kube):
    scaler = KubernetesScaler("nope", "llm", api_client=api_client(kube))
    subscriber = ScalingSubscriber(Settings(), "gpu-a", scaler)
    assert not subscriber.offer(msgspec.json.encode(decision(version=1, desired=5)))
    assert subscriber.counts["scaler_errors"] == 1 and "404" in (subscriber.last_error or "")
