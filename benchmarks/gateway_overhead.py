"""What the OpenAI gateway adds on a realistic call: latency, requests/s and CPU per request, beside the direct path.

    python benchmarks/gateway_overhead.py [--requests 1000] [--seconds 5] [--runs 3] [--connections 32]
                                          [--workers 1]

One run starts an embedded broker, ``surgegate fake-llm`` (time scale 1e-4, so
the simulated GPU takes microseconds and the figures are the HTTP path's) and
``surgegate edge`` in front of it with API keys (``--keys``) and telemetry on
(``--report summaries``), each in its own process, and measures the same call
direct and through the gateway, side by side: ``POST /v1/chat/completions``
with a bearer key and a small chat body.

1. unloaded latency, one call at a time: p50 and p99, and what the gateway adds;
2. time to the first chunk of a streamed completion, one at a time;
3. requests/s with ``--connections`` connections for ``--seconds`` (by ``wrk``
   where it is installed, Debian's ``wrk``; else a Python client, which then
   bounds the figure), ``--runs`` times, and the edge processes' CPU time per
   request (from /proc): median and range;
4. with a second fake server at time scale 0.05 (a token every 0.5 ms), how
   long each streamed chunk takes from the server's write to the client (the
   fake server stamps each chunk with CLOCK_MONOTONIC), direct and through the
   gateway: the relay's cost.

Client, gateway and server share the machine: compare the columns of one run,
not absolute figures across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from surgegate.devtools.embedded import EmbeddedBroker, free_port
from surgegate.settings import Settings
from surgegate.streams.topics import create_topics

KEY = "sk-bench-7f3a"
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
BODY = {"model": "llama-3-8b", "messages": [{"role": "user", "content": "How busy is the service right now?"}],
        "max_tokens": 1}
STREAM = {**BODY, "max_tokens": 4, "stream": True}
#: capacity high enough that the gate's fallback never throttles the benchmark
SERVICES = json.dumps({"chat": {"replica_rps": 1_000_000, "replicas": 10}})
WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
"""


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
        async with session.post(url, json=BODY, headers=HEADERS) as r:
            await r.read()
            assert r.status == 200, r.status
        out.append((time.perf_counter() - t) * 1000)
    return out


