from __future__ import annotations

from pathlib import Path

import pytest

from cdcstream.core.config import ConfigError, ProcessingProfile, load_config
from cdcstream.core.events import TableId

GOOD = """\
connectors:
  - name: shop-pg
    connection:
      kind: postgres
      host: 127.0.0.1
      database: shop
      user: cdc
      password: env:SHOP_PG_PASSWORD
    tables:
      - name: public.articles
        profile: full
        text_columns: [title, body]
      - name: public.orders
        profile: index_only
      - name: public.audit_log
        profile: archive
  - name: crm-maria
    connection:
      kind: mariadb
      host: 127.0.0.1
      database: crm
      user: cdc
      password: vault:secret/cdc/crm#password
    server_id: 5401
    tables:
      - name: crm.orders
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cdcstream.yaml"
    p.write_text(text)
    return p


def test_good_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    shop, crm = cfg.connectors
    assert [t.profile for t in shop.tables] == [ProcessingProfile.FULL, ProcessingProfile.INDEX_ONLY,
                                               ProcessingProfile.ARCHIVE]
    assert shop.connection.effective_port == 5432 and crm.connection.effective_port == 3306
    # Two sources' "orders" never collide: the connector is part of the identity.
    ids = cfg.topic_map()
    assert ids["shop-pg.public.orders"] == TableId("shop-pg", "shop", "public", "orders")
    assert ids["crm-maria.crm.orders"] == TableId("crm-maria", "crm", "crm", "orders")
    assert "SHOP_PG_PASSWORD" in repr(shop.connection.password)


@pytest.mark.parametrize(
    ("old", "new", "expect"),
    [
        ("profile: index_only", "profile: turbo", r"cdcstream.yaml:14: connectors\[0\] \(shop-pg\)\.tables\[1\] "
                                                   r"\(public.orders\)\.profile: Input should be 'full'"),
        ("        text_columns: [title, body]\n", "", r":10: .*tables\[0\] \(public.articles\): profile 'full' needs "
                                                    "text_columns"),
        ("password: env:SHOP_PG_PASSWORD", "password: hunter2", r":8: .*connection.password: password: literal "
                                                                 "secrets are refused"),
        ("host: 127.0.0.1\n      database: shop", "hots: 127.0.0.1\n      database: shop",
         r":5: connectors\[0\] \(shop-pg\)\.connection\.hots: Extra inputs are not permitted"),
        ("public.audit_log", "audit_log", r"must be schema.table"),
        ("- name: crm.orders", "- name: crm.orders\n      - name: crm.orders", "listed twice"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path: Path, old: str, new: str, expect: str) -> None:
    assert old in GOOD
    with pytest.raises(ConfigError, match=expect):
        load_config(write(tmp_path, GOOD.replace(old, new, 1)))


def test_bad_yaml_names_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cdcstream.yaml:3: invalid YAML"):
        load_config(write(tmp_path, "connectors:\n  - name: x\n   bad: [\n"))


def test_literal_secret_allowed_explicitly(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "allow_literal_secrets: true\n" + GOOD.replace(
        "env:SHOP_PG_PASSWORD", "hunter2")))
    assert "hunter2" not in repr(cfg)


def test_duplicate_prefix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="topic prefix shop-pg is used by two connectors"):
        load_config(write(tmp_path, GOOD.replace("    server_id: 5401\n", "    server_id: 5401\n"
                                                 "    topic_prefix: shop-pg\n")))


def test_the_latency_recipe_in_the_operations_doc_loads(tmp_path: Path) -> None:
    """docs/operations.md, "Latency": its example is a valid config with the settings it names."""
    doc = (Path(__file__).resolve().parents[3] / "docs" / "operations.md").read_text()
    section = doc.split("## Latency: searchable within a second", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = load_config(write(tmp_path, example))
    conn = cfg.connectors[0]
    assert conn.extra == {"poll.interval.ms": "100"}
    assert conn.tables[0].index_settings is not None and conn.tables[0].index_settings.refresh_interval == "200ms"
