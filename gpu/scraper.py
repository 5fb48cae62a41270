"""`surgegate scrape`: report what an inference server knows about itself, once a second.

A :class:`ServerScraper` reads one replica's Prometheus ``/metrics`` (vLLM,
SGLang or TGI names, see :mod:`surgegate.llm.server_metrics`) and publishes a
MetricEvent for it on ``sg.metrics``: running requests, waiting requests (the
queue depth), KV-cache use, generated tokens per second. The pool's windows
then carry the saturation evidence the policies read.

A scrape that fails (the server is down, answers an error, or lacks the
metrics) publishes nothing: a replica that stops reporting drops out of the
pool's window, as a dead one should. Failures are counted and the first of a
run is logged with its reason.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request

from surgegate.llm.server_metrics import FLAVOURS, MissingMetric, ServerSample, metric_event, parse_server_metrics
from surgegate.schemas.telemetry import MetricEvent
from surgegate.streams.producer import TelemetryProducer

log = logging.getLogger(__name__)

#: A scrape that takes longer than this fails.
SCRAPE_TIMEOUT_S = 2.0


class ServerScraper:
    """Scrapes one replica's ``/metrics`` into MetricEvents for ``pool``."""

    def __init__(self, producer: TelemetryProducer, url: str, *, pool: str, worker_id: str, flavour: str = "vllm",
                 model: str | None = None, max_num_seqs: int = 256, interval_s: float = 1.0) -> None:
        if flavour not in FLAVOURS:
            raise ValueError(f"flavour={flavour!r}: one of {', '.join(sorted(FLAVOURS))}")
        if not interval_s > 0:
            raise ValueError(f"interval_s={interval_s!r}: must be > 0")
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs={max_num_seqs!r}: must be >= 1")
        self.producer = producer
        self.url = url
        self.pool = pool
        self.worker_id = worker_id
        self.names = FLAVOURS[flavour]
        self.model = model
        self.max_num_seqs = max_num_seqs
        self.interval_s = interval_s
        self.counts = {"scrapes": 0, "published": 0, "failures": 0}
        self.last_error: str | None = None
        self._previous: tuple[ServerSample, float] | None = None
        self._stop = threading.Event()

    def scrape_once(self) -> MetricEvent | None:
        """One scrape and, when it worked, its MetricEvent (sent)."""
        self.counts["scrapes"] += 1
        try:
            with urllib.request.urlopen(self.url, timeout=SCRAPE_TIMEOUT_S) as resp:
                text = resp.read().decode("utf-8", "replace")
            sample = parse_server_metrics(text, self.names, model=self.model)
        except (OSError, urllib.error.URLError, MissingMetric, ValueError) as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return None
        now = time.monotonic()
        previous, elapsed = (self._previous[0], now - self._previous[1]) if self._previous else (None, 0.0)
        self._previous = (sample, now)
        event = metric_event(sample, previous, elapsed_s=elapsed, ts=int(time.time() * 1000), pool=self.pool,
                             worker_id=self.worker_id, max_num_seqs=self.max_num_seqs)
        self.producer.send_metric(event)
        self.counts["published"] += 1
        if self.last_error is not None:
            log.info("scrape of %s works again", self.url)
            self.last_error = None
        return event

    def _failed(self, reason: str) -> None:
        self.counts["failures"] += 1
        if self.last_error is None:
            log.warning("scrape of %s failed: %s (logged once until it works again)", self.url, reason)
        self.last_error = reason

    def run(self) -> None:
        """Scrape every ``interval_s`` until :meth:`stop`."""
        while not self._stop.is_set():
            started = time.monotonic()
            self.scrape_once()
            self.producer.poll()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
        self.producer.flush()

    def stop(self) -> None:
        self._stop.set()