async def first_chunks(session: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        async with session.post(url, json=STREAM, headers=HEADERS) as r:
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
        async with session.post(url, json=body, headers={**HEADERS, "X-Fake-Stamps": "1"}) as r:
            assert r.status == 200, r.status
            async for line in r.content:
                if line.startswith(b": sent_at="):
                    out.append((time.monotonic() - float(line[10:])) * 1000)
    return out


async def python_load(url: str, seconds: float, connections: int) -> int:
    done = 0
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
        async def loop() -> None:
            nonlocal done
            while time.monotonic() < end:
                async with session.post(url, json=BODY, headers=HEADERS) as r:
                    await r.read()
                done += 1
        await asyncio.gather(*(loop() for _ in range(connections)))
    return done


def load(url: str, seconds: float, connections: int, script: Path) -> int:
    """Requests completed in ``seconds`` with ``connections`` connections (wrk where installed)."""
    if shutil.which("wrk"):
        out = subprocess.run(["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds:g}s", "-s",
                              str(script), url], capture_output=True, text=True, check=True).stdout
        line = next(x for x in out.splitlines() if "requests in" in x)
        non_2xx = next((x for x in out.splitlines() if "Non-2xx" in x), None)
        if non_2xx:
            raise RuntimeError(f"wrk saw errors: {non_2xx}")
        return int(line.split()[0])
    return asyncio.run(python_load(url, seconds, connections))


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def edge_pids(edge: subprocess.Popen) -> list[int]:
    """The edge process, and its worker processes with --workers."""
    pids = [edge.pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == edge.pid:
                pids.append(int(entry))
    return pids


async def measure_unloaded(direct: str, gateway: str, args: argparse.Namespace) -> None:
    async with aiohttp.ClientSession() as session:
        for base in (direct, gateway):  # warm both paths and their connection pools
            await latencies(session, f"{base}/v1/chat/completions", 50)
        rows = []
        for name, fn, n in (("non-streamed", latencies, args.requests),
                            ("first streamed chunk", first_chunks, args.requests // 3)):
            d = await fn(session, direct + "/v1/chat/completions", n)
            g = await fn(session, gateway + "/v1/chat/completions", n)
            rows.append((name, d, g))
    print(f"POST /v1/chat/completions with a key, telemetry on; one call at a time (ms)"
          f"   {'direct':>9} {'gateway':>9} {'added':>9}")
    for name, d, g in rows:
        for q, label in ((0.5, "p50"), (0.99, "p99")):
            print(f"  {name + ' ' + label:72} {pct(d, q):9.3f} {pct(g, q):9.3f} {pct(g, q) - pct(d, q):9.3f}")


def measure_load(stack: Stack, args: argparse.Namespace, script: Path) -> None:
    direct_rps, gateway_rps, cpu_us = [], [], []
    pids = edge_pids(stack.edge)
    for _ in range(args.runs):
        direct_rps.append(load(stack.direct + "/v1/chat/completions", args.seconds, args.connections, script)
                          / args.seconds)
        before = cpu_seconds(pids)
        n = load(stack.gateway + "/v1/chat/completions", args.seconds, args.connections, script)
        cpu_us.append((cpu_seconds(pids) - before) / max(1, n) * 1e6)
        gateway_rps.append(n / args.seconds)

    def show(values: list[float], fmt: str) -> str:
        return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"

    tool = "wrk" if shutil.which("wrk") else "a Python client"
    print(f"{args.connections} connections for {args.seconds:g} s by {tool}, {args.runs} runs: median (range)")
    print(f"  requests/s direct                   {show(direct_rps, '{:,.0f}')}")
    print(f"  requests/s through the gateway      {show(gateway_rps, '{:,.0f}')}"
          f"  ({args.workers} edge process{'es' if args.workers > 1 else ''})")
    print(f"  edge CPU per request                {show(cpu_us, '{:,.0f}')} us")


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

    def __init__(self, env: dict[str, str], tmp: str, time_scale: float, workers: int = 1) -> None:
        self.fake_port, self.edge_port = free_port(), free_port()
        keys = Path(tmp) / "keys.json"
        keys.write_text(json.dumps({KEY: {"tenant": "bench", "tier": "pro"}}))
        self.fake = start(["fake-llm", "--port", str(self.fake_port), "--time-scale", str(time_scale), "--seed", "1"],
                          env, Path(tmp) / f"fake-{time_scale}.log")
        self.edge = start(["edge", "--port", str(self.edge_port), "--upstream", f"http://127.0.0.1:{self.fake_port}",
                           "--keys", str(keys), "--report", "summaries", "--deferral", "memory",
                           "--workers", str(workers)], env, Path(tmp) / f"edge-{time_scale}.log")
        self.direct, self.gateway = f"http://127.0.0.1:{self.fake_port}", f"http://127.0.0.1:{self.edge_port}"
        asyncio.run(wait_up(self.direct + "/v1/models"))
        asyncio.run(wait_up(self.gateway + "/_surgegate/status"))

    def close(self) -> None:
        for proc in (self.edge, self.fake):
            proc.terminate()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="calls per path, one at a time")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each load run")
    parser.add_argument("--runs", type=int, default=3, help="load runs per path")
    parser.add_argument("--connections", type=int, default=32, help="connections in the load runs")
    parser.add_argument("--workers", type=int, default=1, help="edge processes (surgegate edge --workers)")
    args = parser.parse_args()
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(kafka=broker.bootstrap, topic_prefix="bench.", services=SERVICES)
        create_topics(settings)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SURGEGATE_")}, **settings.to_env()}
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_SCRIPT % (json.dumps(BODY), KEY))
        # the HTTP path alone: the simulated GPU takes microseconds
        stack = Stack(env, tmp, 0.0001, args.workers)
        try:
            asyncio.run(measure_unloaded(stack.direct, stack.gateway, args))
            measure_load(stack, args, script)
        finally:
            stack.close()
        # the relay of each streamed chunk, at a token every half millisecond (twenty times a GPU's pace)
        stack = Stack(env, tmp, 0.05)
        try:
            asyncio.run(measure_relay(stack.direct, stack.gateway, max(1, args.requests // 30)))
        finally:
            stack.close()


if __name__ == "__main__":
    main()
