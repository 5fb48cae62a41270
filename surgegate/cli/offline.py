"""The offline commands, which need no broker: simulate, eval-forecast, plan (from a trace), schemas."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
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
    if args.regions:
        _simulate_regions(args, model, out, window_s)
        if not (args.scenario or args.trace or args.bursty_from):
            return
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


def _regions_run(task: tuple) -> Any:
    from surgegate.sim.regions import SCENARIOS, simulate_regions

    name, spill, peak, seed, model, window_s = task
    return simulate_regions(name, SCENARIOS[name](peak, seed), spill=spill, model=model, seed=seed,
                            window_s=window_s)


def _simulate_regions(args: argparse.Namespace, model: Any, out: Path, window_s: int) -> None:
    """Every two-region scenario without spill-over and with it (the first seed); writes regions.md."""
    from surgegate.sim.regions import SCENARIOS, markdown

    tasks = [(name, spill, args.peak, args.seed, model, window_s) for name in SCENARIOS for spill in (False, True)]
    started = time.perf_counter()
    if args.jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(min(args.jobs, len(tasks))) as pool:
            runs = pool.map(_regions_run, tasks)
    else:
        runs = [_regions_run(t) for t in tasks]
    print(f"two regions: {len(runs)} runs in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    text = markdown(list(zip(runs[::2], runs[1::2])))
    print(text, flush=True)
    (out / "regions.md").write_text(text)
    print(f"report: {out / 'regions.md'}", file=sys.stderr)


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


def cmd_plan(args: argparse.Namespace) -> None:
    from surgegate.plan.capacity import Prices
    from surgegate.plan.history import from_trace_file, from_windows
    from surgegate.plan.report import History, make_plan, markdown, plot

    if not (args.trace or args.service):
        raise SurgegateError("plan: name a history: --trace FILE (repeatable) or --service NAME (its windows)")
    for option, value, ok, need in (("--factor", args.factor, args.factor >= 1, ">= 1"),
                                    ("--percentile", args.percentile, 0.5 <= args.percentile <= 1, "within [0.5, 1]"),
                                    ("--coverage", args.coverage, 0.5 <= args.coverage <= 1, "within [0.5, 1]"),
                                    ("--cold-start", args.cold_start, args.cold_start > 0, "> 0"),
                                    ("--peak", args.peak, args.peak > 0, "> 0"),
                                    ("--since", args.since, args.since > 0, "> 0 hours"),
                                    ("--hours", args.hours, args.hours is None or args.hours > 0, "> 0")):
        if not ok:
            raise SurgegateError(f"{option}={value!r}: must be {need}")
    try:
        prices = Prices(args.price_reserved, args.price_on_demand, args.price_spot, args.spot_interruption)
    except ValueError as exc:
        raise SurgegateError(f"prices: {exc}") from None
    settings = settings_of(args)
    histories: list[History] = []
    for trace in args.trace or ():
        path = Path(trace)
        if not path.is_file():
            raise SurgegateError(f"--trace {trace!r}: no such file")
        histories.append(from_trace_file(path, window_s=settings.window_s, hours=args.hours,
                                         peak_rps=None if args.as_recorded else args.peak))
    for service in args.service or ():
        from surgegate.cli.common import need_kafka
        from surgegate.control.config import ServiceConfig
        from surgegate.streams.history import read_between
        from surgegate.streams.topics import Topics

        settings = need_kafka(settings)
        config = settings.service_configs().get(service) or ServiceConfig(service)
        now = int(time.time() * 1000)
        values = read_between(settings, Topics(settings.topic_prefix).windows, now - int(args.since * 3_600_000), now)
        try:
            histories.append(from_windows(values, service, config, window_s=settings.window_s))
        except ValueError as exc:
            raise SurgegateError(f"--service {service!r}: {exc}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for history in histories:
        plan = make_plan(history, prices=prices, factor=args.factor, percentile=args.percentile,
                         cold_start_s=args.cold_start, coverage=args.coverage)
        png = plot(plan, out / f"plan-{history.name}.png")
        section = markdown(plan) + f"\n![{history.name}]({png.name})\n"
        print(section, flush=True)
        sections.append(section)
    header = ("# Capacity plan\n\n`surgegate plan` (see docs/planning.md): the peak to plan for, the reserved / "
              "on-demand / spot mix of least cost, the warm pool, and the share of each tier shed if the plan is "
              "not bought. Made by:\n\n```\nsurgegate " + " ".join(shlex.quote(a) for a in sys.argv[1:]) + "\n```\n\n")
    (out / "plan.md").write_text(header + "\n".join(sections))
    print(f"report: {out / 'plan.md'}", file=sys.stderr)


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
    sim.add_argument("--regions", action="store_true",
                     help="two regions of the service with spill-over between them and without (time zones, the "
                          "same peaks, a burst in one); writes regions.md in --out")
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

    pl = p.command("plan", "plan capacity from a history: the peak to plan for, the reserved / on-demand / spot "
                           "mix, the warm pool, what is shed if the plan is not bought; writes --out")
    pl.add_argument("--trace", action="append", help="a trace file, scaled to --peak, repeatable (default: none)")
    pl.add_argument("--service", action="append",
                    help="a service whose published windows (the windows topic, --since hours back) are the history; "
                         "needs the broker; repeatable (default: none)")
    pl.add_argument("--since", type=float, default=24.0, help="hours of a service's windows to read")
    pl.add_argument("--peak", type=float, default=120_000.0, help="rps of a trace's busiest 10 s window")
    pl.add_argument("--as-recorded", action="store_true", help="a trace at its recorded rates, not scaled to --peak")
    pl.add_argument("--hours", type=float, default=None, help="hours of a trace to plan from (default: all)")
    pl.add_argument("--factor", type=float, default=2.0, help="the plan's peak over the expected peak (2-3: the rule)")
    pl.add_argument("--percentile", type=float, default=0.99, help="the windows' percentile the expected peak is")
    pl.add_argument("--cold-start", type=float, default=15.0, help="seconds until a new replica serves (warm pool)")
    pl.add_argument("--coverage", type=float, default=0.99,
                    help="share of windows whose rise within one cold start the warm pool covers")
    pl.add_argument("--price-reserved", type=float, default=2.0, help="per replica-hour, paid every hour")
    pl.add_argument("--price-on-demand", type=float, default=4.0, help="per replica-hour, paid when used")
    pl.add_argument("--price-spot", type=float, default=1.4, help="per replica-hour, paid when used")
    pl.add_argument("--spot-interruption", type=float, default=0.05,
                    help="share of spot replica-hours reclaimed (held again to keep the capacity)")
    pl.add_argument("--out", default="plan", help="directory for the markdown report and PNGs")
    p.broker(pl)
    pl.set_defaults(func=cmd_plan)

    sc = p.command("schemas", "write the JSON Schema files into schemas/")
    sc.add_argument("action", choices=["export"], help="export: rewrite every *.schema.json")
    sc.set_defaults(func=cmd_schemas)
