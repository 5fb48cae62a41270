"""The offline commands, which need no broker: simulate, eval-forecast, schemas."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from surgegate.cli.common import Parsers, progress_bar, settings_of
from surgegate.errors import SurgegateError


def cmd_simulate(args: argparse.Namespace) -> None:
    from surgegate.sim.report import POLICIES, compare, plot, report_header, seeds_table, table, verdict
    from surgegate.sim.service import ServiceModel
    from surgegate.sim.workload import SCENARIOS, Workload, bursty_from, from_trace

    for option, value in (("--peak", args.peak), ("--hours", args.hours), ("--cold-start", args.cold_start)):
        if not value > 0:
            raise SurgegateError(f"{option}={value!r}: must be > 0")
    if args.jobs < 1:
        raise SurgegateError(f"--jobs={args.jobs!r}: must be >= 1")
    if args.seeds < 1:
        raise SurgegateError(f"--seeds={args.seeds!r}: must be >= 1")
    try:
        model = ServiceModel(cold_start_s=args.cold_start, engine_priority=args.engine_priority,
                             cache_hit_ratio=args.cache_hit_ratio, deferral=args.deferral)
    except ValueError as exc:
        raise SurgegateError(f"--cache-hit-ratio / --deferral: {exc}") from None
    # each workload, built for a seed: a synthetic one is drawn again, a trace is itself on every seed
    builders: list[Any] = [lambda seed, name=name: SCENARIOS[name](args.peak, seed) for name in args.scenario or ()]
    for t in args.bursty_from or ():
        builders.append(lambda seed, t=t: bursty_from(Path(t), args.peak, seed=seed))
    traces = {t: from_trace(Path(t), args.peak, hours=args.hours) for t in args.trace or ()}
    builders += [lambda seed, w=w: w for w in traces.values()]
    if not builders:
        builders = [lambda seed: SCENARIOS["burst"](args.peak, seed)]
    seeds = range(args.seed, args.seed + args.seeds)
    policies = POLICIES if args.compare else ("surgegate",)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    window_s = int(settings_of(args).window_s)
    sections = []
    with contextlib.ExitStack() as stack:
        mapper: Any = map
        if args.jobs > 1:
            import multiprocessing

            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(args.jobs))
            mapper = pool.imap
        for build in builders:
            verdicts = []
            for seed in seeds:
                w: Workload = build(seed)
                started = time.perf_counter()
                result = compare(w, policies, model=model, seed=seed, window_s=window_s, sweep=args.compare,
                                 mapper=mapper)
                took = time.perf_counter() - started
                runs = len({id(r) for r in result.defaults} | {id(r) for v in result.sweeps.values() for r in v})
                print(f"{w.name} seed {seed}: {runs} runs of {w.seconds / 3600:.1f} simulated hours in {took:.1f} s",
                      file=sys.stderr, flush=True)
                if seed == seeds[0]:  # the whole tables and the plot for the first seed, the verdicts for each
                    section = table(result)
                    if args.compare:
                        png = plot(result, out / f"sim-{w.name}.png")
                        section += f"\n![{w.name}]({png.name})\n"
                    print(section, flush=True)
                if (v := verdict(result)) is not None:
                    verdicts.append(v)
            if len(seeds) > 1 and verdicts:
                section += "\n" + seeds_table(w.name, verdicts)
                print(seeds_table(w.name, verdicts), flush=True)
            sections.append(section)
    if args.compare:
        (out / "simulation.md").write_text(report_header(model, seeds) + "\n".join(sections))
        print(f"report: {out / 'simulation.md'}", file=sys.stderr)


def cmd_eval_forecast(args: argparse.Namespace) -> None:
    from surgegate.forecast.evaluation import evaluate_trace, markdown, plot

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    window_ms = settings_of(args).window_ms
    for trace in args.traces:
        with progress_bar(f"evaluate {Path(trace).name}", 0, "windows") as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            report = evaluate_trace(Path(trace), horizon=args.horizon, coverage=args.coverage,
                                    gaps_as_zeros=args.gaps_as_zeros, window_ms=window_ms, progress=progress)
        section = markdown(report)
        png = plot(report, out / f"forecast-{report.name}.png")
        sections.append(section + f"\n![{report.name}]({png.name})\n")
        print(section, flush=True)
        print(f"plot: {png}", flush=True)
    (out / "forecast-eval.md").write_text("\n".join(sections))
    print(f"report: {out / 'forecast-eval.md'}", file=sys.stderr)


def cmd_schemas(args: argparse.Namespace) -> None:
    from surgegate.schemas.registry import write_json_schemas

    for path in write_json_schemas():
        print(path)


def register(p: Parsers) -> None:
    """The offline commands and their options."""
    sim = p.command("simulate", "run policies against a simulated LLM service (--compare: all, swept, a report)")
    sim.add_argument("--scenario", action="append",
                     choices=["burst", "daily", "flash_crowd", "long_tail_shift", "replica_failures", "token_heavy",
                              "gpu_quota", "slow_cold_start", "bursty", "sparse_bursts"],
                     help="a synthetic workload, repeatable (default: burst unless --trace)")
    sim.add_argument("--bursty-from", action="append", metavar="TRACE",
                     help="a synthetic workload with the burst statistics of a trace file (fitted at run time), "
                          "drawn again for every seed, repeatable (default: none)")
    sim.add_argument("--trace", action="append", help="a trace file, scaled to --peak, repeatable (default: none)")
    sim.add_argument("--compare", action="store_true",
                     help="every policy, at its defaults and swept over its knob, for cost at equal SLO; writes --out")
    sim.add_argument("--peak", type=float, default=120_000.0, help="rps of the busiest 10 s window")
    sim.add_argument("--hours", type=float, default=24.0, help="simulate at most this much of a trace")
    sim.add_argument("--cold-start", type=float, default=15.0, help="seconds until a new replica serves")
    sim.add_argument("--engine-priority", action="store_true",
                     help="replicas schedule by tier (vLLM's priority scheduling), not first come, first served")
    sim.add_argument("--cache-hit-ratio", type=float, default=0.0,
                     help="share of requests the edges' response cache answers (0 <= ratio < 1)")
    sim.add_argument("--deferral", choices=["queue", "lane"], default="queue",
                     help="deferred batch work waits in the edges' in-memory queue, or in the durable deferral lane "
                          "(drained at the admitted batch rate, deadlines kept, backlog reported to scaling)")
    sim.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="simulations run in parallel")
    sim.add_argument("--seed", type=int, default=0, help="first seed of the workloads and the service")
    sim.add_argument("--seeds", type=int, default=3,
                     help="seeds run (from --seed): synthetic workloads drawn again, the service's randomness anew")
    sim.add_argument("--out", default="simulation", help="directory for the markdown report and PNGs")
    sim.set_defaults(func=cmd_simulate)

    ev = p.command("eval-forecast", "score the forecasters on traces (MASE, sMAPE, coverage)")
    ev.add_argument("traces", nargs="+", help="trace files (timestamp_s,count[,...], optionally .gz)")
    ev.add_argument("--horizon", type=int, default=30, help="windows forecast ahead")
    ev.add_argument("--coverage", type=float, default=0.9, help="nominal coverage of the bounds")
    ev.add_argument("--out", default="forecast-eval", help="directory for the markdown report and PNG plots")
    ev.add_argument("--gaps-as-zeros", action="store_true",
                    help="learn and score a rate trace's collection gaps as the zeros the file holds")
    ev.set_defaults(func=cmd_eval_forecast)

    sc = p.command("schemas", "write the JSON Schema files into schemas/")
    sc.add_argument("action", choices=["export"], help="export: rewrite every *.schema.json")
    sc.set_defaults(func=cmd_schemas)
