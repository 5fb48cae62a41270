"""The durable deferral lane: `surgegate edge` processes, `surgegate drain`, the status API, the official client.

Batch requests deferred by one edge survive that edge's SIGKILL: they are on
``sg.deferred`` before the client gets its 202, a drainer runs each once, and
every edge and the status API answer each task's state from Redis. The drainer
starts tasks at the batch rate of the decision in force.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import msgspec
import openai
import pytest
from support import Child, TopicReader, eventually, serve_api
from test_edge_e2e import OPEN, decision, publish

from surgegate.devtools.embedded import free_port
from surgegate.schemas.decisions import TierLimit
from surgegate.schemas.telemetry import MetricEvent
from surgegate.streams.topics import Topics

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Summarise yesterday's tickets."}]
#: the operators' token: it reads every task's state, on the edges and the status API
TOKEN = "lane-operator-token"


def deferring():
    """A decision that defers all batch work: the edges give every batch request a task id (valid from now)."""
    return msgspec.structs.replace(decision(1, OPEN), defer_batch=True)


def _get(url: str, token: str | None = TOKEN) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _views(base: str, ids: list[str]) -> dict[str, dict]:
    """Each task's state as the edge at ``base`` answers it."""
    return {i: _get(f"{base}/_surgegate/tasks/{i}")[1] for i in ids}


def _states(base: str, ids: list[str]) -> set[str | None]:
    return {v.get("state") for v in _views(base, ids).values()}


class Lane:
    """A fake LLM server and the processes in front of it, each a child process."""

    def __init__(self, settings, tmp_path) -> None:
        self.settings, self.tmp_path = settings.replace(api_token=TOKEN), tmp_path
        self.children: list[Child] = []
        port = free_port()
        self.upstream = f"http://127.0.0.1:{port}"
        self.fake = self._child("fake", "fake-llm", "--port", str(port), "--time-scale", "0.01", "--seed", "1",
                                "--output-median", "20")
        self.fake.wait_http(self.upstream + "/v1/models")

    def _child(self, name: str, *command: str) -> Child:
        child = Child(self.settings, self.tmp_path / f"{name}.log", *command).start()
        self.children.append(child)
        return child

    def edge(self, name: str) -> tuple[Child, str]:
        port = free_port()
        child = self._child(name, "edge", "--upstream", self.upstream, "--port", str(port), "--edge-id", name,
                            "--report", "off", "--deferral", "lane")
        base = f"http://127.0.0.1:{port}"
        child.wait_http(base + "/_surgegate/status")
        eventually(lambda: _get(base + "/_surgegate/status")[1].get("version") is not None, 20,
                   f"{name} to apply a decision")
        return child, base

    def drainer(self, name: str = "drain-1", *options: str) -> Child:
        return self._child(name, "drain", "--upstream", self.upstream, "--drainer-id", name, *options)

    def stats(self) -> dict:
        return _get(self.upstream + "/_fake/stats")[1]

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


async def _submit(base: str, n: int, tier_key: str = "pro") -> list[str]:
    """``n`` batch requests through the official client; the task ids of their 202s."""
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    ids = []
    for i in range(n):
        raw = await client.chat.completions.with_raw_response.create(
            model="llama-3-8b", messages=[*MESSAGES, {"role": "user", "content": f"batch {i}"}], max_tokens=20,
            extra_headers={"X-Request-Type": "batch", "X-Tenant": f"t{i % 3}", "X-Tier": tier_key})
        assert raw.status_code == 202, raw.http_response.text
        body = raw.http_response.json()
        assert body["state"] == "queued" and body["status_url"] == f"/_surgegate/tasks/{body['task_id']}"
        ids.append(body["task_id"])
    await client.close()
    return ids


