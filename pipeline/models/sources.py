"""Where a user's model folder comes from: a local folder, any fsspec URL, or the hub."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile

from pipeline.errors import UserError

# "org/name" or "name": what the Hugging Face hub calls a repository id.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth")


def cache_root() -> str:
    """Per-machine cache for copied folders; ``MMPIPE_MODEL_CACHE`` moves it (a shared disk)."""
    return os.environ.get("MMPIPE_MODEL_CACHE") or os.path.join(
        tempfile.gettempdir(), "mmpipe-models"
    )


@functools.lru_cache(maxsize=32)
def local_folder(source: str) -> str:
    """A local folder that holds ``source``: the folder itself, a copy of an fsspec URL, or a
    hub snapshot. Copies are made once per machine (a temp name, then a rename), so that a
    pool of actors on one node downloads a model once.

    Raises:
        UserError: a missing folder, an unreachable URL, or a hub id on an offline machine.
    """
    from pipeline.io.fs import is_remote

    path = source.removeprefix("file://")
    if not is_remote(source):
        if os.path.isdir(path):
            return os.path.abspath(path)
        if os.path.exists(path) or not _HUB_ID.match(source) or source.startswith((".", "/")):
            raise UserError(
                f"model folder not found: {source}; give a folder saved with save_pretrained, "
                "an fsspec URL of one, or a hub id"
            )
        return _hub_snapshot(source)
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    dest = os.path.join(cache_root(), key)
    if os.path.isdir(dest):
        return dest
    os.makedirs(cache_root(), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=cache_root(), prefix=f".{key}-")
    try:
        import fsspec

        fs, root = fsspec.core.url_to_fs(source)
        files = [f for f in fs.find(root) if not os.path.basename(f).startswith(".")]
        if not files:
            raise FileNotFoundError(source)
        for f in files:
            rel = os.path.relpath(f, root)
            os.makedirs(os.path.join(tmp, os.path.dirname(rel)), exist_ok=True)
            fs.get_file(f, os.path.join(tmp, rel))
        os.replace(tmp, dest)  # a rival copy that finished first wins; ours is discarded
    except FileNotFoundError:
        raise UserError(f"model folder not found: {source}") from None
    except OSError as e:
        if os.path.isdir(dest):
            return dest
        raise UserError(f"cannot copy the model folder {source}: {e}") from None
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _hub_snapshot(repo_id: str) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        from huggingface_hub import snapshot_download

        # Weights as safetensors when the repository has them; configs and tokenizers always.
        return str(
            snapshot_download(
                repo_id,
                allow_patterns=["*.json", "*.txt", "*.model", "*.safetensors", "*.bin"],
                local_files_only=offline,
            )
        )
    except Exception as e:
        how = (
            "HF_HUB_OFFLINE is set and the hub cache does not hold it"
            if offline
            else "the hub cannot be reached"
        )
        raise UserError(
            f"cannot fetch {repo_id!r} from the Hugging Face hub ({how}: "
            f"{type(e).__name__}); save the model with save_pretrained and give its folder or URL"
        ) from None


def folder_digest(folder: str) -> str:
    """sha256 over the folder's weight files, in name order: the encoder's identity."""
    h = hashlib.sha256()
    found = False
    for name in sorted(os.listdir(folder)):
        if name.endswith(WEIGHT_FILES):
            found = True
            h.update(name.encode())
            with open(os.path.join(folder, name), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    if not found:
        raise UserError(
            f"{folder} holds no weights (*.safetensors or *.bin); save the model with "
            "save_pretrained, or ask for random weights explicitly"
        )
    return h.hexdigest()
