"""The status API's command, and the API run in a thread for `surgegate up`."""

from __future__ import annotations

import argparse
import asyncio
import threading

from surgegate.cli.common import Parsers, need_kafka, need_redis, settings_of
from surgegate.errors import SurgegateError
from surgegate.settings import Settings


def cmd_api(args: argparse.Namespace) -> None:
    from aiohttp import web

    from surgegate.api.app import create_api

    settings = need_kafka(settings_of(args))
    need_redis(settings, "the API (it reads the Redis mirror)")
    print(f"surgegate api on http://{args.host}:{args.port}", flush=True)
    web.run_app(create_api(settings), host=args.host, port=args.port, print=None)


def serve_api_in_thread(settings: Settings, host: str, port: int) -> threading.Thread:
    """Run the status API on its own event loop in a daemon thread (for `surgegate up`); returns once it listens,
    and raises :class:`SurgegateError` naming the address when it cannot (a port taken, say)."""
    from aiohttp import web

    from surgegate.api.app import create_api

    listening = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            runner = web.AppRunner(create_api(settings))
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, host, port).start())
        except BaseException as exc:
            failed.append(exc)
            return
        finally:
            listening.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="api", daemon=True)
    thread.start()
    if not listening.wait(30):
        raise SurgegateError(f"status API on {host}:{port} did not start within 30 s")
    if failed:
        raise SurgegateError(f"status API on {host}:{port}: {failed[0]} (--api-port picks another port, 0 none)")
    return thread


def register(p: Parsers) -> None:
    """The API's command and its options."""
    api = p.command("api", "serve the status API (Redis mirror, decision stream, overrides)")
    p.broker(api)
    p.redis(api, "the state mirror the API reads")
    api.add_argument("--host", default="127.0.0.1", help="address to listen on")
    api.add_argument("--port", type=int, default=8000, help="port to listen on")
    api.set_defaults(func=cmd_api)
