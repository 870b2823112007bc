"""Masking of free text and connector configs (the standing leak check on the real stack is
tests/e2e/test_masking.py)."""

from __future__ import annotations

import pytest

from cdcstream.core.masking import describe, mask_es_reason, mask_text
from cdcstream.core.settings import Settings
from cdcstream.ops.kconnect import mask_config, secret_property


@pytest.mark.parametrize(("raw", "secret"), [
    ("connect to postgres://cdc:hunter2@db:5432/x failed", "hunter2"),
    ("password=hunter2 user=cdc", "hunter2"),
    ("{'database.password': 'hunter2', 'database.user': 'cdc'}", "hunter2"),
    ('{"sasl.jaas.config": "x required username=\\"u\\" password=\\"hunter2\\";"}', "hunter2"),
    ("secret_key=hunter2", "hunter2"),
    ("aws access_key: hunter2", "hunter2"),
    ("Authorization: Bearer hunter2hunter2", "hunter2hunter2"),
])
def test_mask_text_hides_secrets(raw: str, secret: str) -> None:
    out = mask_text(raw)
    assert secret not in out and "***" in out


def test_mask_text_keeps_ordinary_messages() -> None:
    for text in ('relation "orders" does not exist', "connection refused to 127.0.0.1:5432",
                 "key.converter = org.apache.kafka.connect.json.JsonConverter"):
        assert mask_text(text) == text


def test_elasticsearch_reasons_keep_field_type_and_id_only() -> None:
    raw = ("document_parsing_exception: [1:11] failed to parse field [amount] of type [float] in document with "
           "id '17'. Preview of field's value: 'SECRET-amount'")
    assert mask_text(raw) == ("document_parsing_exception: [1:11] failed to parse field [amount] of type [float] in "
                              "document with id '17'. Preview of field's value: <text, 13 chars>")
    cut = "mapper_parsing_exception: failed to parse field [x] of type [long] in document with id 'a'. Preview of " \
          "field's value: 'it's \"cut"
    assert "cut" not in mask_es_reason(cut).split("value: ")[1]
    assert "2024-13-45" not in mask_text("illegal_argument_exception: failed to parse date field [2024-13-45] with "
                                         "format [strict_date_optional_time||epoch_millis]")
    assert "hunter2" not in mask_text('number_format_exception: For input string: "hunter2"')
    assert "123456789" not in mask_text("json_parse_exception: Numeric value (12345678901234567890) out of range")
    assert (describe("12.5"), describe("2024-01-02"), describe("abc")) == (
        "<number, 4 chars>", "<date-like, 10 chars>", "<text, 3 chars>")


@pytest.mark.parametrize(("name", "secret"), [
    ("database.password", True), ("schema.history.internal.producer.sasl.jaas.config", True),
    ("ssl.key", True), ("aws.secret.access.key", True), ("notification.apikey", True), ("api_key", True),
    ("vault.token", True), ("gcp.credentials.json", True), ("database.sslkey", True),
    ("key.converter", False), ("key.converter.schemas.enable", False), ("message.key.columns", False),
    ("database.user", False), ("topic.prefix", False), ("ssl.keystore.location", False),
])
def test_secret_properties(name: str, secret: bool) -> None:
    assert secret_property(name) is secret


def test_mask_config() -> None:
    cfg = {"database.password": "${dir:/run/cdc:password}", "sasl.jaas.config": 'x password="p";',
           "some.url": "https://u:pw@h/x", "key.converter": "org.apache.kafka.connect.json.JsonConverter",
           "ssl.key": "-----BEGIN PRIVATE KEY-----"}
    out = mask_config(cfg)
    assert out["database.password"] == "${dir:/run/cdc:password}"  # a placeholder names a file
    assert out["sasl.jaas.config"] == "***" and out["ssl.key"] == "***"
    assert out["some.url"] == "https://u:***@h/x" and out["key.converter"] == cfg["key.converter"]


def test_settings_mask_url_passwords() -> None:
    s = Settings(elasticsearch_url="es://elastic:pw123@127.0.0.1:9200")
    assert s.model_dump()["elasticsearch_url"] == "es://elastic:***@127.0.0.1:9200"
    assert s.es_http_url == "http://elastic:pw123@127.0.0.1:9200"  # the client still gets it
    with pytest.raises(ValueError) as e:
        Settings(elasticsearch_url="ftp://elastic:pw123@127.0.0.1:9200")
    assert "pw123" not in str(e.value) and "elasticsearch_url" in str(e.value)
