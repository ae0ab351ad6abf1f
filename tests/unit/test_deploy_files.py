"""
The production path (deploy/): the compose file starts three nodes on PostgreSQL and NATS with JetStream
behind a load balancer for HTTP and device TCP. Checked with `docker compose config` where Compose is
installed, and by its structure always (images are never built here).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NODES = ("node1", "node2", "node3")
ENV = {"POSTGRES_PASSWORD": "pg-secret", "DEVICECLOUD_ADMIN_PASSWORD": "admin-secret"}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not docker_compose_available(), reason="docker compose is not installed")
def test_docker_compose_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker", "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert 0 == result.returncode, result.stderr


def test_three_nodes_share_postgres_and_nats_after_one_migration() -> None:
    services = compose()["services"]
    assert {"postgres", "nats", "migrate", "haproxy", *NODES} <= set(services)
    assert "--jetstream" in services["nats"]["command"]
    assert ["db", "upgrade"] == services["migrate"]["command"]
    node_ids = set()
    for name in NODES:
        node = services[name]
        env = node["environment"]
        assert env["DEVICECLOUD_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert "@postgres:5432/" in env["DEVICECLOUD_DATABASE_URL"]
        assert "nats://nats:4222" == env["DEVICECLOUD_BUS_URL"]
        assert int(env["DEVICECLOUD_WORKERS"]) >= 2
        node_ids.add(env["DEVICECLOUD_NODE_ID"])
        assert "service_completed_successfully" == node["depends_on"]["migrate"]["condition"]
        assert "data:/data" in node["volumes"]  # one server key and one file store for every node
        assert "deploy/Dockerfile" == node["build"]["dockerfile"]
        assert float(node["stop_grace_period"].rstrip("s")) > float(env["DEVICECLOUD_DRAIN_TIMEOUT"])
    assert len(node_ids) == len(NODES)


def test_the_load_balancer_spreads_http_and_device_tcp_over_every_node() -> None:
    services = compose()["services"]
    assert {"8080:8080", "5683:5683"} == set(services["haproxy"]["ports"])
    proxy_ip = services["haproxy"]["networks"]["cluster"]["ipv4_address"]
    # Clients' and devices' addresses come in the PROXY protocol header, believed from this proxy only.
    assert proxy_ip == services["node1"]["environment"]["DEVICECLOUD_HTTP_PROXY_PROTOCOL"]
    assert proxy_ip == services["node1"]["environment"]["DEVICECLOUD_DEVICE_PROXY_PROTOCOL"]
    config = (DEPLOY / "haproxy.cfg").read_text()
    backends = dict(re.findall(r"^backend (\S+)\n((?:    .*\n)+)", config, flags=re.MULTILINE))
    assert "mode http" in backends["nodes_http"]
    assert "mode tcp" in backends["nodes_devices"]
    for name in NODES:
        assert f"server {name} {name}:8080 send-proxy-v2 check check-send-proxy " in backends["nodes_http"]
        assert (
            f"server {name} {name}:5683 send-proxy-v2 check port 8080 check-send-proxy "
            in backends["nodes_devices"]
        )
    assert re.search(r"^frontend devices\n    bind :5683\n    mode tcp", config, flags=re.MULTILINE)


def test_the_image_runs_serve_with_workers_and_drains_on_sigterm() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["devicecloud"]' in dockerfile
    assert 'CMD ["serve"]' in dockerfile
    assert "DEVICECLOUD_WORKERS=2" in dockerfile
    assert "STOPSIGNAL SIGTERM" in dockerfile
    assert "/readyz" in dockerfile
    assert '".[postgres,nats,redis]"' in dockerfile
