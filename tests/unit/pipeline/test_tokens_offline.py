"""tiktoken must work with the network unreachable (issue 2, item 3)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

from cdcstream.pipeline.tokens import EncodingUnavailable, get_encoding

PROBE = textwrap.dedent(
    """
    import os, socket, tiktoken
    # Prove the namespace really has no network before trusting the result.
    try:
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    except OSError as e:
        assert e.errno in (101, 111), e  # unreachable (no interfaces) or refused would both be local
    from cdcstream.pipeline.tokens import get_encoding
    enc = get_encoding("cl100k_base")
    ids = enc.encode("Change data capture, mirrored.")
    print(len(ids), ids[:3])
    try:
        tiktoken.get_encoding("cl100k_base")
    except Exception as e:
        print("download-refused", type(e).__name__)
    else:
        print("download-worked")
    """
)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_cl100k_loads_with_network_unreachable(tmp_path: object) -> None:
    # A fresh network namespace has no interfaces at all: any download attempt fails.
    proc = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", PROBE],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "TIKTOKEN_CACHE_DIR": str(tmp_path), "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first.split()[0] == "6"
    # The stock name needs a download, which the namespace refuses: the offline path is what worked.
    assert second.startswith("download-refused")


def test_same_ids_as_cl100k() -> None:
    enc = get_encoding("cl100k_base")
    assert enc.encode("hello world") == [15339, 1917]  # cl100k_base ids, published by OpenAI


def test_unknown_encoding_names_itself() -> None:
    with pytest.raises(EncodingUnavailable, match="o200k_base"):
        get_encoding("o200k_base")
