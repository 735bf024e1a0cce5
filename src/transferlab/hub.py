"""Whether the Hugging Face hub can answer, asked once in seconds: its clients (models and datasets alike)
retry for half a minute or more before failing, which is no way to learn that a machine is offline."""
from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def unreachable(offline: bool) -> str | None:
    """Why the hub cannot answer (offline mode, or no connection to ``HF_ENDPOINT`` within 3 s), or None."""
    if offline:
        return "offline mode is set (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE)"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=3).close()
        return None
    except OSError as e:
        return f"the hub ({endpoint.hostname}) is unreachable: {e}"
