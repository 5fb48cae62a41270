"""The live load command: `surgegate load`, OpenAI calls through a gateway along a burst."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from surgegate.cli.common import Parsers, json_option, settings_of
from surgegate.errors import SurgegateError

#: the clients' time-to-first-token targets per tier, s (the simulator's allowances)
DEFAULT_TTFT_SLO = "enterprise=1,pro=2,free=4"


def parse_pairs(option: str, raw: str) -> dict[str, float]:
    """``a=1,b=2`` -> {"a": 1.0, "b": 2.0}; an error naming the option otherwise."""
    out = {}
    for part in raw.split(","):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise SurgegateError(f"{option} {raw!r}: expected name=number[,name=number...]") from None
        if not name.strip() or not out[name.strip()] > 0:
            raise SurgegateError(f"{option} {raw!r}: expected name=number with a number > 0")
    return out


def plan_of(args: argparse.Namespace):
    from surgegate.devtools.load import LoadPlan

    mix = {"tiers": parse_pairs("--tiers", args.tiers), "batch_share": args.batch_share,
           "max_tokens": args.max_tokens, "model": args.model}
    try:
        if getattr(args, "trace", None):
            if not Path(args.trace).is_file():
                raise SurgegateError(f"--trace {args.trace}: no such file")
            return LoadPlan.from_trace(Path(args.trace), args.peak, args.duration, **mix)
        return LoadPlan(base_rps=args.base, peak_rps=args.peak, burst_at_s=args.burst_at, ramp_s=args.ramp,
                        hold_s=args.hold, duration_s=args.duration, every_s=args.every, **mix)
    except ValueError as exc:
        raise SurgegateError(f"load plan: {exc}") from None


def cmd_load(args: argparse.Namespace) -> None:
    from surgegate.devtools.live import keys_by_tier
    from surgegate.devtools.load import run

    plan = plan_of(args)
    keys = json_option("--keys", args.keys) if args.keys else keys_by_tier()
    if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
        raise SurgegateError("--keys: expected an object of tier -> API key")
    slo = parse_pairs("--ttft-slo", args.ttft_slo)
    if args.compare:
        return _compare(args, plan, slo)
    window_s = args.window or settings_of(args).window_s
    print(f"surgegate load: {plan.base_rps:g} -> {plan.peak_rps:g} rps at {plan.burst_at_s:g} s for "
          f"{plan.duration_s:g} s through {args.url}", file=sys.stderr, flush=True)
    try:
        report = asyncio.run(run(plan, args.url, keys, window_s=window_s, ttft_slo_s=slo, seed=args.seed,
                                 progress=True))
    except ValueError as exc:
        raise SurgegateError(str(exc)) from None
    text = report.markdown(f"load through {args.url}")
    print(text, flush=True)
    if args.out:
        Path(args.out).write_text(text)


def _compare(args: argparse.Namespace, plan, slo: dict[str, float]) -> None:
    """The plan live twice (enforcing; shadow mode with HPA on utilisation) on a stack of its own, and simulated."""
    import tempfile

    from surgegate.cli.pipeline import demo_services
    from surgegate.devtools import compare
    from surgegate.devtools.embedded import where_missing
    from surgegate.devtools.live import ReplicaSpec, keys_by_tier
    from surgegate.sim.policies import FleetBounds

    settings = settings_of(args)
    window = args.window or settings.window_s
    if window != int(window):
        raise SurgegateError(f"window {window:g} s: --compare needs whole seconds (the simulator's windows)")
    if args.min_replicas < 1 or args.max_replicas < args.min_replicas:
        raise SurgegateError("--min-replicas / --max-replicas: need 1 <= min <= max")
    if args.cold_start < 0:
        raise SurgegateError(f"--cold-start {args.cold_start:g}: must be >= 0")
    services = demo_services(args.replica_rps, args.min_replicas, args.max_replicas, args.cold_start,
                             1000 * min(slo.values()), window)
    settings = settings.replace(window_s=window, services=services)
    spec = ReplicaSpec()
    fleet = FleetBounds(replica_rps=args.replica_rps, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                        cold_start_s=args.cold_start, ttft_slo_ms=1000 * min(slo.values()))
    with where_missing(settings) as settings:
        logs = Path(tempfile.mkdtemp(prefix="surgegate-compare-"))
        print(f"surgegate load --compare: {plan.base_rps:g} -> {plan.peak_rps:g} rps, {plan.duration_s:g} s, twice "
              f"live, then simulated; logs in {logs}", file=sys.stderr, flush=True)
        keys = keys_by_tier()
        enforce, enforced = compare.live(settings, plan, fleet, shadow=False, keys=keys, ttft_slo_s=slo, spec=spec,
                                         log_dir=logs, seed=args.seed)
        shadow, shadowed = compare.live(settings, plan, fleet, shadow=True, keys=keys, ttft_slo_s=slo, spec=spec,
                                        log_dir=logs, seed=args.seed)
    window = int(settings.window_s)
    sim = [compare.simulated(plan, fleet, spec, slo, shadow=s, window_s=window, seed=args.seed) for s in (False, True)]
    text = (compare.report(plan, [enforce, shadow, *sim], window, spec) + "\n"
            + enforced.markdown(enforce.name) + "\n" + shadowed.markdown(shadow.name))
    print(text, flush=True)
    if args.out:
        Path(args.out).write_text(text)


def add_plan_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--base", type=float, default=2.0, help="requests a second before and after the burst")
    cmd.add_argument("--peak", type=float, default=24.0, help="requests a second at the burst's peak")
    cmd.add_argument("--burst-at", type=float, default=30.0, help="seconds from the start to the burst")
    cmd.add_argument("--ramp", type=float, default=10.0, help="seconds the burst takes to reach its peak")
    cmd.add_argument("--hold", type=float, default=60.0, help="seconds the peak lasts")
    cmd.add_argument("--every", type=float, default=0.0, help="a burst again this many seconds after the last "
                                                              "began (0: one)")
    cmd.add_argument("--tiers", default="enterprise=0.2,pro=0.3,free=0.5", help="share of requests per tier")
    cmd.add_argument("--batch-share", type=float, default=0.2, help="share of requests sent as batch work")
    cmd.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every call")
    cmd.add_argument("--model", default="llama-3-8b", help="model named in every call")


def register(p: Parsers) -> None:
    """The live commands and their options."""
    load = p.command("load", "send OpenAI chat calls through a gateway along a burst; per tier SLO, refusals, "
                             "deferrals and goodput as the clients saw them")
    load.add_argument("--url", default="http://127.0.0.1:8080/v1", help="the gateway's OpenAI base URL")
    load.add_argument("--keys", help="JSON object of tier -> API key (default: the demo's keys)")
    add_plan_options(load)
    load.add_argument("--duration", type=float, default=180.0, help="seconds of load")
    load.add_argument("--trace", metavar="FILE",
                      help="follow this trace (timestamp_s,count[,...], gzipped or not) from its start instead of "
                           "the burst, its busiest 10 s scaled to --peak (default: the burst)")
    load.add_argument("--ttft-slo", default=DEFAULT_TTFT_SLO, help="time-to-first-token target per tier, s")
    load.add_argument("--window", type=float, default=0.0,
                      help="seconds per scored window (0: SURGEGATE_WINDOW_S)")
    load.add_argument("--seed", type=int, default=0, help="seed of the arrivals")
    load.add_argument("--out", help="also write the table to this file (default: print it only)")
    load.add_argument("--compare", action="store_true",
                      help="run the plan live twice on a stack of its own (surgegate enforcing; shadow mode with HPA "
                           "on GPU utilisation scaling), beside the simulator's prediction for both")
    load.add_argument("--cold-start", type=float, default=15.0, help="with --compare: a new replica's cold start, s")
    load.add_argument("--min-replicas", type=int, default=2, help="with --compare: the pool's least replicas")
    load.add_argument("--max-replicas", type=int, default=16, help="with --compare: the pool's most replicas")
    load.add_argument("--replica-rps", type=float, default=10.0,
                      help="with --compare: requests a second one replica serves within the SLO (the demo's)")
    load.set_defaults(func=cmd_load)
