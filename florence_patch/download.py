"""`apply --download`: fetch a model's code and config files, not its weights.

A CI job can patch before the (large) weights arrive; transformers later downloads the weights
into the same snapshot.
"""

from __future__ import annotations

import os

from .errors import NotFoundError

CODE_AND_CONFIG_PATTERNS = ("*.py", "*.json", "*.txt", "*.model")


def download_code(model: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> str:
    """Download the code/config files of ``model`` into the hub cache; return the snapshot path."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from .locations import hub_cache_dir

    try:
        return snapshot_download(
            model,
            revision=revision,
            cache_dir=str(hub_cache_dir(cache_dir)),
            allow_patterns=list(CODE_AND_CONFIG_PATTERNS),
        )
    except RevisionNotFoundError as error:
        raise NotFoundError(f"{model}: revision {revision!r} not found on the Hub") from error
    except RepositoryNotFoundError as error:
        raise NotFoundError(f"{model}: no such model on the Hub (or it is private)") from error
    except LocalEntryNotFoundError as error:
        raise NotFoundError(
            f"{model}: cannot download (offline or the Hub is unreachable) and it is not in the cache"
        ) from error
    except HfHubHTTPError as error:
        raise NotFoundError(f"{model}: download failed: {str(error).splitlines()[0]}") from error
