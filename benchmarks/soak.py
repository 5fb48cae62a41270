"""Memory under a long run: the worker, the embedded broker, an edge and the API, sampled every 30 s.

    python benchmarks/soak.py [--minutes 10] [--trace ../shared/traces/azure_llm_2023_conv.csv.gz]
                              [--speedup 60] [--events] [--http-rps 50]

The stack ``surgegate up`` runs, each part in its own process: the embedded
broker and Redis, ``surgegate worker``, ``surgegate api``, ``surgegate fake-llm``
(time scale 1e-3) and ``surgegate edge`` in front of it. A shared trace is
replayed into sg.requests ``--speedup`` times faster than it was recorded,
over and over, as the edges send it: per-second summaries (``--events`` for one
record per request); and ``--http-rps`` chat completions a second go through the
edge. Every 30 s it prints each process's resident memory (RSS, MiB) and the
requests replayed so far; at the end, each process's growth over the second
half of the run (a bounded process grows by about nothing there) next to the
growth over the first half.
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
import psutil

from surgegate.devtools.embedded import EmbeddedBroker, EmbeddedRedis, free_port
from surgegate.settings import Settings
from surgegate.streams.topics import create_topics

SAMPLE_S = 30.0
BODY = {"model": "llama-3-8b", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
SERVICES = json.dumps({"chat": {"replica_rps": 1_000_000, "replicas": 10}})
DEFAULT_TRACE = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "azure_llm_2023_conv.csv.gz"


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "surgegate.cli", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def rss_mib(pid: int) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.NoSuchProcess:
        return float("nan")


async def http_load(url: str, rps: float, stop: asyncio.Event, counts: dict[str, int]) -> None:
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            started = time.monotonic()
            try:
                async with session.post(url, json=BODY) as resp:
                    await resp.read()
                    counts[str(resp.status)] = counts.get(str(resp.status), 0) + 1
            except aiohttp.ClientError as exc:
                counts[type(exc).__name__] = counts.get(type(exc).__name__, 0) + 1
            await asyncio.sleep(max(0.0, 1 / rps - (time.monotonic() - started)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    p.add_argument("--speedup", type=float, default=60.0)
    p.add_argument("--events", action="store_true", help="one record per request instead of per-second summaries")
    p.add_argument("--http-rps", type=float, default=50.0)
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="surgegate-soak-"))
    broker, redis_server = EmbeddedBroker().start(), EmbeddedRedis().start()
    settings = Settings(kafka=broker.bootstrap, redis=redis_server.url, topic_prefix="soak.", services=SERVICES)
    create_topics(settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURGEGATE_")}
    env.update({"SURGEGATE_KAFKA": settings.kafka, "SURGEGATE_REDIS": settings.redis,
                "SURGEGATE_TOPIC_PREFIX": settings.topic_prefix, "SURGEGATE_SERVICES": SERVICES})
    api_port, fake_port, edge_port = free_port(), free_port(), free_port()
    procs = {
        "worker": start(["worker"], env, work / "worker.log"),
        "api": start(["api", "--port", str(api_port)], env, work / "api.log"),
        "fake-llm": start(["fake-llm", "--port", str(fake_port), "--time-scale", "0.001"], env, work / "fake.log"),
        "edge": start(["edge", "--port", str(edge_port), "--upstream", f"http://127.0.0.1:{fake_port}",
                       "--service", "chat"], env, work / "edge.log"),
    }
    watched = {"worker": procs["worker"].pid, "broker": broker._proc.pid if broker._proc else 0,
               "edge": procs["edge"].pid, "api": procs["api"].pid}
    replay: subprocess.Popen | None = None
    replays = 0
    samples: list[tuple[float, dict[str, float]]] = []
    counts: dict[str, int] = {}

    async def run() -> None:
        nonlocal replay, replays
        await asyncio.sleep(5)  # the edge and the API listen
        stop = asyncio.Event()
        load = asyncio.create_task(http_load(f"http://127.0.0.1:{edge_port}/v1/chat/completions", args.http_rps,
                                             stop, counts))
        began = time.monotonic()
        next_sample = began
        print(f"soak: {args.minutes:g} min; {args.trace.name} at {args.speedup:g}x as "
              f"{'events' if args.events else 'summaries'}; {args.http_rps:g} chat completions/s through the edge")
        print("| min | worker MiB | broker MiB | edge MiB | API MiB | trace replays | HTTP answers |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        while time.monotonic() - began < args.minutes * 60:
            if replay is None or replay.poll() is not None:
                replays += replay is not None
                replay = start(["replay", str(args.trace), "--speedup", str(args.speedup),
                                *([] if args.events else ["--summaries"])], env, work / "replay.log")
            if time.monotonic() >= next_sample:
                rss = {name: rss_mib(pid) for name, pid in watched.items()}
                samples.append((time.monotonic() - began, rss))
                print(f"| {(time.monotonic() - began) / 60:.1f} | {rss['worker']:.0f} | {rss['broker']:.0f} | "
                      f"{rss['edge']:.0f} | {rss['api']:.0f} | {replays} | {sum(counts.values())} |", flush=True)
                next_sample += SAMPLE_S
            await asyncio.sleep(1.0)
        stop.set()
        await load

    try:
        asyncio.run(run())
    finally:
        if replay is not None and replay.poll() is None:
            replay.terminate()
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        broker.stop()
        redis_server.stop()
    if len(samples) >= 4:
        first, mid, last = samples[0][1], samples[len(samples) // 2][1], samples[-1][1]
        print("\ngrowth (MiB): first half / second half")
        for name in watched:
            print(f"  {name}: {mid[name] - first[name]:+.0f} / {last[name] - mid[name]:+.0f}")
    print(f"HTTP answers by status: {counts}")


if __name__ == "__main__":
    main()
