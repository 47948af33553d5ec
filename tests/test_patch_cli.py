"""status / apply / revert through the CLI (typer's CliRunner) on hub-cache trees laid out as huggingface_hub does."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from florence_patch.cli.main import app
from florence_patch.discovery import find_copies
from florence_patch.patching import CopyState, assess

from .conftest import FIXED_UPSTREAM_COMMIT, NEEDS_FIX_COMMIT, REPO_ID, fixture_code, run_python, tree_digest

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, list(args))


def status_rows(*args: str) -> list[dict]:
    result = cli("status", *args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def modules_copy(hf_home: Path, commit: str = NEEDS_FIX_COMMIT) -> Path:
    return hf_home / "modules" / "transformers_modules" / "florence_hyphen_patch" / "florence_hyphen_2_hyphen_tiny" / commit


def test_status_lists_revisions_refs_and_states(tiny_repo, hf_home):
    rows = {row["commit_full"]: row for row in status_rows()}
    assert rows[NEEDS_FIX_COMMIT]["state"] == "needs-fix"
    assert rows[NEEDS_FIX_COMMIT]["refs"] == ["main"]
    assert rows[NEEDS_FIX_COMMIT]["pending_fixes"][0] == "output-class"
    assert rows[FIXED_UPSTREAM_COMMIT]["refs"] == ["refs/pr/1"]
    assert "output-class" not in rows[FIXED_UPSTREAM_COMMIT]["pending_fixes"]
    assert all(row["model"] == REPO_ID for row in rows.values())
    # --revision accepts a ref name or a commit prefix
    assert [r["commit_full"] for r in status_rows(REPO_ID, "--revision", "refs/pr/1")] == [FIXED_UPSTREAM_COMMIT]
    assert [r["commit_full"] for r in status_rows(REPO_ID, "--revision", NEEDS_FIX_COMMIT[:7])] == [NEEDS_FIX_COMMIT]


def test_status_honours_cache_dir_and_hf_hub_cache(tmp_path, hf_home, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    from florence_patch.demo.hub_layout import write_hub_repo

    write_hub_repo(elsewhere, REPO_ID, {NEEDS_FIX_COMMIT: fixture_code("needs-fix")}, {"main": NEEDS_FIX_COMMIT})
    assert status_rows() == []
    assert [r["commit_full"] for r in status_rows("--cache-dir", str(elsewhere))] == [NEEDS_FIX_COMMIT]
    monkeypatch.setenv("HF_HUB_CACHE", str(elsewhere))
    assert [r["commit_full"] for r in status_rows()] == [NEEDS_FIX_COMMIT]


def test_status_finds_both_modules_cache_layouts(tiny_repo, hf_home):
    files = fixture_code("needs-fix")
    plain = hf_home / "modules" / "transformers_modules" / "florence-patch" / "florence-2-tiny" / NEEDS_FIX_COMMIT
    plain.mkdir(parents=True)
    for name, data in files.items():
        (plain / name).write_bytes(data)
    rows = [r for r in status_rows() if r["commit_full"] == NEEDS_FIX_COMMIT]
    assert {r["layout"] for r in rows} == {"plain", "mangled"}
    assert {r["target"] for r in rows} == {str(plain), str(modules_copy(hf_home))}


def test_apply_patches_the_modules_copy_never_the_snapshot(tiny_repo, hf_home):
    blobs_before = tree_digest(tiny_repo)
    result = cli("apply", REPO_ID, "--revision", "main", "--fix", "output-class")
    assert result.exit_code == 0, result.output
    target = modules_copy(hf_home) / "modeling_florence2.py"
    patched = target.read_bytes()
    original = fixture_code("needs-fix")["modeling_florence2.py"]
    assert patched != original and b"loss: Optional[torch.FloatTensor] = None" in patched
    assert tree_digest(tiny_repo) == blobs_before  # blobs, snapshots and refs untouched
    manifest = json.loads((target.parent / ".florence-patch" / "manifest.json").read_text())
    assert manifest["files"]["modeling_florence2.py"]["fixes"] == ["output-class"]
    assert (target.parent / ".florence-patch" / "modeling_florence2.py.orig").read_bytes() == original

    # a second apply changes nothing
    mtime = target.stat().st_mtime_ns
    again = cli("apply", REPO_ID, "--revision", "main", "--fix", "output-class")
    assert again.exit_code == 0 and target.stat().st_mtime_ns == mtime and target.read_bytes() == patched
    [row] = status_rows(REPO_ID, "--revision", "main", "--fix", "output-class")
    assert row["state"] == "patched" and row["backup"].endswith(".florence-patch")

    # revert restores the exact bytes, and is idempotent
    assert cli("revert", REPO_ID).exit_code == 0
    assert target.read_bytes() == original
    assert not (target.parent / ".florence-patch" / "manifest.json").exists()
    second = cli("revert", REPO_ID)
    assert second.exit_code == 0 and "nothing to revert" in second.stdout


def test_transformers_449_imports_the_patched_copy(tiny_repo, hf_home):
    """Under transformers 4.49 (plain layout), its own loader must pick up the file we patched."""
    apply = run_python(
        f"from florence_patch.cli.main import main; import sys; sys.argv=['florence-patch','apply','{REPO_ID}']; main()",
        tf449=True,
    )
    assert apply.returncode == 0, apply.stderr[-2000:]
    plain = hf_home / "modules" / "transformers_modules" / "florence-patch" / "florence-2-tiny" / NEEDS_FIX_COMMIT
    assert b"loss: Optional[torch.FloatTensor] = None" in (plain / "modeling_florence2.py").read_bytes()
    load = run_python(
        "from transformers.dynamic_module_utils import get_class_from_dynamic_module as g\n"
        f"cls = g('modeling_florence2.Florence2Seq2SeqLMOutput', '{REPO_ID}', revision='main')\n"
        "print(list(cls.__dataclass_fields__))\n",
        tf449=True,
    )
    assert load.returncode == 0, load.stderr[-2000:]
    fields = eval(load.stdout.strip().splitlines()[-1])
    assert fields[:2] == ["loss", "logits"] and fields[-1] == "image_hidden_states"


def test_check_and_dry_run_write_nothing(imported_tiny_repo, hf_home):
    before = tree_digest(hf_home)
    check = cli("apply", "--check", "--fix", "output-class")
    assert check.exit_code == 1
    dry = cli("apply", REPO_ID, "--dry-run", "--fix", "output-class")
    assert dry.exit_code == 0
    assert "+    loss: Optional[torch.FloatTensor] = None" in dry.stdout
    assert tree_digest(hf_home) == before
    assert cli("apply", "--fix", "output-class").exit_code == 0
    assert cli("apply", "--check", "--fix", "output-class").exit_code == 0


def test_revert_refuses_a_file_changed_since_patching(imported_tiny_repo, hf_home):
    assert cli("apply", REPO_ID, "--revision", "main", "--fix", "output-class").exit_code == 0
    target = modules_copy(hf_home) / "modeling_florence2.py"
    target.write_bytes(target.read_bytes() + b"\n# edited by hand\n")
    assert status_rows(REPO_ID, "--revision", "main")[0]["state"] == "modified"
    refused = cli("revert", REPO_ID)
    assert refused.exit_code == 5 and "changed since" in refused.stderr
    assert target.read_bytes().endswith(b"# edited by hand\n")
    forced = cli("revert", REPO_ID, "--force")
    assert forced.exit_code == 0
    assert target.read_bytes() == fixture_code("needs-fix")["modeling_florence2.py"]


def test_revert_with_missing_or_corrupt_backup(imported_tiny_repo, hf_home):
    assert cli("apply", REPO_ID, "--revision", "main", "--fix", "output-class").exit_code == 0
    backup = modules_copy(hf_home) / ".florence-patch" / "modeling_florence2.py.orig"
    target = modules_copy(hf_home) / "modeling_florence2.py"
    patched = target.read_bytes()
    original = backup.read_bytes()
    os.chmod(backup, 0o644)
    backup.write_bytes(original + b"tampered")
    corrupt = cli("revert", REPO_ID)
    assert corrupt.exit_code == 5 and "does not match its manifest" in corrupt.stderr
    assert target.read_bytes() == patched
    backup.unlink()
    missing = cli("revert", REPO_ID)
    assert missing.exit_code == 5 and "missing" in missing.stderr
    assert target.read_bytes() == patched


def test_model_not_cached_and_unknown_revision(tiny_repo, hf_home):
    missing = cli("apply", "someone/Florence-2-nowhere")
    assert missing.exit_code == 3
    assert "--download" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    unknown = cli("status", REPO_ID, "--revision", "v9")
    assert unknown.exit_code == 3 and "not in the cache" in unknown.stderr
    offline = cli("apply", "someone/Florence-2-nowhere", "--download")
    assert offline.exit_code == 3 and "cannot download" in offline.stderr


def local_checkpoint(tmp_path: Path, modeling: bytes | None = None) -> Path:
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    for name, data in fixture_code("needs-fix").items():
        (directory / name).write_bytes(data)
    if modeling is not None:
        (directory / "modeling_florence2.py").write_bytes(modeling)
    return directory


def test_local_directory_is_patched_in_place_with_crlf_kept(tmp_path, hf_home):
    crlf = fixture_code("needs-fix")["modeling_florence2.py"].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    directory = local_checkpoint(tmp_path, crlf)
    result = cli("apply", str(directory), "--fix", "output-class")
    assert result.exit_code == 0, result.output
    patched = (directory / "modeling_florence2.py").read_bytes()
    assert b"    loss: Optional[torch.FloatTensor] = None\r\n" in patched
    assert b"\n" not in patched.replace(b"\r\n", b"")  # every line ending is still CRLF
    assert cli("revert", str(directory)).exit_code == 0
    assert (directory / "modeling_florence2.py").read_bytes() == crlf


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"class Unrelated:\n    pass\n", "not Florence-2"),
        (b"def broken(:\n", "syntax error"),
        (b"# caf\xe9 in latin-1\nx = 1\n", "not UTF-8"),
    ],
)
def test_unrecognized_files_are_reported_and_untouched(tmp_path, hf_home, content, needle):
    directory = local_checkpoint(tmp_path, content)
    result = cli("apply", str(directory))
    assert result.exit_code == 4
    assert needle in result.stderr
    assert (directory / "modeling_florence2.py").read_bytes() == content
    assert not (directory / ".florence-patch" / "manifest.json").exists()
    [row] = status_rows(str(directory))
    assert row["state"] == "unrecognized"


def test_unknown_class_shape_is_unrecognized(tmp_path, hf_home):
    modeling = fixture_code("needs-fix")["modeling_florence2.py"].replace(
        b"    encoder_attentions: Optional[Tuple[torch.FloatTensor, ...]] = None\n",
        b"    encoder_attentions: Optional[Tuple[torch.FloatTensor, ...]] = None\n    extra_field: int = 0\n",
        1,
    )
    directory = local_checkpoint(tmp_path, modeling)
    result = cli("apply", str(directory))
    assert result.exit_code == 4 and "unknown fields" in result.stderr
    assert (directory / "modeling_florence2.py").read_bytes() == modeling


def test_read_only_file_and_directory(tmp_path, hf_home):
    directory = local_checkpoint(tmp_path)
    modeling = directory / "modeling_florence2.py"
    original = modeling.read_bytes()
    os.chmod(modeling, 0o444)
    result = cli("apply", str(directory), "--fix", "output-class")
    assert result.exit_code == 6 and "read-only" in result.stderr
    assert modeling.read_bytes() == original
    os.chmod(modeling, 0o644)
    os.chmod(directory, 0o555)
    try:
        result = cli("apply", str(directory), "--fix", "output-class")
        assert result.exit_code == 6 and "read-only" in result.stderr
        assert modeling.read_bytes() == original
        assert sorted(p.name for p in directory.iterdir()) == sorted(fixture_code("needs-fix"))
    finally:
        os.chmod(directory, stat.S_IRWXU)


def test_library_api_returns_frozen_dataclasses(tiny_repo, hf_home):
    scan = find_copies(REPO_ID, revision="main")
    [copy] = scan.copies
    with pytest.raises(AttributeError):
        copy.commit = "x"  # type: ignore[misc]
    status = assess(copy)
    assert status.state is CopyState.NEEDS_FIX and "output-class" in status.pending


def test_sixteen_concurrent_applies_patch_once(tmp_path, hf_home):
    """Every rank of a torchrun job may call apply at once: one backup, one patch, all exit 0."""
    directory = local_checkpoint(tmp_path)
    original = (directory / "modeling_florence2.py").read_bytes()
    env = dict(os.environ)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "florence_patch.cli.main", "apply", str(directory), "--fix", "output-class"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        for _ in range(16)
    ]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0] * 16, [p.stderr.read().decode()[-500:] for p in procs]
    patched = (directory / "modeling_florence2.py").read_text()
    assert patched.count("loss: Optional[torch.FloatTensor] = None") == 1
    assert patched.count("image_hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None") == 1
    state = directory / ".florence-patch"
    assert sorted(p.name for p in state.iterdir()) == ["lock", "manifest.json", "modeling_florence2.py.orig"]
    assert (state / "modeling_florence2.py.orig").read_bytes() == original
    assert not list(directory.glob(".*.tmp"))
    history = json.loads((state / "manifest.json").read_text())["history"]
    assert len(history) == 1


def test_apply_renders_while_transformers_materializes_and_writes_what_dry_run_shows(tiny_repo, hf_home):
    dry = cli("apply", REPO_ID, "--revision", NEEDS_FIX_COMMIT, "--dry-run")
    assert dry.exit_code == 0 and "+++ b/modeling_florence2.py" in dry.output
    assert not (modules_copy(hf_home) / "modeling_florence2.py").exists()
    from florence_patch.patching import plan_fix

    (copy,) = find_copies(REPO_ID, revision=NEEDS_FIX_COMMIT).copies
    expected = {change.filename: change.new for change in plan_fix(copy).changes}
    assert cli("apply", REPO_ID, "--revision", NEEDS_FIX_COMMIT).exit_code == 0
    for name, new in expected.items():
        assert (modules_copy(hf_home) / name).read_bytes() == new


def test_apply_reports_a_failed_materialization_and_writes_no_fix(tiny_repo, hf_home, monkeypatch):
    from florence_patch import patching
    from florence_patch.errors import FlorencePatchError

    monkeypatch.setattr(patching, "_MATERIALIZE_SCRIPT", "import sys; sys.exit('transformers is broken here')")
    (copy,) = find_copies(REPO_ID, revision=NEEDS_FIX_COMMIT).copies
    plan = patching.plan_fix(copy, render=False)
    assert plan.status.state is CopyState.NEEDS_FIX and not plan.changes
    with pytest.raises(FlorencePatchError, match="transformers is broken here"):
        patching.apply_all([plan])
    assert not (modules_copy(hf_home) / "modeling_florence2.py").exists()
    assert not list(modules_copy(hf_home).rglob("manifest*"))


def test_status_and_apply_freeze_the_collector_at_exit_only(tiny_repo, hf_home, monkeypatch):
    """status/apply skip shutdown's collections (a libcst run leaves ~0.3 s of them), but only at
    exit: the calling process keeps collecting, and the hook is registered once."""
    import atexit
    import gc

    import florence_patch.cli.patch as patch_cli

    registered = []
    monkeypatch.setattr(atexit, "register", lambda function, *a, **k: registered.append(function))
    frozen_before = gc.get_freeze_count()
    for args, exit_code in ((["status"], 0), (["apply", "--check"], 1)):  # the tiny repo needs fixes
        patch_cli._skip_final_collections.cache_clear()
        registered.clear()
        assert cli(*args).exit_code == exit_code
        assert cli(*args).exit_code == exit_code
        assert registered == [gc.freeze], args
    assert gc.get_freeze_count() == frozen_before
