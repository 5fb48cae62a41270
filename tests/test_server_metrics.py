"""An inference server's own metrics, read by name for vLLM, SGLang and TGI, and turned into MetricEvents."""

from __future__ import annotations

import pytest

from surgegate.llm.server_metrics import FLAVOURS, MissingMetric, ServerSample, metric_event, parse_server_metrics

VLLM = """
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="a"} 3
vllm:num_requests_running{model_name="b"} 2
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="a"} 7
vllm:num_requests_waiting{model_name="b"} 1
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="a"} 0.5
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{model_name="a"} 100
vllm:generation_tokens_created{model_name="a"} 1.7e9
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="a"} 1
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="a"} 2
vllm:time_to_first_token_seconds_sum{model_name="a"} 0.6
vllm:time_to_first_token_seconds_count{model_name="a"} 2
"""

SGLANG = """
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m",tp_rank="0"} 10
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m",tp_rank="0"} 4
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="m",tp_rank="0"} 0.91
"""

TGI = """
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 6
# TYPE tgi_queue_size gauge
tgi_queue_size 9
"""


def test_vllm_series_are_summed_or_read_for_one_model_with_the_older_cache_gauge_name():
    every = parse_server_metrics(VLLM, FLAVOURS["vllm"])
    assert (every.running, every.waiting, every.kv_cache_usage) == (5, 8, 0.5)
    assert every.generation_tokens == 100, "the _created stamp is not a count"
    assert (every.ttft_sum_s, every.ttft_count) == (0.6, 2)
    one = parse_server_metrics(VLLM, FLAVOURS["vllm"], model="b")
    assert (one.running, one.waiting, one.kv_cache_usage) == (2, 1, None)


def test_sglang_and_tgi_names_map_to_the_same_sample():
    s = parse_server_metrics(SGLANG, FLAVOURS["sglang"])
    assert (s.running, s.waiting, s.kv_cache_usage) == (10, 4, 0.91)
    t = parse_server_metrics(TGI, FLAVOURS["tgi"])
    assert (t.running, t.waiting, t.kv_cache_usage, t.generation_tokens) == (6, 9, None, None)


def test_a_server_without_the_queue_metrics_is_named_not_guessed():
    with pytest.raises(MissingMetric, match="vllm:num_requests_running"):
        parse_server_metrics(TGI, FLAVOURS["vllm"])


def test_a_metric_event_has_a_token_rate_and_the_busier_of_cache_and_batch_as_utilisation():
    before = ServerSample(running=2, waiting=0, kv_cache_usage=0.2, generation_tokens=1_000)
    now = ServerSample(running=64, waiting=30, kv_cache_usage=0.95, generation_tokens=3_000)
    ev = metric_event(now, before, elapsed_s=2.0, ts=1, pool="gpu-a", worker_id="r1", max_num_seqs=256)
    assert (ev.tokens_per_s, ev.queue_depth, ev.running_requests, ev.kv_cache_use) == (1000.0, 30, 64, 0.95)
    assert ev.utilisation == 0.95
    full_batch = metric_event(ServerSample(running=256, waiting=5, kv_cache_usage=0.3), None, elapsed_s=0,
                              ts=1, pool="gpu-a", worker_id="r1", max_num_seqs=256)
    assert full_batch.utilisation == 1.0 and full_batch.tokens_per_s == 0.0
    restarted = metric_event(ServerSample(running=1, waiting=0, generation_tokens=10), now, elapsed_s=1.0, ts=1,
                             pool="gpu-a", worker_id="r1", max_num_seqs=256)
    assert restarted.tokens_per_s == 0.0, "a counter that went down was reset, not negative"
