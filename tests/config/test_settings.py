import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from ucpush.config import Settings, load_settings

DOC = Path(__file__).parents[2] / "docs" / "configuration.md"


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _keys(ann, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def test_every_key_is_documented():
    text = DOC.read_text()
    sections = re.split(r"^## ", text, flags=re.M)
    for key in _keys(Settings):
        section, _, name = key.rpartition(".")
        where = next(
            (s for s in sections if s.startswith(f"`[{section}]`" if section else "Top level")),
            None,
        )
        assert where is not None and f"| `{name}` |" in where, f"{key} missing from {DOC.name}"


def test_file_then_environment(tmp_path, monkeypatch):
    config = tmp_path / "ucpush.toml"
    config.write_text('[relay]\nport = 9000\naccess_token_ttl = 600\n[log]\nformat = "console"\n')
    monkeypatch.setenv("UCPUSH_RELAY__PORT", "9100")
    settings = load_settings(config)
    assert settings.relay.port == 9100  # environment wins
    assert settings.relay.access_token_ttl == 600
    assert settings.log.format == "console"


def test_bad_values_and_unknown_keys_are_errors(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[relay]\naccess_token_ttl = 5\n")
    with pytest.raises(ValidationError, match="access_token_ttl"):
        load_settings(config)
    config.write_text("[relay]\nprot = 1\n")
    with pytest.raises(ValidationError, match="prot"):
        load_settings(config)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.toml")


def test_embedded_default_store_is_sqlite_in_data_dir(tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert settings.store_url == f"sqlite+aiosqlite:///{tmp_path / 'ucpush.db'}"


@pytest.mark.parametrize("example", sorted((DOC.parents[1] / "deploy").glob("*.toml")))
def test_shipped_example_configs_load(example: Path):
    settings = load_settings(example)
    assert settings.log.format in ("json", "console")
