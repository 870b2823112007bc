"""HTTPS settings of the worker API: the server context, errors that name the file, the client URL."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from cdcstream.core.settings import Settings
from cdcstream.core.tls import TLSConfigError, server_ssl_context
from cdcstream.runtime.worker import plaintext_warning, startup_refusal
from tests.support.tls import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_cert_and_key_make_a_server_context(pki: Pki) -> None:
    ctx = server_ssl_context(Settings(web_tls_cert=pki.cert, web_tls_key=str(pki.key)))
    assert ctx is not None and ctx.minimum_version.name == "TLSv1_2"
    assert server_ssl_context(Settings()) is None


def test_a_key_held_in_a_secret_is_loaded_and_its_copy_removed(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_WORKER_KEY", pki.key.read_text())
    before = set(Path(tempfile.gettempdir()).glob("cdcstream-tls-*"))
    assert server_ssl_context(Settings(web_tls_cert=pki.cert, web_tls_key="env:TEST_WORKER_KEY")) is not None
    assert set(Path(tempfile.gettempdir()).glob("cdcstream-tls-*")) == before


def test_settings_want_both_files_and_read_a_bare_path_as_a_file_reference(pki: Pki) -> None:
    assert str(Settings(web_tls_cert=pki.cert, web_tls_key=str(pki.key)).web_tls_key) == f"file:{pki.key}"
    with pytest.raises(ValueError, match="web_tls_cert and web_tls_key go together"):
        Settings(web_tls_cert=pki.cert)
    with pytest.raises(ValueError, match="web_tls_cert and web_tls_key go together"):
        Settings(web_tls_key="env:K")


def _encrypted_key(d: Path) -> Path:
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-aes256",
                    "-pass", "pass:secret", "-out", str(d / "enc.key")], check=True, capture_output=True, timeout=60)
    return d / "enc.key"


def test_each_bad_file_is_named(pki: Pki, tmp_path: Path) -> None:
    cases = [
        (tmp_path / "nope.pem", str(pki.key), f"web_tls_cert {tmp_path / 'nope.pem'}: no such file"),
        (pki.cert, str(tmp_path / "nope.key"), f"web_tls_key {tmp_path / 'nope.key'}: no such file"),
        (pki.key, str(pki.key), f"web_tls_cert {pki.key}: no PEM certificate in it"),
        (pki.cert, str(pki.cert), f"web_tls_key file:{pki.cert}: not an unencrypted PEM private key matching "
                                  f"web_tls_cert {pki.cert}"),
        (pki.cert, str(pki.ca.with_name("ca.key")), "KEY_VALUES_MISMATCH"),
        # OpenSSL would prompt for the passphrase on the terminal without the callback.
        (pki.cert, str(_encrypted_key(tmp_path)), f"web_tls_key file:{tmp_path / 'enc.key'}: the key is encrypted"),
        (pki.cert, "env:CDCSTREAM_TEST_NO_SUCH_KEY", "web_tls_key env:CDCSTREAM_TEST_NO_SUCH_KEY: "),
    ]
    for cert, key, msg in cases:
        s = Settings(web_tls_cert=cert, web_tls_key=key)
        with pytest.raises(TLSConfigError) as e:
            server_ssl_context(s)
        assert msg in str(e.value), (cert, key, str(e.value))
        assert startup_refusal(s) == f"cannot serve HTTPS: {e.value}"
        assert "BEGIN" not in str(e.value)  # never key material


def test_clients_use_https_when_the_worker_does(pki: Pki) -> None:
    key = str(pki.key)
    assert Settings().worker_api_url == "http://127.0.0.1:6066"
    assert Settings(web_host="0.0.0.0", web_port=7000, web_tls_cert=pki.cert, web_tls_key=key
                    ).worker_api_url == "https://127.0.0.1:7000"
    assert Settings(web_host="::1", web_tls_cert=pki.cert, web_tls_key=key).worker_api_url == "https://[::1]:6066"
    assert Settings(worker_url="https://cdc.example.internal:6066/").worker_api_url == \
        "https://cdc.example.internal:6066"
    assert Settings().worker_verify is True
    assert Settings(worker_ca=pki.ca).worker_verify == str(pki.ca)


def test_plain_http_beyond_loopback_warns_and_tls_silences_it(pki: Pki) -> None:
    warning = plaintext_warning(Settings(web_host="0.0.0.0", api_token="env:T"))
    assert warning is not None and "tokens and session cookies cross the network in clear" in warning
    assert plaintext_warning(Settings(web_host="0.0.0.0", api_token="env:T", web_tls_cert=pki.cert,
                                      web_tls_key=str(pki.key))) is None
    assert plaintext_warning(Settings()) is None
