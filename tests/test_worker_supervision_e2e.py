"""A worker whose ingest consumer dies stops, non-zero, saying why: it never looks healthy without it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.e2e


def test_a_worker_whose_ingest_consumer_dies_exits_naming_the_failure(settings, tmp_path):
    script = textwrap.dedent("""
        import sys
        from surgegate.streams.ingest import IngestWorker

        def broken(self):
            raise RuntimeError("injected: the consumer could not go on")

        IngestWorker.run = broken
        from surgegate.cli import main
        sys.exit(main(["worker"]))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURGEGATE_")}
    env.update({"SURGEGATE_KAFKA": settings.kafka, "SURGEGATE_REDIS": settings.redis,
                "SURGEGATE_TOPIC_PREFIX": settings.topic_prefix, "SURGEGATE_PARTITIONS": str(settings.partitions)})
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=90)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "surgegate worker: the ingest consumer stopped: RuntimeError: injected" in result.stderr
