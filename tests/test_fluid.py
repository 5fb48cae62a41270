"""The LLM replica model as a fluid: what it conserves, and that it agrees with the replica it steps."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surgegate.llm.fluid import FluidPool, prefill_s, steady_tpot, sustainable_rps, token_rates, ttft_miss_share
from surgegate.llm.replica import Replica, ReplicaProfile

PROFILE = ReplicaProfile.llama3_8b_a100()

arrivals = st.lists(st.tuples(st.sampled_from(["a", "b"]), st.floats(0, 400), st.floats(50, 20_000),
                              st.floats(1, 2_000)), min_size=1, max_size=40)
fleets = st.lists(st.integers(0, 6), min_size=1, max_size=40)


def drive(pool: FluidPool, arriving, replicas):
    """Each second: its arrivals, then a step on that second's replicas; yields (replicas, second)."""
    for t, (cls, n, prompt, output) in enumerate(arriving):
        pool.submit(cls, n, now=float(t), prompt=prompt, output=output)
        n_replicas = replicas[t % len(replicas)]
        yield n_replicas, pool.step(float(t), n_replicas)


@settings(max_examples=60, deadline=None)
@given(arrivals, fleets)
def test_requests_and_prompt_tokens_are_conserved(arriving, replicas):
    pool = FluidPool(PROFILE, timeout_s=15.0)
    admitted = timed_out = prefill = 0.0
    for _, sec in drive(pool, arriving, replicas):
        admitted += sum(a.n for a in sec.admitted)
        timed_out += sum(sec.timed_out.values())
        prefill += sec.prefilled_tokens
    arrived = sum(n for _, n, _, _ in arriving)
    # every request that arrived is admitted, timed out or still waiting (preempted ones wait again)
    assert admitted + timed_out + pool.waiting - pool.preempted == pytest.approx(arrived, rel=1e-9, abs=1e-6)
    # admitted ones are running or completed
    assert pool.running + pool.totals["completed"] + pool.preempted == pytest.approx(admitted, rel=1e-9, abs=1e-6)
    assert prefill == pytest.approx(pool.totals["prefilled_tokens"])


@settings(max_examples=60, deadline=None)
@given(arrivals, fleets)
def test_the_kv_cache_and_the_batch_are_never_overcommitted(arriving, replicas):
    pool = FluidPool(PROFILE)
    for n_replicas, sec in drive(pool, arriving, replicas):
        held = pool.running * pool.footprint
        assert held <= n_replicas * PROFILE.kv_cache_tokens * (1 + 1e-9) + 1e-6
        assert pool.running <= n_replicas * PROFILE.max_num_seqs * (1 + 1e-9) + 1e-6
        assert 0 <= sec.kv_cache_usage <= 1
        assert 0 <= sec.gpu_busy <= 1


@settings(max_examples=60, deadline=None)
@given(arrivals, fleets)
def test_no_request_gets_its_first_token_before_its_prompt_is_prefilled(arriving, replicas):
    pool = FluidPool(PROFILE)
    for _, sec in drive(pool, arriving, replicas):
        for a in sec.admitted:
            assert a.wait_s >= 0
            ttft = a.wait_s + prefill_s(PROFILE, a.prompt, sec.decode_step_s)
            assert ttft >= a.prompt / PROFILE.prefill_tokens_per_s
            # a target below the prefill time is missed by every request
            assert ttft_miss_share(PROFILE, a.wait_s, a.prompt, sec.decode_step_s, a.wait_s) == 1.0


def test_a_full_cache_preempts_the_newest_sequences_and_queues_them_again():
    pool = FluidPool(PROFILE)
    for t in range(60):
        pool.submit("a", 6.0, now=float(t), prompt=1_000.0, output=200.0)
        pool.step(float(t), 1)
    running = pool.running
    assert running > 20
    # answers ten times as long: the same sequences need a far bigger cache
    pool.run_output = 40_000.0
    sec = pool.step(60.0, 1)
    assert sec.preempted > 0 and pool.preempted > 0
    assert pool.running * pool.footprint <= PROFILE.kv_cache_tokens * (1 + 1e-9)
    assert pool.running + pool.preempted == pytest.approx(running - sec.completed, rel=1e-9)


