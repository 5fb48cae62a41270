"""What an inference server reports on its Prometheus ``/metrics``, read into one sample.

The names follow each server's own published metrics: vLLM's first, SGLang's
and TGI's as mappings (TGI publishes no KV-cache gauge and no TTFT histogram
under these meanings, so those stay unknown for it). Every label set of a
name is summed (tensor-parallel ranks, several models), unless a model name
is given, in which case only its ``model_name`` series count.

A :class:`ServerSample` becomes a MetricEvent with :func:`metric_event`,
using the previous sample for rates. ``utilisation`` has no server metric of
its own; it is taken as the busier of KV-cache use and batch occupancy
(running sequences over ``max_num_seqs``).

>>> text = '''
... # TYPE vllm:num_requests_running gauge
... vllm:num_requests_running{model_name="m"} 12
... # TYPE vllm:num_requests_waiting gauge
... vllm:num_requests_waiting{model_name="m"} 30
... # TYPE vllm:kv_cache_usage_perc gauge
... vllm:kv_cache_usage_perc{model_name="m"} 0.97
... # TYPE vllm:generation_tokens_total counter
... vllm:generation_tokens_total{model_name="m"} 5000
... '''
>>> s = parse_server_metrics(text, FLAVOURS["vllm"])
>>> s.running, s.waiting, s.kv_cache_usage, s.generation_tokens
(12.0, 30.0, 0.97, 5000.0)
"""

from __future__ import annotations

import dataclasses

from prometheus_client.parser import text_string_to_metric_families

from surgegate.schemas.telemetry import MetricEvent


@dataclasses.dataclass(frozen=True)
class MetricNames:
    """One server's names for what a sample holds; alternatives in order of preference (newest first)."""

    running: tuple[str, ...]
    waiting: tuple[str, ...]
    kv_cache_usage: tuple[str, ...] = ()
    #: a counter's family name (without ``_total``)
    generation_tokens: tuple[str, ...] = ()
    #: a histogram's family name
    ttft: tuple[str, ...] = ()


#: The servers surgegate reads, by name.
FLAVOURS: dict[str, MetricNames] = {
    "vllm": MetricNames(running=("vllm:num_requests_running",), waiting=("vllm:num_requests_waiting",),
                        kv_cache_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
                        generation_tokens=("vllm:generation_tokens",), ttft=("vllm:time_to_first_token_seconds",)),
    "sglang": MetricNames(running=("sglang:num_running_reqs",), waiting=("sglang:num_queue_reqs",),
                          kv_cache_usage=("sglang:token_usage",), generation_tokens=("sglang:generation_tokens",),
                          ttft=("sglang:time_to_first_token_seconds",)),
    "tgi": MetricNames(running=("tgi_batch_current_size",), waiting=("tgi_queue_size",)),
}


@dataclasses.dataclass(frozen=True)
class ServerSample:
    """One scrape of a server. A figure the server does not publish is None."""

    running: float
    waiting: float
    kv_cache_usage: float | None = None
    generation_tokens: float | None = None
    ttft_sum_s: float | None = None
    ttft_count: float | None = None


class MissingMetric(ValueError):
    """The scraped text lacks a metric every sample needs; the message names it."""


def parse_server_metrics(text: str, names: MetricNames, *, model: str | None = None) -> ServerSample:
    """The sample in Prometheus exposition ``text``; :class:`MissingMetric` if running or waiting is absent."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if model is not None and sample.labels.get("model_name", model) != model:
                continue
            if sample.name.endswith("_created") or (family.type == "histogram"
                                                    and not sample.name.endswith(("_sum", "_count"))):
                continue  # creation stamps and bucket counts are not figures of the sample
            key = family.name + sample.name[len(family.name):] if family.type == "histogram" else family.name
            totals[key] = totals.get(key, 0.0) + sample.value

    def first(options: tuple[str, ...], suffix: str = "") -> float | None:
        for name in options:
            if name + suffix in totals:
                return totals[name + suffix]
        return None

    running, waiting = first(names.running), first(names.waiting)
    if running is None or waiting is None:
        missing = names.running[0] if running is None else names.waiting[0]
        raise MissingMetric(f"{missing}: not in the scraped metrics")
    return ServerSample(running=running, waiting=waiting, kv_cache_usage=first(names.kv_cache_usage),
                        generation_tokens=first(names.generation_tokens), ttft_sum_s=first(names.ttft, "_sum"),
                        ttft_count=first(names.ttft, "_count"))


def metric_event(sample: ServerSample, previous: ServerSample | None, *, elapsed_s: float, ts: int, pool: str,
                 worker_id: str, max_num_seqs: int) -> MetricEvent:
    """The MetricEvent of one replica from two consecutive samples ``elapsed_s`` apart."""
    tokens_per_s = 0.0
    if previous is not None and elapsed_s > 0 and sample.generation_tokens is not None \
            and previous.generation_tokens is not None:
        # a counter that went down was reset (the server restarted): no rate for this interval
        tokens_per_s = max(0.0, sample.generation_tokens - previous.generation_tokens) / elapsed_s
    kv = min(1.0, max(0.0, sample.kv_cache_usage or 0.0))
    occupancy = min(1.0, sample.running / max_num_seqs) if max_num_seqs > 0 else 0.0
    return MetricEvent(ts=ts, pool=pool, worker_id=worker_id, utilisation=round(max(kv, occupancy), 6),
                       queue_depth=round(sample.waiting), running_requests=round(sample.running),
                       kv_cache_use=round(kv, 6), tokens_per_s=round(tokens_per_s, 3))
