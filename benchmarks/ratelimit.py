"""Answer latency of the Envoy rate limit service, beside a gRPC service that answers OK without looking.

    python benchmarks/ratelimit.py [--calls 5000] [--concurrency 1 32]

Both servers run in this process (``grpc.aio``, one event loop, as
``surgegate ratelimit`` runs) on 127.0.0.1; the client is Envoy's generated
stub from xds-protos, in threads. The baseline's handler returns an empty OK
response, so its figures are gRPC's own round trip on this machine; the
difference is what answering from the edge gate costs (reading the
descriptors, the buckets, the response with limits and headers). Each request
is one descriptor (tenant, tier, request type) against a decision whose limits
admit them all, so every answer is OK and both servers do the same work per
call apart from the decision itself. Prints p50 / p99 per call and calls per
second for each concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import msgspec
from envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import RateLimitDescriptor
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from surgegate.edge.gate import EdgeGate
from surgegate.edge.ratelimit import RateLimitService, start_server
from surgegate.schemas.decisions import ThrottleDecision, TierLimit
from surgegate.settings import Settings


class AlwaysOk(rls_pb2_grpc.RateLimitServiceServicer):
    """The baseline: OK without reading the request."""

    async def ShouldRateLimit(self, request, context):
        return rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)


def decision() -> ThrottleDecision:
    now = time.time()
    limit = TierLimit(realtime_rps=1e6, batch_rps=1e6, burst=1e6)
    return ThrottleDecision(service="chat", version=1, issued_at=int(now * 1000), valid_until=int((now + 3600) * 1000),
                            level=0, mode="enforce", defer_batch=False, breaker="closed", forecast_upper_rps=1e6,
                            safe_rps=1e7, reason="benchmark", tenants={},
                            tiers={"enterprise": limit, "pro": limit, "free": limit})


def request(i: int) -> rls_pb2.RateLimitRequest:
    entries = {"tenant": f"t{i % 50}", "tier": ("enterprise", "pro", "free")[i % 3], "request_type": "realtime"}
    return rls_pb2.RateLimitRequest(domain="chat", descriptors=[RateLimitDescriptor(
        entries=[RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries.items()])])


def serve(servicer, ready: threading.Event, holder: dict) -> None:
    async def main() -> None:
        if isinstance(servicer, RateLimitService):
            server, port = await start_server(servicer, "127.0.0.1:0")
        else:
            server = grpc.aio.server()
            rls_pb2_grpc.add_RateLimitServiceServicer_to_server(servicer, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
        holder["port"], holder["loop"], holder["server"] = port, asyncio.get_running_loop(), server
        ready.set()
        await server.wait_for_termination()

    asyncio.run(main())


def measure(port: int, calls: int, concurrency: int) -> tuple[float, float, float]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = rls_pb2_grpc.RateLimitServiceStub(channel)
    requests = [request(i) for i in range(calls)]
    for r in requests[:200]:  # warm up the channel and the server
        stub.ShouldRateLimit(r, timeout=5)
    times: list[float] = []

    def one(r) -> None:
        t0 = time.perf_counter()
        answer = stub.ShouldRateLimit(r, timeout=5)
        times.append(time.perf_counter() - t0)
        assert answer.overall_code == rls_pb2.RateLimitResponse.OK

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, requests))
    elapsed = time.perf_counter() - started
    channel.close()
    q = statistics.quantiles(times, n=100)
    return q[49] * 1e6, q[98] * 1e6, calls / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    args = p.parse_args()
    gate = EdgeGate(Settings(), "chat", edge_id="bench", report="off", bootstrap_from_redis=False)
    gate.offer(msgspec.json.encode(decision()))
    servers = {}
    for name, servicer in (("always OK (gRPC floor)", AlwaysOk()), ("surgegate ratelimit", RateLimitService(gate))):
        ready, holder = threading.Event(), {}
        threading.Thread(target=serve, args=(servicer, ready, holder), daemon=True).start()
        ready.wait(10)
        servers[name] = holder
    print(f"{'server':<24} {'concurrency':>11} {'p50 us':>8} {'p99 us':>8} {'calls/s':>9}")
    for concurrency in args.concurrency:
        for name, holder in servers.items():
            p50, p99, rate = measure(holder["port"], args.calls, concurrency)
            print(f"{name:<24} {concurrency:>11} {p50:>8.0f} {p99:>8.0f} {rate:>9,.0f}")
    in_process = [request(i) for i in range(args.calls)]
    service = RateLimitService(gate)
    t0 = time.perf_counter()
    for r in in_process:
        service.decide(r)
    print(f"decide() alone, in process: {(time.perf_counter() - t0) / args.calls * 1e6:.1f} us a call")


if __name__ == "__main__":
    main()