def test_an_overloaded_pool_queues_then_times_out_first_come_first_served():
    pool = FluidPool(PROFILE, timeout_s=5.0)
    timed_out = {}
    for t in range(20):
        pool.submit("a" if t < 10 else "b", 40.0, now=float(t), prompt=1_000.0, output=200.0)
        sec = pool.step(float(t), 1)
        for cls, n in sec.timed_out.items():
            timed_out[cls] = timed_out.get(cls, 0.0) + n
    assert pool.waiting > 0 and timed_out.get("a", 0) > 0
    assert sec.tpot_s is not None and sec.tpot_s > 0.5, "prefill crowds decoding out of the iterations"


def test_priority_scheduling_serves_the_higher_rank_first_whatever_its_arrival():
    pool = FluidPool(PROFILE, rank=lambda c: 0 if c == "top" else 1)
    pool.submit("low", 100.0, now=0.0, prompt=1_000.0, output=200.0)
    pool.submit("top", 5.0, now=0.0, prompt=1_000.0, output=200.0)
    sec = pool.step(0.0, 1)
    got = {a.cls: a.n for a in sec.admitted}
    assert got["top"] == pytest.approx(5.0) and got.get("low", 0.0) < 5.0
    fifo = FluidPool(PROFILE)
    fifo.submit("low", 100.0, now=0.0, prompt=1_000.0, output=200.0)
    fifo.submit("top", 5.0, now=0.0, prompt=1_000.0, output=200.0)
    got = {a.cls: a.n for a in fifo.step(0.0, 1).admitted}
    assert got["top"] / 5.0 == pytest.approx(got["low"] / 100.0), "first come, first served: in proportion"


def test_the_fluid_pool_agrees_with_the_replica_it_steps_in_steady_state():
    # one Replica run iteration by iteration against the fluid, at 60% of the sustainable rate
    rps = 0.6 * sustainable_rps(PROFILE, 1_000, 200, 0.1)
    replica = Replica(PROFILE)
    now, next_arrival, i, tokens = 0.0, 0.0, 0, 0
    while now < 120.0:
        while next_arrival <= now:
            replica.submit(f"r{i}", prompt_tokens=1_000, output_tokens=200, now=next_arrival)
            i += 1
            next_arrival += 1 / rps
        it = replica.step(now)
        now += it.duration_s if it.duration_s > 0 else next_arrival - now
        if now > 60.0:
            tokens += sum(e.tokens for e in it.emitted)
    pool = FluidPool(PROFILE)
    for t in range(120):
        pool.submit("a", rps, now=float(t), prompt=1_000.0, output=200.0)
        sec = pool.step(float(t), 1)
    assert sec.output_tokens == pytest.approx(tokens / 60.0, rel=0.1)
    assert sec.running == pytest.approx(replica.running, rel=0.35)
    assert sec.tpot_s == pytest.approx(steady_tpot(PROFILE, rps, 1_000, 200), rel=0.2)


def test_token_rates_give_the_same_capacity_as_the_steady_state_where_time_binds():
    for prompt, output in ((1_155, 211), (12_000, 340), (2_000, 400)):
        a, b = token_rates(PROFILE, prompt, output, 0.1)
        assert 1 / (prompt / a + output / b) == pytest.approx(sustainable_rps(PROFILE, prompt, output, 0.1), rel=0.01)
    assert steady_tpot(PROFILE, 1e6, 1_000, 200) == math.inf


@pytest.mark.parametrize(("build", "message"), [
    (lambda: FluidPool(PROFILE, timeout_s=0), "timeout_s"),
    (lambda: FluidPool(PROFILE).submit("a", -1, now=0.0, prompt=10, output=10), "n=-1"),
    (lambda: FluidPool(PROFILE).submit("a", 1, now=0.0, prompt=0, output=10), "prompt, output"),
    (lambda: token_rates(PROFILE, 1_000, 200, 0.005), "tpot_target_s"),
])
def test_bad_settings_are_refused_by_name(build, message):
    with pytest.raises(ValueError, match=message):
        build()
