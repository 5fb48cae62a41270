"""A local stand-in of the Kubernetes API: Deployments' ``scale`` subresource, the HPA list and EndpointSlices,
recording calls.

Enough of the API for the official ``kubernetes`` client to read and patch a
Deployment's replicas (``/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale``)
and to list HorizontalPodAutoscalers (``/apis/autoscaling/v2/namespaces/{ns}/
horizontalpodautoscalers``), and to list a Service's EndpointSlices (``/apis/discovery.k8s.io/v1/namespaces/
{ns}/endpointslices?labelSelector=kubernetes.io/service-name=NAME``). Every call is kept in
:attr:`KubeStandIn.calls`.
Runs in a thread on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SCALE = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)/scale$")
HPAS = re.compile(r"^/apis/autoscaling/v2/namespaces/([^/]+)/horizontalpodautoscalers$")
SLICES = re.compile(r"^/apis/discovery.k8s.io/v1/namespaces/([^/]+)/endpointslices$")


class KubeStandIn:
    """Deployments by (namespace, name) -> replicas; HPAs by namespace -> [(name, deployment)]."""

    def __init__(self, deployments: dict[tuple[str, str], int], hpas: dict[str, list[tuple[str, str]]] | None = None,
                 slices: dict[tuple[str, str], list[dict]] | None = None):
        self.deployments = dict(deployments)
        self.hpas = hpas or {}
        #: (namespace, service) -> its EndpointSlices' ``ports`` and ``endpoints``, as the API writes them
        self.slices = slices or {}
        self.fail = False
        self.calls: list[tuple[str, str, object]] = []
        self._lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: dict) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                standin._handle(self, "GET", None)

            def do_PATCH(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"null")
                standin._handle(self, "PATCH", (self.headers.get("Content-Type", ""), body))

            do_PUT = do_PATCH

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _scale(self, namespace: str, name: str) -> dict:
        replicas = self.deployments[(namespace, name)]
        return {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"replicas": replicas}, "status": {"replicas": replicas}}

    def _handle(self, h, method: str, payload: tuple[str, object] | None) -> None:
        from urllib.parse import parse_qs, urlsplit

        path, query = h.path.split("?")[0], parse_qs(urlsplit(h.path).query)
        with self._lock:
            self.calls.append((method, path, payload[1] if payload else None))
            if self.fail:
                return h._send(503, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 503,
                                     "message": "the API server is away"})
            if m := SLICES.match(path):
                selector = query.get("labelSelector", [""])[0]
                service = selector.removeprefix("kubernetes.io/service-name=")
                items = [{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                          "metadata": {"name": f"{service}-{i}", "namespace": m.group(1),
                                       "labels": {"kubernetes.io/service-name": service}}, **piece}
                         for i, piece in enumerate(self.slices.get((m.group(1), service), []))]
                return h._send(200, {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                                     "metadata": {}, "items": items})
            if m := HPAS.match(path):
                items = [{"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                          "metadata": {"name": hpa, "namespace": m.group(1)},
                          "spec": {"maxReplicas": 10, "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                                                         "name": deployment}}}
                         for hpa, deployment in self.hpas.get(m.group(1), [])]
                return h._send(200, {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscalerList",
                                     "metadata": {}, "items": items})
            m = SCALE.match(path)
            if m is None or (m.group(1), m.group(2)) not in self.deployments:
                return h._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                     "code": 404, "message": f"{path} not found"})
            key = (m.group(1), m.group(2))
            if method != "GET":
                _content_type, body = payload  # type: ignore[misc]
                if isinstance(body, list):  # JSON patch
                    replicas = next(op["value"] for op in body if op["path"] == "/spec/replicas")
                else:  # merge or strategic merge patch, or a whole Scale (PUT)
                    replicas = body["spec"]["replicas"]
                self.deployments[key] = int(replicas)
            return h._send(200, self._scale(*key))

    def patches(self) -> list[tuple[str, int]]:
        """(deployment, replicas) of every write, in order."""
        out = []
        for method, path, body in self.calls:
            if method in ("PATCH", "PUT") and (m := SCALE.match(path)):
                replicas = (next(op["value"] for op in body if op["path"] == "/spec/replicas")
                            if isinstance(body, list) else body["spec"]["replicas"])  # type: ignore[index]
                out.append((m.group(2), replicas))
        return out

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
