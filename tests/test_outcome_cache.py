"""The persistent outcome cache: what it predicts must be what libcst would say, and it must
never hand back code it cannot vouch for."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from florence_patch.demo.checkpoint import REVISION_STATES, remote_code_files
from florence_patch.fixes import select_fixes
from florence_patch.fixes.base import run_fixes
from florence_patch.outcome_cache import OUTCOMES, OutcomeCache, cache_path, outcomes_after

from .conftest import REPO_ID

FIX_SETS = {
    "transformers-4.49": select_fixes("4.49.0"),
    "transformers-5": select_fixes("5.0.0"),
}


def _files_to_check() -> list[tuple[str, str, str]]:
    cases = [(f"fixture {state}", name, data.decode("utf-8")) for state in REVISION_STATES for name, data in remote_code_files(state).items()]
    upstream = os.environ.get("FLORENCE_PATCH_UPSTREAM_DIR")
    if upstream:
        for revision in sorted(p for p in Path(upstream).iterdir() if p.is_dir()):
            for path in sorted(revision.glob("*_florence2.py")):
                cases.append((f"upstream {revision.name}", path.name, path.read_text(encoding="utf-8")))
    unique = {(name, code): (source, name, code) for source, name, code in cases}  # states share files
    return list(unique.values())


@pytest.mark.parametrize("fix_set", sorted(FIX_SETS))
def test_predicted_outcomes_of_fixed_code_match_a_real_run(fix_set):
    """apply records outcomes_after(...) for the code it writes instead of parsing it again."""
    checked = 0
    for source, name, code in _files_to_check():
        fixes = [f for f in FIX_SETS[fix_set] if f.filename == name]
        if not fixes:
            continue
        final, results = run_fixes(code, fixes)
        outcomes = [(r.outcome, r.reason) for r in results]
        again_code, again = run_fixes(final, fixes)
        assert again_code == final, f"{source} {name}: fixes are not idempotent"
        predicted = [o for o, _ in outcomes_after(outcomes)]
        assert [r.outcome for r in again] == predicted, f"{source} {name}"
        checked += 1
    assert checked >= 3


def _plan_needs_fix(hf_home):
    from florence_patch.discovery import find_copies
    from florence_patch.patching import plan_fix

    (copy,) = [c for c in find_copies(REPO_ID, revision="main").copies]
    return plan_fix(copy)


def test_apply_after_status_reuses_the_fixed_code_without_libcst(tiny_repo, hf_home, monkeypatch):
    from florence_patch import patching
    from florence_patch.fixes import base

    expected = {c.filename: c.new for c in _plan_needs_fix(hf_home).changes}  # libcst ran, cache filled
    assert expected
    OUTCOMES.save()
    # A new process: nothing in memory, only the cache on disk.
    monkeypatch.setattr(patching, "OUTCOMES", OutcomeCache())
    monkeypatch.setattr(patching, "_FINAL_CODE", {})

    def no_libcst(*_args, **_kwargs):
        raise AssertionError("libcst ran although the cache held the fixed code")

    monkeypatch.setattr(base, "run_fixes", no_libcst)
    assert {c.filename: c.new for c in _plan_needs_fix(hf_home).changes} == expected


def test_a_tampered_rendered_file_is_not_used(tiny_repo, hf_home, monkeypatch):
    from florence_patch import patching

    expected = {c.filename: c.new for c in _plan_needs_fix(hf_home).changes}
    OUTCOMES.save()
    rendered = sorted((cache_path().parent / "rendered").glob("*.py"))
    assert rendered
    for path in rendered:
        path.write_text("raise SystemExit('tampered')\n", encoding="utf-8")
    monkeypatch.setattr(patching, "OUTCOMES", OutcomeCache())
    monkeypatch.setattr(patching, "_FINAL_CODE", {})
    assert {c.filename: c.new for c in _plan_needs_fix(hf_home).changes} == expected


def test_an_index_of_another_layout_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("FLORENCE_PATCH_CACHE_DIR", str(tmp_path))
    key = OutcomeCache.key("0" * 64, ("output-class",))
    cache_path().write_text(json.dumps({key: [["needed", ""]], "x": "junk"}), encoding="utf-8")
    assert OutcomeCache().get(key) is None
    cache_path().write_text("[1, 2", encoding="utf-8")
    assert OutcomeCache().get(key) is None


# ---------------------------------------------------------------------------------------------
# The table of published files' outcomes shipped with the package.


def test_the_shipped_table_was_made_with_the_current_fixes():
    """Fails when a fix changed without `scripts/known_outcomes.py` being run again."""
    from florence_patch.outcome_cache import KNOWN_OUTCOMES_FILE, fixes_digest, known_outcomes

    table = json.loads(KNOWN_OUTCOMES_FILE.read_text(encoding="utf-8"))
    assert table["fixes_digest"] == fixes_digest(), "run: scripts/known_outcomes.py <upstream dir>"
    assert len(known_outcomes()) == len(table["outcomes"]) > 0


def test_the_table_answers_a_first_status_and_is_ignored_once_stale(tmp_path, monkeypatch):
    from florence_patch import outcome_cache

    monkeypatch.setenv("FLORENCE_PATCH_CACHE_DIR", str(tmp_path))  # an empty cache: a first run
    table = json.loads(outcome_cache.KNOWN_OUTCOMES_FILE.read_text(encoding="utf-8"))
    content_sha, fix_ids = next(iter(table["outcomes"])).split("|")
    key = OutcomeCache.key(content_sha, tuple(fix_ids.split(",")))
    expected = [(o, r) for o, r in table["outcomes"][f"{content_sha}|{fix_ids}"]]
    assert [(o.value, r) for o, r in OutcomeCache().get(key)] == expected

    stale = tmp_path / "known.json"
    stale.write_text(json.dumps({**table, "fixes_digest": "0" * 16}), encoding="utf-8")
    monkeypatch.setattr(outcome_cache, "KNOWN_OUTCOMES_FILE", stale)
    outcome_cache.known_outcomes.cache_clear()
    try:
        assert OutcomeCache().get(key) is None
    finally:
        outcome_cache.known_outcomes.cache_clear()


def test_the_table_matches_the_published_files_when_they_are_at_hand():
    """With FLORENCE_PATCH_UPSTREAM_DIR, rebuild the table from the real files and compare."""
    upstream = os.environ.get("FLORENCE_PATCH_UPSTREAM_DIR")
    if not upstream:
        pytest.skip("FLORENCE_PATCH_UPSTREAM_DIR (real Florence-2 files) not set")
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "known_outcomes.py"
    proc = subprocess.run([sys.executable, str(script), upstream, "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("raises", [False, True])
def test_libcst_runs_with_the_cyclic_collector_paused_and_restores_it(tiny_repo, hf_home, monkeypatch, raises):
    import gc

    from florence_patch import patching
    from florence_patch.fixes import base

    monkeypatch.setattr(patching, "OUTCOMES", OutcomeCache())  # a miss: libcst must run
    monkeypatch.setattr(patching, "_FINAL_CODE", {})
    seen = []
    real_run_fixes = base.run_fixes

    def watching(*args, **kwargs):
        seen.append(gc.isenabled())
        if raises:
            raise RuntimeError("a fix failed")
        return real_run_fixes(*args, **kwargs)

    monkeypatch.setattr(base, "run_fixes", watching)
    assert gc.isenabled()
    if raises:
        with pytest.raises(RuntimeError, match="a fix failed"):
            _plan_needs_fix(hf_home)
    else:
        assert _plan_needs_fix(hf_home).changes
    assert seen and not any(seen), "the collector ran during the libcst run"
    assert gc.isenabled(), "the collector was left paused"


def test_a_paused_collector_stays_paused():
    import gc

    from florence_patch.patching import cyclic_gc_paused

    gc.disable()
    try:
        with cyclic_gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
