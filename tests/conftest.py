"""Shared fixtures: private HF caches, the tiny Florence-2-shaped repo laid out as the hub does."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# transformers 4.49 + its huggingface-hub/tokenizers, installed beside the venv by the README's install command.
TF449_OVERLAY = REPO_ROOT / ".venv" / "compat" / "tf449"
NEEDS_FIX_COMMIT = "1" * 40
FIXED_UPSTREAM_COMMIT = "2" * 40
REPO_ID = "florence-patch/florence-2-tiny"


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("FLORENCE_PATCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "florence-patch-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    """A private HF_HOME (hub cache and modules cache inside), never the user's."""
    home = tmp_path / "hf"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_MODULES_CACHE"):
        monkeypatch.delenv(var, raising=False)
    return home


def fixture_code(state: str) -> dict[str, bytes]:
    from florence_patch.demo.checkpoint import remote_code_files

    return dict(remote_code_files(state))


def lay_out(hf_home: Path, revisions: dict[str, dict[str, bytes]], refs: dict[str, str], repo_id: str = REPO_ID) -> Path:
    from florence_patch.demo.hub_layout import write_hub_repo

    return write_hub_repo(hf_home / "hub", repo_id, revisions, refs)


@pytest.fixture
def tiny_repo(hf_home) -> Path:
    """The tiny repo at a needs-fix revision (main) and a fixed-upstream one (refs/pr/1), code only."""
    return lay_out(
        hf_home,
        {NEEDS_FIX_COMMIT: fixture_code("needs-fix"), FIXED_UPSTREAM_COMMIT: fixture_code("fixed-upstream")},
        {"main": NEEDS_FIX_COMMIT, "refs/pr/1": FIXED_UPSTREAM_COMMIT},
    )


@pytest.fixture(scope="session")
def _imported_template(tmp_path_factory) -> Path:
    """A HF_HOME where transformers itself already imported the needs-fix revision (made once)."""
    home = tmp_path_factory.mktemp("imported") / "hf"
    lay_out(
        home,
        {NEEDS_FIX_COMMIT: fixture_code("needs-fix"), FIXED_UPSTREAM_COMMIT: fixture_code("fixed-upstream")},
        {"main": NEEDS_FIX_COMMIT, "refs/pr/1": FIXED_UPSTREAM_COMMIT},
    )
    from florence_patch.discovery import find_copies
    from florence_patch.patching import materialize

    env = {"HF_HOME": str(home)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        materialize(list(find_copies(REPO_ID, revision="main").copies))
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return home


@pytest.fixture
def imported_tiny_repo(hf_home, _imported_template) -> Path:
    """tiny_repo, plus the modules-cache copy transformers made of main (copied from a template)."""
    shutil.rmtree(hf_home)
    shutil.copytree(_imported_template, hf_home, symlinks=True)
    return hf_home / "hub" / ("models--" + REPO_ID.replace("/", "--"))


def tree_digest(root: Path) -> str:
    """Hash of every file (and symlink target) under root: proves a tree was left untouched."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def run_python(code: str, *, env: dict[str, str] | None = None, tf449: bool = False, timeout: int = 600):
    """Run code in a fresh interpreter (optionally under transformers 4.49)."""
    full_env = dict(os.environ, **(env or {}))
    if tf449:
        if not TF449_OVERLAY.is_dir():
            pytest.fail(f"transformers 4.49 overlay missing at {TF449_OVERLAY}: run the README's install command")
        full_env["PYTHONPATH"] = str(TF449_OVERLAY) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=timeout)


# The start of a ``run_with_demo_checkpoint`` script that compares training steps: the fixed demo
# model, a batch of 4 synthetic questions, and ``step()`` -> (loss, bytes autograd keeps for
# backward, gradients by parameter name), with dropout seeded alike in every call.
DEMO_TRAINING_STEP = textwrap.dedent(
    """
    import json, torch
    from florence_patch.demo.synthetic import make_docvqa
    from florence_patch.training.model import fix_remote_code, load_model_and_processor

    code = fix_remote_code("florence-patch/florence-2-tiny")
    model, processor = load_model_and_processor(code)
    rows = make_docvqa(num_train=4, num_validation=1, num_test=1, seed=0)["train"]
    inputs = processor(text=["<DocVQA>" + q for q in rows["question"]],
                       images=[image.convert("RGB") for image in rows["image"]], return_tensors="pt", padding=True)
    labels = processor.tokenizer([a[0] for a in rows["answers"]], return_tensors="pt", padding=True).input_ids

    def step():
        model.zero_grad(set_to_none=True)
        kept = [0]
        def pack(tensor):
            kept[0] += tensor.numel() * tensor.element_size()
            return tensor
        torch.manual_seed(0)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = model(**inputs, labels=labels).loss
        loss.backward()
        return loss.item(), kept[0], {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.train()
    """
)


def run_with_demo_checkpoint(script: str, workdir: Path) -> dict:
    """Run ``script`` in a fresh interpreter whose private HF_HOME holds the demo checkpoint (at
    its needs-fix revision), offline, on one thread; returns the JSON it printed after ``RESULT ``."""
    import json

    from florence_patch.demo.checkpoint import build_demo_repo

    home = workdir / "hf"
    home.mkdir()
    build_demo_repo(home)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_MODULES_CACHE")}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=workdir, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])
