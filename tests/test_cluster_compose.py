"""Static checks of the cluster's compose file and nginx config (no Docker engine here): the services the
cluster needs, the API replicas on Redis and Ray, nginx in front of both, the same pins as the `cluster` extra."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "docker-compose.cluster.yml"
NGINX = ROOT / "docker" / "nginx" / "aiaa-cluster.conf"


def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_the_cluster_has_its_services():
    assert set(services()) == {"redis", "ray-head", "ray-worker", "api-a", "api-b", "lb"}
    assert "--head" in services()["ray-head"]["command"]
    assert "--address=ray-head:6380" in services()["ray-worker"]["command"]


def test_api_replicas_use_redis_and_ray_and_share_the_model_repository():
    for name in ("api-a", "api-b"):
        api = services()[name]
        command = " ".join(api["command"])
        assert "--redis redis://redis:6379/0" in command and "--ray ray-head:6380" in command
        assert "ray start --address=ray-head:6380 --num-cpus=0" in command  # a node without model replicas
        assert "model_repo:/data/model_repo" in api["volumes"]
    for node in ("ray-head", "ray-worker"):  # replicas load the version folders the API names: same path
        assert "model_repo:/data/model_repo" in services()[node]["volumes"]
    assert services()["api-b"]["depends_on"]["api-a"]["condition"] == "service_healthy"


def test_nginx_balances_both_replicas_and_keeps_a_session_on_one():
    conf = NGINX.read_text()
    upstream = re.search(r"upstream aiaa_api \{(.*?)\}", conf, re.S)[1]
    assert "server api-a:5000" in upstream and "server api-b:5000" in upstream
    assert "hash $aiaa_route consistent" in upstream and "$arg_session_id" in conf
    assert "proxy_next_upstream error timeout http_502 http_503 non_idempotent" in conf
    lb = services()["lb"]
    assert any(v.startswith("./nginx/aiaa-cluster.conf:") for v in lb["volumes"])


def test_the_cluster_image_installs_the_cluster_extra_as_pinned():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    extra = setup["options.extras_require"]["cluster"].split()
    inline = services()["api-a"]["build"]["dockerfile_inline"]
    assert extra and all(requirement in inline for requirement in extra)
    constraints = (ROOT / "constraints.txt").read_text().splitlines()
    for requirement in extra:
        name, version = re.sub(r"\[.*\]", "", requirement).split("==")
        assert f"{name}=={version}" in constraints
