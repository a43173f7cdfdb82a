"""Where pretrained weights come from: a local path, or a Hugging Face Hub id.

``vision.pretrained`` and ``text.pretrained`` accept either. An id (``openai/clip-vit-base-patch32``,
``OFA-Sys/chinese-clip-vit-base-patch16``, ``sentence-transformers/all-MiniLM-L6-v2``) is fetched
into the Hugging Face cache with ``huggingface_hub.snapshot_download`` when downloads are allowed;
with ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) only the local cache is read
(``local_files_only``), so a machine without internet works from a filled cache and never waits on
the network. The cache is ``HF_HUB_CACHE`` (else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``),
read from the environment at call time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Union

from sgmn.errors import DataError

# "name" or "org/name" as the Hub spells repo ids (no "..", no leading/trailing separators).
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# Files of a snapshot that hold weights or configs; a download skips the other frameworks' copies.
_ALLOW = ["*.json", "*.safetensors", "*.txt", "*.model", "*.py", "*.bin", "1_Pooling/*", "*/config.json"]
_SKIP = ["*.h5", "*.msgpack", "*.onnx", "*.ot", "onnx/*", "openvino/*", "tf_model*", "flax_model*", "rust_model*"]


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """True when the Hub must not be contacted (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set)."""
    return _truthy("HF_HUB_OFFLINE") or _truthy("TRANSFORMERS_OFFLINE")


def hub_cache_dir() -> Optional[str]:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None  # huggingface_hub's default


def looks_like_repo_id(value: str) -> bool:
    return bool(_REPO_ID.match(value)) and ".." not in value and not value.endswith((".pt", ".bin", ".pth"))


def resolve_pretrained(value: Union[str, Path], field: str = "pretrained") -> Path:
    """The local path of ``value``: itself when it exists, else the Hub snapshot of the id.

    Raises a :class:`DataError` naming ``field`` when it is neither an existing path nor an id
    that can be fetched (or, offline, found in the cache).
    """
    path = Path(value).expanduser()
    if path.exists():
        return path
    text = str(value)
    if not looks_like_repo_id(text):
        raise DataError(f"{field} = {text!r}: no such file or folder")
    offline = hub_offline()
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    quiet = are_progress_bars_disabled()
    if quiet and not offline:
        enable_progress_bars()  # the CLI silences loading bars; a download of weights still shows one
    try:
        folder = snapshot_download(
            text, cache_dir=hub_cache_dir(), local_files_only=offline,
            allow_patterns=_ALLOW, ignore_patterns=_SKIP,
        )
    except LocalEntryNotFoundError as err:
        where = "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache" if offline else str(err).split("\n")[0]
        raise DataError(f"{field} = {text!r}: no such file or folder, and as a Hugging Face id: {where}") from err
    except (HfHubHTTPError, OSError, ValueError) as err:
        first = str(err).strip().split("\n")[0]
        raise DataError(f"{field} = {text!r}: no such file or folder, and the Hugging Face Hub says: {first}") from err
    finally:
        if quiet and not offline:
            disable_progress_bars()
    return Path(folder)