def test_tasks_deferred_by_an_edge_killed_afterwards_all_complete_once_answered_by_any_edge_and_the_api(
        settings, tmp_path):
    publish(settings, deferring())
    lane = Lane(settings, tmp_path)
    try:
        edge_a, base_a = lane.edge("edge-a")
        ids = asyncio.run(_submit(base_a, 24))
        assert _get(f"{base_a}/_surgegate/tasks/{ids[0]}")[1]["state"] == "queued"
        edge_a.kill()  # the edge that accepted every task dies with nothing flushed by hand
        _, base_b = lane.edge("edge-b")
        api = serve_api(lane.settings)
        # the queued state is shared: the other edge and the API know the tasks before any runs
        assert _get(f"{base_b}/_surgegate/tasks/{ids[-1]}") == _get(f"{api}/v1/tasks/{ids[-1]}")
        assert _get(f"{api}/v1/tasks/{ids[-1]}")[1]["state"] == "queued"
        # a task id alone reads nothing: its tenant (at an edge) or the API token must come with it
        assert _get(f"{api}/v1/tasks/{ids[-1]}", token=None)[0] == 404
        assert _get(f"{base_b}/_surgegate/tasks/{ids[-1]}", token=None)[0] == 404
        assert _get(f"{base_b}/_surgegate/tasks/{ids[-1]}", token="a-guess")[0] == 404
        lane.drainer()
        publish(settings, decision(2, OPEN))  # batch work admitted again

        eventually(lambda: _states(base_b, ids) == {"done"}, 90,
                   f"every task done (drainer log: {lane.children[-1].log()[-2000:]})")
        for i in ids:
            at_edge, at_api = _get(f"{base_b}/_surgegate/tasks/{i}"), _get(f"{api}/v1/tasks/{i}")
            assert at_edge == at_api and at_edge[0] == 200
            view = at_edge[1]
            assert view["status"] == 200 and view["attempts"] == 1
            answer = openai.types.chat.ChatCompletion.model_validate_json(view["result"])
            assert answer.choices[0].message.content and answer.usage.completion_tokens >= 1
        assert lane.stats()["completed"] == len(ids)  # none ran twice
        code, missing = _get(f"{api}/v1/tasks/{'0' * 32}")
        assert code == 404 and missing["parameter"] == "task_id"
        assert _get(f"{base_b}/_surgegate/tasks/not-a-task")[0] == 400
    finally:
        lane.stop()


def test_a_deadline_header_is_whole_seconds_within_a_day_or_a_400_naming_it(settings, tmp_path):
    publish(settings, deferring())
    lane = Lane(settings, tmp_path)

    async def go(base: str) -> tuple[list[openai.BadRequestError], dict]:
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        batch = {"X-Request-Type": "batch", "X-Tenant": "t0", "X-Tier": "pro"}
        refused = []
        for bad in ("0", "86401", "-5", "1.5", "soon"):
            with pytest.raises(openai.BadRequestError) as exc:
                await client.chat.completions.create(model="llama-3-8b", messages=MESSAGES, max_tokens=5,
                                                     extra_headers={**batch, "X-Surgegate-Deadline": bad})
            refused.append(exc.value)
        raw = await client.chat.completions.with_raw_response.create(
            model="llama-3-8b", messages=MESSAGES, max_tokens=5,
            extra_headers={**batch, "X-Surgegate-Deadline": "120"})
        await client.close()
        return refused, raw.http_response.json()

    try:
        _, base = lane.edge("edge-a")
        before = time.time() * 1000
        refused, accepted = asyncio.run(go(base))
        for err in refused:
            assert err.status_code == 400 and err.code == "malformed_deadline"
            assert err.param == "X-Surgegate-Deadline"
        assert accepted["state"] == "queued"
        assert before + 120_000 <= accepted["deadline"] <= time.time() * 1000 + 120_000
        assert lane.stats()["completed"] == 0  # nothing refused, nor the deferred task, reached the upstream
    finally:
        lane.stop()


