from __future__ import annotations

from pathlib import Path

import pytest

from cdcstream.core.resolver import Resolver
from cdcstream.core.secrets import SecretError, SecretRef


def test_forms_parse() -> None:
    assert SecretRef.parse("env:PGPASS") == SecretRef("env", "PGPASS")
    assert SecretRef.parse("vault:secret/cdc/orders#password") == SecretRef("vault", "cdc/orders", "password", "secret")
    assert SecretRef.parse({"vault": {"path": "cdc/orders", "key": "password"}}) == SecretRef(
        "vault", "cdc/orders", "password", "secret")
    assert str(SecretRef.parse("file:/run/secrets/pg")) == "file:/run/secrets/pg"


@pytest.mark.parametrize("raw", ["hunter2", "vault:secret#k", "file:relative", "env:", {"vault": {"path": "p"}}])
def test_bad_references_are_refused(raw: object) -> None:
    with pytest.raises(ValueError, match="database.password"):
        SecretRef.parse(raw, where="database.password")


def test_literal_only_when_allowed_and_masked(caplog: pytest.LogCaptureFixture) -> None:
    ref = SecretRef.parse("hunter2", allow_literal=True, where="x")
    assert "hunter2" not in repr(ref) and "hunter2" not in str(ref)
    assert "literal secret" in caplog.text and "hunter2" not in caplog.text
    assert Resolver().resolve(ref).get_secret_value() == "hunter2"


def test_resolution_errors_name_the_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    with pytest.raises(SecretError, match="env:NOPE_NOT_SET"):
        Resolver().resolve(SecretRef.parse("env:NOPE_NOT_SET"))
    with pytest.raises(SecretError, match="file:/nonexistent"):
        Resolver().resolve(SecretRef.parse("file:/nonexistent/x"))
    p = tmp_path / "pw"
    p.write_text("s3cret\n")
    v = Resolver().resolve(SecretRef.parse(f"file:{p}"))
    assert v.get_secret_value() == "s3cret" and "s3cret" not in repr(v)
    with pytest.raises(SecretError, match="no Vault"):
        Resolver().resolve(SecretRef.parse("vault:secret/a#b"))
