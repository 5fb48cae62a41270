"""The ingest consumer on the real broker: a crash between publishing and committing, a flush held up on the broker."""

from __future__ import annotations

import threading
import time
from collections import Counter

import msgspec
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from support import T0, Edge, TopicReader, eventually, start_thread
from test_pipeline_e2e import reference, send, traffic

from surgegate.schemas.aggregates import Watermark, WindowPartial
from surgegate.schemas.deadletter import DeadLetter
from surgegate.streams.ingest import IngestWorker
from surgegate.streams.kafka import consumer_config
from surgegate.streams.topics import Topics
from surgegate.telemetry.merging import ScopeWindows

pytestmark = pytest.mark.e2e


class CrashBeforeCommit(IngestWorker):
    """Dies right after its first partials are acknowledged, before committing them."""

    def _commit(self, consumer, offsets):
        raise RuntimeError("simulated crash between publish and commit")


def merge_published(partials: TopicReader, window_ms: int) -> tuple[dict, Counter[str]]:
    """Every partial on the topic through the merge stage's own state: the windows with requests, and how each
    partial was taken (merged, duplicate, late)."""
    partials.read_to_end()
    states: dict[str, ScopeWindows] = {}
    outcomes: Counter[str] = Counter()
    for m in partials.messages:
        record = m.value()
        if b'"sg.Watermark/1"' in record:
            continue
        p = msgspec.json.decode(record, type=WindowPartial)
        state = states.setdefault(p.scope, ScopeWindows(scope=p.scope, window_ms=window_ms))
        outcomes[state.add(p)] += 1
    merged = {w.identity: w for state in states.values() for w in state.close(T0 + 100 * window_ms, 0)
              if w.traffic.requests}
    return merged, outcomes


def run_until(worker: IngestWorker, done) -> None:
    """Run the worker in a thread until ``done()`` returns, then stop it cleanly."""
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        done()
    finally:
        worker.stop()
        thread.join(60)


def test_partials_republished_after_a_crash_are_recognised_not_double_counted(settings):
    s = settings.replace(idle_after_s=600.0)
    events = traffic("chat", range(3), 700, seed=4)
    send(s, events)
    topics = Topics(s.topic_prefix)
    partials = TopicReader(s, topics.partials)

    crashed = CrashBeforeCommit(s, member_id="ingest-a")
    thread, raised = start_thread(crashed.run)
    partials.poll_until(lambda m: any(b'"sg.WindowPartial/1"' in x.value() for x in m), 60, "first partials")
    thread.join(60)
    assert not thread.is_alive()
    assert [type(e) for e in raised] == [RuntimeError] and "simulated crash" in str(raised[0])

    healthy = IngestWorker(s, member_id="ingest-b")
    run_until(healthy, lambda: partials.poll_until(
        lambda _: healthy.counters["events"] >= len(events) and healthy.counters["partials"] > 0, 60,
        "the second consumer to finish"))
    merged, outcomes = merge_published(partials, s.window_ms)
    assert outcomes["duplicate"] > 0, "the crash should have left partials that were published twice"
    assert outcomes["late"] == 0
    assert merged == reference(events, s)


class CrashMidPublish(IngestWorker):
    """Dies while publishing its first cut: a scope's first window is sent, its next window is not."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        send, partials = self.sender.send, self.topics.partials
        previous: list[bytes] = []

        def send_until_a_scope_is_half_sent(topic, value, key=None, **kw):
            if topic == partials and key is not None and not key.startswith(b"~"):
                if previous and previous[-1] == key:
                    raise RuntimeError("simulated crash in the middle of a scope's partials")
                previous.append(key)
            return send(topic, value, key=key, **kw)

        self.sender.send = send_until_a_scope_is_half_sent


class SlowReader(IngestWorker):
    """Takes a while over each batch, so flushes fall due between batches."""

    batches = 0

    def process(self, messages):
        self.batches += 1
        time.sleep(0.02)
        super().process(messages)


def test_a_cut_left_half_published_is_cut_again_at_the_same_offset_whatever_the_batches(settings, monkeypatch):
    """The member taking over reads the unfinished range over several small batches, with flushes due between
    them: it must still cut where the dead member did, or a window the dead one never sent is taken for one it
    did (the same source, a lower offset) and dropped as a duplicate."""
    events = traffic("chat", range(3), 700, seed=5)
    send(settings, events)
    partials = TopicReader(settings, Topics(settings.topic_prefix).partials)
    crashed = CrashMidPublish(settings.replace(idle_after_s=600.0), member_id="ingest-a")
    with pytest.raises(RuntimeError, match="middle of a scope"):
        crashed.run()

    monkeypatch.setattr("surgegate.streams.ingest.BATCH_SIZE", 40)  # the range comes back in many small batches
    healthy = SlowReader(settings.replace(idle_after_s=600.0, flush_interval_s=0.05), member_id="ingest-b")
    run_until(healthy, lambda: partials.poll_until(
        lambda _: healthy.counters["events"] >= len(events) and healthy.counters["partials"] > 0, 60,
        "the second consumer to finish"))
    assert healthy.batches > 10  # the range came back in many batches, a flush due after every other one
    merged, outcomes = merge_published(partials, settings.window_ms)
    assert outcomes["duplicate"] > 0 and outcomes["late"] == 0
    assert merged == reference(events, settings)


class LosesTheRestOfItsFirstCut(IngestWorker):
    """Its producer gives up a cut's partials after the first one, as a renewed producer without hand-over
    does (the broker away, or replaced): a prefix arrives, the flush fails."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        send, partials = self.sender.send, self.topics.partials
        kept: list[bytes] = []

        def lose_after_the_first(topic, value, key=None, **kw):
            if topic == partials and key is not None and not key.startswith(b"~") and not self.counters["restarts"]:
                kept.append(key)
                if len(kept) > 1:
                    self.sender.failed += 1  # given up, as the renewal counts it
                    return None
            return send(topic, value, key=key, **kw)

        self.sender.send = lose_after_the_first


