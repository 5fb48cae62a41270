"""Replicas from Kubernetes: a Service's ready endpoints, read from its EndpointSlices.

On Kubernetes the model server's pods are a Service's endpoints. The edge can
balance over them itself (least outstanding requests, ejection,
:mod:`surgegate.edge.balancer`) instead of through the Service's virtual IP,
which spreads connections, not requests. :class:`EndpointSliceWatcher` lists
the Service's EndpointSlices (``discovery.k8s.io/v1``, label
``kubernetes.io/service-name``) with the official ``kubernetes`` client every
``every_s`` and keeps the balancer on the endpoints that are ready and not
terminating. A port is taken by name when ``port_name`` is given, else the
slice's first TCP port. The API server away keeps the replicas known.

Credentials: in-cluster, else the kubeconfig; ``api_client`` overrides both.
The edge's ServiceAccount needs ``list`` on ``endpointslices`` in the
namespace.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from surgegate.edge.balancer import Balancer, Polling
from surgegate.errors import SurgegateError

log = logging.getLogger(__name__)

#: the label Kubernetes puts on every EndpointSlice of a Service
SERVICE_LABEL = "kubernetes.io/service-name"


def parse_service(spec: str) -> tuple[str, str, str | None]:
    """``NAMESPACE/NAME[:PORT_NAME]`` -> (namespace, name, port name or None); SurgegateError naming the option."""
    where, _, port = spec.partition(":")
    namespace, _, name = where.partition("/")
    if not namespace or not name or "/" in name or (":" in spec and not port):
        raise SurgegateError(f"--k8s-service {spec!r}: expected NAMESPACE/NAME[:PORT_NAME]")
    return namespace, name, port or None


class EndpointSliceWatcher(Polling):
    """Keeps a :class:`Balancer` on a Service's ready endpoints (see the module docstring)."""

    def __init__(self, balancer: Balancer, namespace: str, service: str, *, port_name: str | None = None,
                 scheme: str = "http", every_s: float = 1.0, api_client: Any = None) -> None:
        try:
            from kubernetes import client, config
        except ImportError:  # pragma: no cover - it is a dependency
            raise SurgegateError("--k8s-service needs the kubernetes client: pip install kubernetes") from None
        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api_client = client.ApiClient()
        self._discovery = client.DiscoveryV1Api(api_client)
        self.balancer = balancer
        self.namespace, self.service, self.port_name, self.scheme = namespace, service, port_name, scheme
        self.every_s = every_s
        self.counts = {"reads": 0, "read_failures": 0}

    def endpoints(self) -> list[str]:
        """The Service's ready, not terminating endpoints as base URLs (one call to the API server)."""
        slices = self._discovery.list_namespaced_endpoint_slice(
            self.namespace, label_selector=f"{SERVICE_LABEL}={self.service}").items
        urls = []
        for s in slices:
            port = self._port(s.ports or [])
            if port is None:
                continue
            for ep in s.endpoints or []:
                c = ep.conditions
                # the API's rule: a condition left unset means ready, and not terminating
                if c is not None and (c.ready is False or c.terminating is True):
                    continue
                if ep.addresses:
                    host = ep.addresses[0]
                    urls.append(f"{self.scheme}://{f'[{host}]' if ':' in host else host}:{port}")
        return sorted(set(urls))

    def _port(self, ports: list[Any]) -> int | None:
        for p in ports:
            if (p.protocol or "TCP") != "TCP" or p.port is None:
                continue
            if self.port_name is None or p.name == self.port_name:
                return int(p.port)
        return None

    async def refresh(self) -> None:
        """Read the slices once (in a thread: the client blocks); the API server away keeps the replicas known."""
        try:
            urls = await asyncio.get_running_loop().run_in_executor(None, self.endpoints)
        except Exception as exc:
            self.counts["read_failures"] += 1
            if self.counts["read_failures"] == 1:
                log.warning("endpoints of %s/%s could not be read (%s); keeping the replicas known",
                            self.namespace, self.service, exc)
            return
        self.counts["reads"] += 1
        self.balancer.set_endpoints({url: None for url in urls})
