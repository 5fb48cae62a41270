"""KEDA's external scaler, serving each pool's newest ScalingDecision.

KEDA asks a scaler for a metric and hands it to the HPA it manages; with the
``AverageValue`` metric type (KEDA's default for external triggers) the HPA
wants ``ceil(metric / target)`` replicas. So the scaler serves the replica
count surgegate decided as the metric, with a target of 1: the HPA lands on
exactly that count, within the ScaledObject's min and max. Nothing patches the
Deployment behind the HPA's back.

A ScaledObject picks what it follows through its trigger's metadata:

- ``pool`` (required): the pool named in the decisions;
- ``replicas``: ``desired`` (the default) for the pool's own Deployment,
  ``warm`` for a standby Deployment that keeps the decision's warm pool loaded,
  ``overflow`` for the secondary pool's Deployment (0 unless the decision asks
  for overflow).

``IsActive`` is true when that count is above zero (KEDA scales from and to
zero on it); ``StreamIsActive`` sends the activity when the stream opens and
whenever it changes. A pool with no decision yet is answered UNAVAILABLE, so
KEDA applies the ScaledObject's ``fallback``; once known, the newest decision is
served until a newer one comes (fail-static: a worker outage freezes the fleet,
it does not shrink it). Bad metadata is INVALID_ARGUMENT naming the key.

:func:`target_from_metadata` is plain logic over a
:class:`~surgegate.gpu.pools.PoolBook`; :class:`KedaScaler` is the gRPC side
(``grpc.aio``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter

from surgegate.gpu import keda_proto as pb
from surgegate.gpu.pools import PoolBook
from surgegate.schemas.decisions import ScalingDecision
from surgegate.schemas.fields import NAME_PATTERN

log = logging.getLogger(__name__)

#: What a ScaledObject can follow (its trigger's ``replicas`` metadata).
REPLICAS = ("desired", "warm", "overflow")
#: How often an open StreamIsActive looks for a change.
STREAM_CHECK_S = 0.25


@dataclasses.dataclass(frozen=True)
class Target:
    """What one ScaledObject follows."""

    pool: str
    replicas: str = "desired"

    @property
    def metric_name(self) -> str:
        """The metric's name as KEDA wants one (lower case, digits and dashes)."""
        return re.sub(r"[^a-z0-9-]+", "-", f"surgegate-{self.pool.lower()}-{self.replicas}-replicas")

    def count(self, decision: ScalingDecision) -> int:
        """The replica count this target asks for under ``decision``."""
        if self.replicas == "warm":
            return decision.warm_pool
        if self.replicas == "overflow":
            return decision.overflow.replicas if decision.overflow is not None else 0
        return decision.desired_replicas


def target_from_metadata(metadata: Mapping[str, str]) -> Target:
    """The Target a trigger's ``scalerMetadata`` names; ValueError naming the key if it cannot."""
    pool = metadata.get("pool", "")
    if not pool:
        raise ValueError("scalerMetadata.pool: required (the pool named in surgegate's scaling decisions)")
    if not re.fullmatch(NAME_PATTERN.strip("^$"), pool):
        raise ValueError(f"scalerMetadata.pool: {pool!r} is not a pool name (1-64 of A-Z a-z 0-9 _ . : -)")
    replicas = metadata.get("replicas", "desired")
    if replicas not in REPLICAS:
        raise ValueError(f"scalerMetadata.replicas: {replicas!r} is not one of {', '.join(REPLICAS)}")
    return Target(pool, replicas)


class KedaScaler:
    """The ``externalscaler.ExternalScaler`` service over a :class:`PoolBook`."""

    def __init__(self, book: PoolBook, registry: CollectorRegistry | None = None) -> None:
        self.book = book
        self.calls = Counter("surgegate_keda_requests", "KEDA external scaler calls by method and status code",
                             ["method", "code"], registry=registry)

    def _target(self, ref: Any) -> Target:
        return target_from_metadata(dict(ref.scalerMetadata))

    async def _decision(self, method: str, ref: Any, context: grpc.aio.ServicerContext
                        ) -> tuple[Target, ScalingDecision]:
        try:
            target = self._target(ref)
        except ValueError as exc:
            self.calls.labels(method, "INVALID_ARGUMENT").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # abort raises; this is not reached
        decision = self.book.get(target.pool)
        if decision is None:
            self.calls.labels(method, "UNAVAILABLE").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"no scaling decision for pool {target.pool!r} yet (KEDA's fallback applies)")
            raise AssertionError("abort raises")
        self.calls.labels(method, "OK").inc()
        return target, decision

    async def is_active(self, ref: Any, context: grpc.aio.ServicerContext) -> Any:
        target, decision = await self._decision("IsActive", ref, context)
        return pb.IsActiveResponse(result=target.count(decision) > 0)

    async def stream_is_active(self, ref: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        target, decision = await self._decision("StreamIsActive", ref, context)
        sent: bool | None = None
        while True:
            decision = self.book.get(target.pool) or decision
            active = target.count(decision) > 0
            if active != sent:
                yield pb.IsActiveResponse(result=active)
                sent = active
            await asyncio.sleep(STREAM_CHECK_S)

    async def get_metric_spec(self, ref: Any, context: grpc.aio.ServicerContext) -> Any:
        target, _ = await self._decision("GetMetricSpec", ref, context)
        return pb.GetMetricSpecResponse(metricSpecs=[
            pb.MetricSpec(metricName=target.metric_name, targetSize=1, targetSizeFloat=1.0)])

    async def get_metrics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        target, decision = await self._decision("GetMetrics", request.scaledObjectRef, context)
        count = target.count(decision)
        return pb.GetMetricsResponse(metricValues=[
            pb.MetricValue(metricName=request.metricName or target.metric_name, metricValue=count,
                           metricValueFloat=float(count))])

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's method handlers, to add to a ``grpc.aio`` server."""
        handlers = {}
        for rpc, fn in (("IsActive", self.is_active), ("StreamIsActive", self.stream_is_active),
                        ("GetMetricSpec", self.get_metric_spec), ("GetMetrics", self.get_metrics)):
            request, response, streaming = pb.METHODS[rpc]
            make = grpc.unary_stream_rpc_method_handler if streaming else grpc.unary_unary_rpc_method_handler
            handlers[rpc] = make(fn, request_deserializer=getattr(pb, request).FromString,
                                 response_serializer=getattr(pb, response).SerializeToString)
        return grpc.method_handlers_generic_handler(pb.SERVICE, handlers)


async def start_server(scaler: KedaScaler, address: str) -> tuple[grpc.aio.Server, int]:
    """A started ``grpc.aio`` server for ``scaler`` on ``address`` (``host:port``, port 0 picks one)."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((scaler.handler(),))
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    return server, port