def test_a_publication_that_fails_is_repeated_by_the_same_member_exactly(settings):
    """The member does not die with a failed flush: it starts again from its last commit, repeats the cut
    and the merge stage takes each window once (the prefix that arrived is recognised as duplicates)."""
    events = traffic("chat", range(3), 700, seed=6)
    send(settings, events)
    partials = TopicReader(settings, Topics(settings.topic_prefix).partials)
    worker = LosesTheRestOfItsFirstCut(settings.replace(idle_after_s=600.0), member_id="ingest-a")
    thread, raised = start_thread(worker.run)
    expected = reference(events, settings)
    try:
        partials.poll_until(lambda _: worker.counters["restarts"] == 1 and worker.counters["partials"] > 0
                            and merge_published(partials, settings.window_ms)[0] == expected, 60,
                            "every window once, after the member started again")
    finally:
        worker.stop()
        thread.join(60)
    assert raised == [] and worker.counters["restarts"] == 1
    merged, outcomes = merge_published(partials, settings.window_ms)
    assert outcomes["duplicate"] >= 1 and outcomes["late"] == 0
    assert merged == expected


def test_an_unreadable_cut_intent_is_dead_lettered_and_the_partition_is_read_without_it(settings):
    """Only an ingest writes ``<source>.cuts``; a record anyone else put there must not stop its partition (a
    worker that raised on it would end at every restart): it is dead-lettered once and the range cut afresh."""
    topics = Topics(settings.topic_prefix)
    cuts = topics.cuts(topics.requests)
    producer = Producer({"bootstrap.servers": settings.kafka, "log_level": 0})
    producer.produce(cuts, b"not json", partition=0)
    producer.produce(cuts, b'{"first": 9, "last": 2}', partition=1)
    assert producer.flush(10) == 0
    events = traffic("chat", range(3), 300, seed=6)
    send(settings, events)
    partials = TopicReader(settings, topics.partials)

    worker = IngestWorker(settings.replace(idle_after_s=600.0), member_id="ingest-a")
    run_until(worker, lambda: partials.poll_until(
        lambda _: worker.counters["events"] >= len(events) and worker.counters["partials"] > 0, 60,
        "the ingest to read every event"))
    merged, outcomes = merge_published(partials, settings.window_ms)
    assert merged == reference(events, settings) and outcomes["duplicate"] == 0

    letters = [msgspec.json.decode(m.value(), type=DeadLetter) for m in TopicReader(settings, topics.deadletter)
               .poll_until(lambda m: len(m) >= 2, 30, "two dead letters")]
    assert sorted((d.source_topic, d.partition, d.offset, d.reason) for d in letters) == [
        (cuts, 0, 0, "invalid_cut_intent"), (cuts, 1, 0, "invalid_cut_intent")]
    assert "first=9, last=2" in next(d.error for d in letters if d.partition == 1)
    assert worker.counters["dead_letter.invalid_cut_intent"] == 2


#: longer than the allowed lateness plus a window: a claim made at its end from the clock would close a window
#: whose events arrived during it and wait unread
HOLD_S = 4.5


