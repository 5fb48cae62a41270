"""What the OpenAI gateway adds: latency (non-streamed, and to the first streamed chunk) and requests/s.

    python benchmarks/gateway_overhead.py [--requests 1000] [--streams 300] [--seconds 5] [--concurrency 32]

One run starts an embedded broker, ``surgegate fake-llm`` (time scale 1e-4, so
the simulated GPU takes microseconds and the figures are the HTTP path's) and
``surgegate edge`` in front of it, each in its own process, and measures the
same calls direct and through the gateway, side by side:

1. unloaded latency of ``POST /v1/chat/completions`` (``max_tokens: 1``), one
   call at a time: p50 and p99, and what the gateway adds;
2. time to the first chunk of a streamed completion, one at a time;
3. requests/s of ``GET /v1/models`` with ``--concurrency`` connections for
   ``--seconds``, and the edge process's CPU time per request (from /proc);
4. with a second fake server at time scale 0.05 (a token every 0.5 ms), how
   long each streamed chunk takes from the server's write to the client (the
   fake server stamps each chunk with CLOCK_MONOTONIC, shared by the processes
   of one host), direct and through the gateway: the relay's cost.

The client is Python (aiohttp) in this process, so requests/s is bounded by
the client too: compare the two columns of one run, not absolute figures
across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from surgegate.devtools.embedded import EmbeddedBroker, free_port
from surgegate.settings import Settings
from surgegate.streams.topics import create_topics

BODY = {"model": "llama-3-8b", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1}
STREAM = {**BODY, "max_tokens": 4, "stream": True}
#: capacity high enough that the gate's fallback never throttles the benchmark
SERVICES = json.dumps({"chat": {"replica_rps": 1_000_000, "replicas": 10}})


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "surgegate.cli", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


async def wait_up(url: str, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > end:
                raise RuntimeError(f"{url} did not come up")
            await asyncio.sleep(0.1)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latencies(session: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        async with session.post(url, json=BODY) as r:
            await r.read()
            assert r.status == 200, r.status
        out.append((time.perf_counter() - t) * 1000)
    return out


async def first_chunks(session: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        async with session.post(url, json=STREAM) as r:
            assert r.status == 200, r.status
            await r.content.readany()
            out.append((time.perf_counter() - t) * 1000)
            await r.read()
    return out


async def chunk_delays(session: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    """Per streamed chunk: ms from the server's write (its sent_at stamp) to this client reading it."""
    out = []
    body = {**STREAM, "max_tokens": 40}
    for _ in range(n):
        async with session.post(url, json=body, headers={"X-Fake-Stamps": "1"}) as r:
            assert r.status == 200, r.status
            async for line in r.content:
                if line.startswith(b": sent_at="):
                    out.append((time.monotonic() - float(line[10:])) * 1000)
    return out


async def throughput(url: str, seconds: float, concurrency: int) -> int:
    done = 0
    end = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def loop() -> None:
            nonlocal done
            while time.monotonic() < end:
                async with session.get(url) as r:
                    await r.read()
                done += 1
        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return done


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(direct: str, gateway: str, edge_pid: int, args: argparse.Namespace) -> None:
    async with aiohttp.ClientSession() as session:
        for base in (direct, gateway):  # warm both paths and their connection pools
            await latencies(session, f"{base}/v1/chat/completions", 50)
        rows = []
        for name, fn, path, n in (("non-streamed", latencies, "/v1/chat/completions", args.requests),
                                  ("first streamed chunk", first_chunks, "/v1/chat/completions", args.streams)):
            d = await fn(session, direct + path, n)
            g = await fn(session, gateway + path, n)
            rows.append((name, d, g))
    print(f"unloaded, one call at a time (ms)   {'direct':>16} {'gateway':>16} {'added':>14}")
    for name, d, g in rows:
        for q, label in ((0.5, "p50"), (0.99, "p99")):
            print(f"  {name + ' ' + label:32} {pct(d, q):16.3f} {pct(g, q):16.3f} {pct(g, q) - pct(d, q):14.3f}")
    d_n = await throughput(direct + "/v1/models", args.seconds, args.concurrency)
    before = cpu_seconds(edge_pid)
    g_n = await throughput(gateway + "/v1/models", args.seconds, args.concurrency)
    edge_cpu = cpu_seconds(edge_pid) - before
    print(f"GET /v1/models, {args.concurrency} connections, {args.seconds:g} s")
    print(f"  requests/s                       {d_n / args.seconds:16,.0f} {g_n / args.seconds:16,.0f}")
    print(f"  edge CPU per request             {'':16} {edge_cpu / max(1, g_n) * 1e6:13,.0f} us")


async def measure_relay(direct: str, gateway: str, streams: int) -> None:
    async with aiohttp.ClientSession() as session:
        d = await chunk_delays(session, direct + "/v1/chat/completions", streams)
        g = await chunk_delays(session, gateway + "/v1/chat/completions", streams)
    print(f"streamed chunks at a token every 0.5 ms (ms)  {'direct':>9} {'gateway':>16} {'added':>14}")
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        print(f"  {'server write to client read ' + label:32} {pct(d, q):16.3f} {pct(g, q):16.3f} "
              f"{pct(g, q) - pct(d, q):14.3f}")


class Stack:
    """A fake server at ``time_scale`` and a gateway in front of it, each in its own process."""

    def __init__(self, env: dict[str, str], tmp: str, time_scale: float) -> None:
        self.fake_port, self.edge_port = free_port(), free_port()
        self.fake = start(["fake-llm", "--port", str(self.fake_port), "--time-scale", str(time_scale), "--seed", "1"],
                          env, Path(tmp) / f"fake-{time_scale}.log")
        self.edge = start(["edge", "--port", str(self.edge_port), "--upstream", f"http://127.0.0.1:{self.fake_port}",
                           "--report", "off"], env, Path(tmp) / f"edge-{time_scale}.log")
        self.direct, self.gateway = f"http://127.0.0.1:{self.fake_port}", f"http://127.0.0.1:{self.edge_port}"
        asyncio.run(wait_up(self.direct + "/v1/models"))
        asyncio.run(wait_up(self.gateway + "/v1/models"))

    def close(self) -> None:
        for proc in (self.edge, self.fake):
            proc.terminate()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="non-streamed calls per path")
    parser.add_argument("--streams", type=int, default=300, help="streamed calls per path")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each throughput run")
    parser.add_argument("--concurrency", type=int, default=32, help="connections in the throughput runs")
    args = parser.parse_args()
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(kafka=broker.bootstrap, topic_prefix="bench.", services=SERVICES)
        create_topics(settings)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SURGEGATE_")},
               "SURGEGATE_KAFKA": settings.kafka, "SURGEGATE_TOPIC_PREFIX": settings.topic_prefix,
               "SURGEGATE_SERVICES": SERVICES}
        # the HTTP path alone: the simulated GPU takes microseconds
        stack = Stack(env, tmp, 0.0001)
        try:
            asyncio.run(measure(stack.direct, stack.gateway, stack.edge.pid, args))
        finally:
            stack.close()
        # the relay of each streamed chunk, at a token every half millisecond (twenty times a GPU's pace):
        # when the server bursts tokens faster than that, what is measured is the client's own queueing
        stack = Stack(env, tmp, 0.05)
        try:
            asyncio.run(measure_relay(stack.direct, stack.gateway, max(1, args.streams // 10)))
        finally:
            stack.close()


if __name__ == "__main__":
    main()
