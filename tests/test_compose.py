"""docker-compose.yml and the Dockerfile, read as Compose and Docker would: every piece the README's
walk-through needs is there and agrees with the rest (no Docker engine needed; `scripts/compose-smoke.sh`
runs the stack where one exists)."""

from __future__ import annotations

import base64
import json
import re
import uuid
from pathlib import Path

import yaml

from surgegate.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def _interpolated(value: str) -> str:
    """``${VAR:-default}`` as Compose reads it with VAR unset."""
    return re.sub(r"\$\{\w+(?::-([^}]*))?\}", lambda m: m.group(1) or "", value)


def _env(name: str) -> dict[str, str]:
    return {k: _interpolated(str(v)) for k, v in SERVICES[name].get("environment", {}).items()}


def test_batch_work_the_edge_defers_has_a_drainer_for_its_service():
    edge = SERVICES["edge-1"]["command"]
    drainers = [s for s in SERVICES.values() if s.get("command", [None])[0] == "drain"]
    assert drainers, "an edge answers 202 for batch work: without a drainer it never runs"
    service = edge[edge.index("--service") + 1]
    assert all(d["command"][d["command"].index("--service") + 1] == service for d in drainers)


def test_the_scraped_pool_is_the_pool_of_the_service_the_edge_gates():
    settings = Settings.from_env(_env("worker-1"))
    edge = SERVICES["edge-1"]["command"]
    scrape = SERVICES["scrape-1"]["command"]
    config = settings.service_configs()[edge[edge.index("--service") + 1]]
    assert config.pool == scrape[scrape.index("--pool") + 1]
    assert all(_env(name).get("SURGEGATE_SERVICES") == _env("worker-1")["SURGEGATE_SERVICES"]
               for name in SERVICES if "SURGEGATE_KAFKA" in _env(name))  # every process on the pipeline: one config


def test_every_surgegate_process_gets_settings_it_accepts():
    for name, service in SERVICES.items():
        if service.get("build"):
            Settings.from_env(_env(name))  # raises naming the variable otherwise


def test_the_kafka_cluster_id_is_a_uuid_as_kafka_storage_format_wants_it():
    cluster_id = COMPOSE["x-kafka-env"]["CLUSTER_ID"]
    raw = base64.urlsafe_b64decode(cluster_id + "=" * (-len(cluster_id) % 4))
    assert len(cluster_id) == 22 and len(raw) == 16
    assert uuid.UUID(bytes=raw).int != 0


def test_the_image_installs_the_lock_and_copies_the_whole_tree():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert "COPY . ." in lines
    install = next(line for line in lines if line.startswith("RUN pip install"))
    assert "-c requirements.lock" in install
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
    json.dumps(COMPOSE)  # plain data: no custom YAML tags Compose would refuse


def _mm2() -> dict[str, str]:
    lines = (ROOT / "deploy" / "regions" / "mm2.properties").read_text().splitlines()
    pairs = [ln.partition("=") for ln in lines if ln.strip() and not ln.startswith("#")]
    return {k.strip(): v.strip() for k, _, v in pairs}


def test_two_regions_read_each_other_s_loads_where_mirrormaker_2_copies_them():
    mm2 = _mm2()
    volumes = SERVICES["mirror-maker"]["volumes"]
    assert any(v.startswith("./deploy/regions/mm2.properties:") for v in volumes)
    env_a = {**_env("worker-1"), "SURGEGATE_REGION": "A", "SURGEGATE_PEER_REGION_TOPICS": "B.sg.regions"}
    env_b = _env("worker-b")
    for region, env, other in (("A", env_a, "B"), ("B", env_b, "A")):
        settings = Settings.from_env(env)
        assert settings.region == region
        # the cluster MirrorMaker 2 calls this region is the one its workers use
        assert mm2[f"{region}.bootstrap.servers"] == env["SURGEGATE_KAFKA"]
        # the other region's sg.regions, copied here under its alias (the default replication policy)
        assert mm2[f"{other}->{region}.enabled"] == "true" and re.fullmatch(mm2[f"{other}->{region}.topics"],
                                                                            "sg.regions")
        assert settings.peer_topics == [f"{other}.sg.regions"]
    # each region's gateway spills to the other's
    for edge, other in (("edge-a", "edge-b"), ("edge-b", "edge-a")):
        command = SERVICES[edge]["command"]
        target = command[command.index("--region-upstream") + 1]
        assert target.split("=", 1)[1] == f"http://{other}:8080" and all(
            "regions" in SERVICES[name].get("profiles", []) for name in (edge, "mirror-maker", "kafka-b"))
    assert _env("edge-a")["SURGEGATE_REGION"] == "A"