class HeldUpInFlush(IngestWorker):
    """Once it has published three cuts, a flush made with every partition read to its end waits HOLD_S before
    it claims its watermark, as one waiting on a slow broker to acknowledge its cut intents does: nothing is read
    meanwhile."""

    held = False

    def _send_watermarks(self) -> None:
        if not self.held and self.counters["cuts"] >= 3 and all(p.caught_up for p in self._work.values()):
            self.held = True
            time.sleep(HOLD_S)
        super()._send_watermarks()


def replay_with_watermarks(partials: TopicReader, lateness_ms: int, window_ms: int) -> Counter[str]:
    """The partials topic through the merge stage as its agent runs it with one ingest member: partition by
    partition, each watermark closing that partition's windows before the records after it are merged. How each
    partial was taken (merged, duplicate, late), and ``events`` merged in time."""
    partials.read_to_end()
    states: dict[tuple[int, str], ScopeWindows] = {}
    outcomes: Counter[str] = Counter()
    for m in partials.messages:
        partition, record = m.partition(), m.value()
        if b'"sg.Watermark/1"' in record:
            mark = msgspec.json.decode(record, type=Watermark)
            for (p, _), state in states.items():
                if p == partition:
                    state.close(mark.watermark, lateness_ms)
            continue
        partial = msgspec.json.decode(record, type=WindowPartial)
        state = states.setdefault((partition, partial.scope), ScopeWindows(scope=partial.scope, window_ms=window_ms))
        outcome = state.add(partial)
        outcomes[outcome] += 1
        if outcome == "merged" and partial.scope == "service=chat":
            outcomes["events"] += partial.events
    return outcomes


def test_a_member_held_up_in_a_flush_claims_no_event_time_it_has_not_read(settings):
    """While a flush waits on the broker the member reads nothing, and the edge's events wait unread. Its claim
    at the end of the wait must not follow the clock (it had not been idle, only away): a window closed on it
    would go out short and its events come late."""
    edge = Edge(settings, rate=100).start()
    partials = TopicReader(settings, Topics(settings.topic_prefix).partials)
    member = HeldUpInFlush(settings, member_id="ingest-a")

    def pause_then_send_through_the_wait() -> None:
        eventually(lambda: member.counters["cuts"] >= 3, 60, "three cuts")
        edge.sending.clear()  # a lull: the member reads every partition to its end, and its next flush is held
        eventually(lambda: member.held, 30, "the held flush")
        edge.sending.set()  # the traffic is back while the member waits on the broker
        eventually(lambda: member.counters["cuts"] >= 8, 60, "cuts after the wait")

    try:
        run_until(member, pause_then_send_through_the_wait)
    finally:
        edge.sending.clear()
        edge.producer.flush(10)
        edge.stop()
    assert member.counters["slow_flushes"] >= 1
    outcomes = replay_with_watermarks(partials, settings.lateness_ms, settings.window_ms)
    assert outcomes["late"] == 0, f"partials published after a watermark that had closed their window: {outcomes}"
    assert outcomes["merged"] > 0 and outcomes["events"] == member.counters["events"] > 0


class RestartedOnAnEmptyBroker(IngestWorker):
    """A member restarted in its process (after a failed flush) that last read an older log of each source."""

    def __init__(self, settings, **kwargs) -> None:
        super().__init__(settings, **kwargs)
        self._log_ids = {self.topics.requests: "the-old-log", self.topics.metrics: "the-old-log"}


def test_the_old_logs_commits_on_a_re_created_topic_are_passed_over_and_the_new_log_read_from_its_start(settings):
    """A broker replaced by an empty one can be given the old log's offsets: a client that reconnects commits
    what it read before the outage once its cut is delivered. A member restarted after that must read the new log
    from its start: from the old offsets it would never read the new log's first records (Kafka resets a fetch
    past the end to the earliest offset, but not one within the new log; the embedded broker resets neither)."""
    s = settings.replace(idle_after_s=600.0)
    events = traffic("chat", range(3), 200, seed=7)
    send(s, events)
    topics = Topics(s.topic_prefix)
    old = Consumer(consumer_config(s, f"{s.topic_prefix}ingest", "the-old-logs-member"))
    partitions = sorted(old.list_topics(topics.requests, timeout=10).topics[topics.requests].partitions)
    old.commit(offsets=[TopicPartition(topics.requests, p, 10_000) for p in partitions], asynchronous=False)
    old.close()
    partials = TopicReader(s, topics.partials)
    member = RestartedOnAnEmptyBroker(s, member_id="ingest-a")
    run_until(member, lambda: eventually(lambda: member.counters["events"] >= len(events), 30, "every event read"))
    assert member.counters["stale_commits"] == len(partitions)
    merged, outcomes = merge_published(partials, s.window_ms)
    assert outcomes["late"] == 0
    assert merged == reference(events, s)
