"""The `surgegate` command, one module per group of commands: the pipeline (up, worker, topics, replay,
chaos), the status API (api), the edge (edge, drain, ratelimit), the GPU side (scaler, keda, scrape, fake-llm),
live load (load) and the offline tools (simulate, eval-forecast, schemas)."""

from __future__ import annotations

import argparse
import os
import sys

from surgegate.cli import api, edge, gpu, live, offline, pipeline
from surgegate.cli.common import EX_TEMPFAIL, Parsers, configure_logging
from surgegate.errors import SurgegateError
from surgegate.settings import Settings

#: every group of commands, in the order ``--help`` lists them
GROUPS = (pipeline, api, edge, gpu, live, offline)


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default: ``on``/``off`` for flags, and no ``None``: an
    option without a value of its own says in its help where its default comes from."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is argparse.SUPPRESS or "default" in text \
                or not action.option_strings:
            return text
        if isinstance(action.default, bool):
            return f"{text} (default: {'on' if action.default else 'off'})"
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `surgegate` command."""
    parser = argparse.ArgumentParser(prog="surgegate", description=__doc__, formatter_class=_HelpWithDefaults)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log Faust, aiokafka, aiohttp and librdkafka too, and surgegate at debug")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = Parsers(sub, _HelpWithDefaults)
    for group in GROUPS:
        group.register(parsers)
    return parser


def no_created_series() -> None:
    """Counters without their ``_created`` series: a timestamp per counter doubles what Prometheus stores and
    no query of ours reads it (rates come from the counters' resets)."""
    import prometheus_client

    prometheus_client.disable_created_metrics()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `surgegate` console command."""
    args = build_parser().parse_args(argv)
    no_created_series()
    try:
        configure_logging(Settings.from_env(os.environ), args.verbose)
        args.func(args)
    except SurgegateError as exc:
        print(f"surgegate {args.command}: {exc}", file=sys.stderr)
        return EX_TEMPFAIL if exc.retriable else 2
    except (ValueError, OSError) as exc:
        print(f"surgegate {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