def test_the_drainer_starts_tasks_at_the_batch_rate_of_the_decision_in_force(settings, tmp_path):
    publish(settings, deferring())
    lane = Lane(settings, tmp_path)
    try:
        _, base = lane.edge("edge-a")
        ids = asyncio.run(_submit(base, 30))
        rate, burst = 5.0, 1.0
        slow = {**OPEN, "pro": TierLimit(realtime_rps=1000, batch_rps=rate, burst=burst)}
        publish(settings, decision(2, slow))
        lane.drainer()
        eventually(lambda: _states(base, ids) == {"done"}, 90, "every task done")
        # a done task's state is written as it finishes: its time follows when admission let it go
        finished = sorted(v["updated_at"] for v in _views(base, ids).values())
        span_s = (finished[-1] - finished[0]) / 1000
        assert span_s >= (len(ids) - burst - 1) / rate * 0.9, span_s  # not faster than the decision allows
        per_window: dict[int, int] = {}
        for t in finished:
            per_window[t // 10_000] = per_window.get(t // 10_000, 0) + 1
        assert max(per_window.values()) <= rate * 10 + burst + 1, per_window
        # the backlog went to the pool's windows as the drainer's reports
        reader = TopicReader(settings, Topics(settings.topic_prefix).metrics)
        reports = [m for m in reader.read_to_end() if b'"drainer"' in m.value()]
        reader.close()
        backlog = [msgspec.json.decode(m.value(), type=MetricEvent) for m in reports]
        assert backlog and max(r.queue_depth for r in backlog) > 0, backlog
        assert {r.pool for r in backlog} == {"chat"} and max(r.backlog_required_rps for r in backlog) > 0
    finally:
        lane.stop()


def test_a_task_state_only_moves_forward_and_the_first_answer_stands(redis_url):
    from surgegate.schemas.deferral import TaskView
    from surgegate.streams.tasks import TaskBook

    async def go():
        book = TaskBook(redis_url, prefix="forward-test:")
        base = TaskView(id="a" * 32, state="queued", service="chat", tenant="t", tier="pro", created_at=1,
                        deadline=2**40)
        try:
            running = await book.put(msgspec.structs.replace(base, state="running", attempts=1))
            late_queued = await book.put(base)  # the edge's write arrives after the drainer's
            first = await book.put(msgspec.structs.replace(base, state="done", status=200, result="one", attempts=1))
            second = await book.put(msgspec.structs.replace(base, state="done", status=200, result="two", attempts=2))
            rerun = await book.put(msgspec.structs.replace(base, state="running", attempts=2))
            return running, late_queued, first, second, rerun, await book.get(base.id)
        finally:
            await book.close()

    running, late_queued, first, second, rerun, kept = asyncio.run(go())
    assert running.state == late_queued.state == "running"
    assert first.result == second.result == rerun.result == kept.result == "one"
    assert kept.state == "done" and kept.attempts == 1


def test_a_task_the_upstream_keeps_failing_fails_after_its_tries_with_the_reason(settings, tmp_path):
    publish(settings, deferring())
    lane = Lane(settings, tmp_path)
    try:
        failing = f"http://127.0.0.1:{free_port()}"  # nothing listens there: every try is refused
        _, base = lane.edge("edge-a")
        [task] = asyncio.run(_submit(base, 1))
        lane._child("drain-failing", "drain", "--upstream", failing, "--max-attempts", "2")
        publish(settings, decision(2, OPEN))
        eventually(lambda: _get(f"{base}/_surgegate/tasks/{task}")[1]["state"] == "failed", 60, "the task to fail")
        view = _get(f"{base}/_surgegate/tasks/{task}")[1]
        assert view["attempts"] == 2 and view["status"] is None
        assert view["reason"].startswith("the upstream failed: ") and view["reason"].endswith("(2 tries)")
    finally:
        lane.stop()


def test_a_drainer_killed_mid_drain_loses_no_task_and_changes_no_answer(settings, tmp_path):
    publish(settings, deferring())
    lane = Lane(settings, tmp_path)
    try:
        _, base = lane.edge("edge-a")
        ids = asyncio.run(_submit(base, 40))
        publish(settings, decision(2, {**OPEN, "pro": TierLimit(realtime_rps=1000, batch_rps=4, burst=1)}))
        first = lane.drainer("drain-1", "--concurrency", "2")

        def answers() -> dict[str, dict]:
            return {i: v for i, v in _views(base, ids).items() if v.get("state") == "done"}

        eventually(lambda: len(answers()) >= 10, 60, "ten tasks done by the first drainer")
        first.kill()  # mid-drain: tasks held, some running, offsets not committed past them
        before = answers()
        lane.drainer("drain-2")
        publish(settings, decision(3, OPEN))
        eventually(lambda: len(answers()) == len(ids), 90, "every task done after the handover")
        after = answers()
        assert {i: after[i] for i in before} == before  # an answer, once given, stands
        assert all(v["status"] == 200 for v in after.values())
        assert lane.stats()["completed"] >= len(ids)  # at least once: a task may have run twice upstream
    finally:
        lane.stop()
