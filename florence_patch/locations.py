"""Where the caches are, read from the environment at call time.

huggingface_hub and transformers read HF_HOME / HF_HUB_CACHE / HF_MODULES_CACHE once, at
import; we resolve them per call with the same precedence so a library user (or a test) can
point us at another cache without re-importing anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def hf_home() -> Path:
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface"


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    return hf_home() / "hub"


def modules_cache_dir() -> Path:
    if os.environ.get("HF_MODULES_CACHE"):
        return Path(os.environ["HF_MODULES_CACHE"]).expanduser()
    return hf_home() / "modules"


@dataclass(frozen=True)
class CacheLocations:
    hub: Path
    modules: Path

    @classmethod
    def resolve(cls, cache_dir: str | os.PathLike | None = None) -> "CacheLocations":
        return cls(hub=hub_cache_dir(cache_dir), modules=modules_cache_dir())

    @property
    def transformers_modules(self) -> Path:
        return self.modules / "transformers_modules"
