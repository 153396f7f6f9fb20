"""``ucpush cluster``: groups, pools and status, with bad input refused in one line."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from tests.cluster.conftest import REDIS_URL
from ucpush.cli.main import app
from ucpush.cluster.service import Member


@pytest.fixture
def config(tmp_path: Path, key_prefix: str) -> Path:
    path = tmp_path / "ucpush.toml"
    path.write_text(
        f'data_dir = "{tmp_path}"\n[cluster]\n'
        f'redis_url = "{REDIS_URL}"\nkey_prefix = "{key_prefix}"\n'
    )
    return path


def cli(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["--config", str(config), "cluster", *args])
    return result.exit_code, result.output


def test_groups_and_pools(config: Path) -> None:
    assert cli(config, "group", "add", "west", "a", "b", "c") == (0, "group west: a > b > c\n")
    code, out = cli(config, "group", "list")
    assert code == 0 and "west" in out and "a" in out
    code, out = cli(config, "group", "add", "west", "x")
    assert code == 1 and "error" in out
    code, out = cli(config, "group", "add", "big", "a", "b", "c", "d")
    assert code == 1 and "1 to 3 nodes" in out
    assert cli(config, "pool", "add", "phones", "--group", "west")[0] == 0
    code, out = cli(config, "pool", "add", "lab", "--group", "nowhere")
    assert code == 1 and "node group" in out
    assert cli(config, "pool", "assign", "phones", "alice", "bob") == (
        0,
        "2 user(s) in pool phones\n",
    )
    code, out = cli(config, "pool", "list")
    assert "phones" in out and "west" in out


def test_status_shows_live_nodes_and_active_node(config: Path, key_prefix: str) -> None:
    assert cli(config, "group", "add", "g", "a", "b")[0] == 0
    code, out = cli(config, "status", "--json")
    assert code == 0
    assert json.loads(out) == {"live": {}, "groups": {"g": {"nodes": ["a", "b"], "active": None}}}
    # b's heartbeat, as ClusterService writes it.
    client = redis.Redis.from_url(REDIS_URL)
    try:
        member = Member("b", "sip:b.example", "ws://b.example:9560/")
        client.set(f"{key_prefix}:node:b", json.dumps(asdict(member)), px=5000)
        code, out = cli(config, "status", "--json")
        status = json.loads(out)
        assert status["live"] == {"b": {"sip": "sip:b.example", "lpns": "ws://b.example:9560/"}}
        assert status["groups"]["g"]["active"] == "b"
        code, out = cli(config, "status")
        assert code == 0 and "sip:b.example" in out
    finally:
        client.close()


def test_status_with_redis_unreachable(tmp_path: Path) -> None:
    path = tmp_path / "ucpush.toml"
    path.write_text(f'data_dir = "{tmp_path}"\n[cluster]\nredis_url = "redis://127.0.0.1:1/0"\n')
    code, out = cli(path, "status")
    assert code == 1 and "unreachable" in out
