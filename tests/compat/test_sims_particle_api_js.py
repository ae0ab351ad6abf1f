"""
particle-api-js's SIM calls, unchanged, against a running devicecloud (issue 15 section 2): listSIMs with the
product filters and pages, getSIMDataUsage and getFleetDataUsage over usage an operator imported with
``devicecloud sims import-usage``, checkSIM and removeSIM, as the owner and as a stranger.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from tests.compat.conftest import NodeFlow
from tests.support.server import LiveServer

from devicecloud.cli import main

pytestmark = pytest.mark.compat

FIRST = "8934076500002589174"
SECOND = "8934076500002589175"
MINE = "89340765000025891760"
STRANGER = ("sim-stranger@example.com", "stranger password")


@pytest.fixture(scope="module")
def fleet(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """
    A product with two SIMs, a SIM of the account itself, today's usage imported for two of them, and a
    second account.
    """
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert (
            http.post("/v1/users", json={"username": STRANGER[0], "password": STRANGER[1]}).status_code == 200
        )
        login = http.post(
            "/oauth/token",
            data={"grant_type": "password", "username": server.email, "password": server.password},
            auth=("particle", "particle"),
        )
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
        created = http.post("/v1/products", json={"name": "SIM fleet", "platform_id": 13}, headers=auth)
        assert created.status_code == 201, created.text
        slug = created.json()["product"]["slug"]
        imported = http.post(f"/v1/products/{slug}/sims", json={"sims": [FIRST, SECOND]}, headers=auth)
        assert imported.json()["imported"] == [FIRST, SECOND], imported.text
        assert http.put(f"/v1/sims/{MINE}", json={"action": "activate"}, headers=auth).status_code == 200
    today = datetime.now(UTC).date().isoformat()
    csv = tmp_path_factory.mktemp("usage") / "usage.csv"
    csv.write_text(f"iccid,date,mbs_used\n{FIRST},{today},1.5\n{SECOND},{today},0.25\n{MINE},{today},3\n")
    result = CliRunner(env={"DEVICECLOUD_DATA_DIR": str(server.data_dir)}).invoke(
        main, ["sims", "import-usage", str(csv)]
    )
    assert result.exit_code == 0, result.output
    return {"slug": slug, "today": today}


def test_product_sims(node_dir: Path, server: LiveServer, fleet: dict[str, Any]) -> None:
    """listSIMs pages and filters a product's SIMs; the usage calls show the imported figures; removeSIM."""
    out = NodeFlow(node_dir, server, "sims_flow.js")("product", fleet["slug"], FIRST, SECOND)
    assert [s["iccid"] for s in out["list"]["body"]["sims"]] == [FIRST, SECOND]
    assert all(s["status"] == "active" and s["carrier"] == "none" for s in out["list"]["body"]["sims"])
    assert [s["iccid"] for s in out["page"]["body"]["sims"]] == [SECOND]
    assert out["page"]["body"]["meta"]["total_pages"] == 2
    assert [s["iccid"] for s in out["filtered"]["body"]["sims"]] == [SECOND]
    day = {"date": fleet["today"], "mbs_used": 1.5, "mbs_used_cumulative": 1.5}
    assert out["usage"]["body"] == {"iccid": FIRST, "usage_by_day": [day]}
    assert out["fleet"]["body"] == {
        "total_mbs_used": 1.75,
        "total_active_sim_cards": 2,
        "usage_by_day": [{"date": fleet["today"], "mbs_used": 1.75, "mbs_used_cumulative": 1.75}],
    }
    assert (out["remove"]["ok"], out["remove"]["statusCode"]) == (True, 204)
    assert [s["iccid"] for s in out["after"]["body"]["sims"]] == [FIRST]


def test_stranger_then_owner(node_dir: Path, server: LiveServer, fleet: dict[str, Any]) -> None:
    """
    A stranger's checkSIM says the SIM is taken (403) and cannot remove it; the owner's is 204 until removed.
    """
    flow = NodeFlow(node_dir, server, "sims_flow.js")
    flow.command[-2:] = list(STRANGER)
    stranger = flow("stranger", fleet["slug"], MINE)
    assert (stranger["check"]["ok"], stranger["check"]["statusCode"]) == (False, 403)
    assert (stranger["remove"]["ok"], stranger["remove"]["statusCode"]) == (False, 404)
    assert stranger["list"]["statusCode"] == 404

    owner = NodeFlow(node_dir, server, "sims_flow.js")("user", MINE)
    assert [s["iccid"] for s in owner["list"]["body"]["sims"]] == [MINE]
    assert (owner["check"]["ok"], owner["check"]["statusCode"]) == (True, 204)
    day = {"date": fleet["today"], "mbs_used": 3.0, "mbs_used_cumulative": 3.0}
    assert owner["usage"]["body"] == {"iccid": MINE, "usage_by_day": [day]}
    assert (owner["remove"]["ok"], owner["remove"]["statusCode"]) == (True, 204)
    assert (owner["checkAfter"]["ok"], owner["checkAfter"]["statusCode"]) == (False, 404)
