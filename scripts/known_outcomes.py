"""Write florence_patch/known_outcomes.json: fix outcomes for published Florence-2 remote code.

    .venv/bin/python scripts/known_outcomes.py /path/to/upstream [--check]

``/path/to/upstream`` holds one directory per published revision, each with that revision's
``*_florence2.py`` files (for instance extracted from a mirror of microsoft/Florence-2-large with
``git show REV:modeling_florence2.py``). The table records, for each file's sha256 and each fix
set a transformers version selects (and the full set), the outcome of every fix: hashes and
outcomes only, never code. Run it again whenever a fix changes (the table carries the digest of
the fixes it was made with and is ignored once that differs). ``--check`` writes nothing and
exits 1 when the file on disk differs from what would be written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from florence_patch.fixes import ALL_FIXES, OUTPUT_CLASS_FIX, select_fixes
from florence_patch.fixes.base import run_fixes
from florence_patch.outcome_cache import KNOWN_OUTCOMES_FILE, fixes_digest
from florence_patch.safe_io import atomic_write, sha256_bytes


def fix_sets() -> list[tuple]:
    """Every distinct default set (one per transformers version band), all fixes, and the output
    class alone (what `apply --fix output-class` runs, and the Florence-2 check of any other set)."""
    bounds = {"4.49.0"} | {v for f in ALL_FIXES for v in (f.min_transformers, f.max_transformers) if v}
    sets = {select_fixes(version) for version in bounds} | {ALL_FIXES, (OUTPUT_CLASS_FIX,)}
    return sorted(sets, key=lambda fixes: [f.id for f in fixes])


def build(upstream: Path) -> dict:
    outcomes: dict[str, list] = {}
    for revision in sorted(p for p in upstream.iterdir() if p.is_dir()):
        for path in sorted(revision.glob("*_florence2.py")):
            data = path.read_bytes()
            text = data.decode("utf-8-sig")
            for fixes in fix_sets():
                file_fixes = tuple(f for f in fixes if f.filename == path.name)
                if not file_fixes:
                    continue
                key = f"{sha256_bytes(data)}|{','.join(f.id for f in file_fixes)}"
                if key not in outcomes:
                    _, results = run_fixes(text, file_fixes)
                    outcomes[key] = [[r.outcome.value, r.reason] for r in results]
    return {
        "fixes_digest": fixes_digest(),
        "note": "sha256 of published Florence-2 remote-code files -> fix outcomes; made by scripts/known_outcomes.py",
        "outcomes": dict(sorted(outcomes.items())),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("upstream", type=Path)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    table = build(args.upstream)
    text = json.dumps(table, indent=1) + "\n"
    if args.check:
        current = KNOWN_OUTCOMES_FILE.read_text(encoding="utf-8") if KNOWN_OUTCOMES_FILE.exists() else ""
        if current != text:
            print(f"{KNOWN_OUTCOMES_FILE} is out of date: run scripts/known_outcomes.py {args.upstream}")
            return 1
        return 0
    atomic_write(KNOWN_OUTCOMES_FILE, text.encode("utf-8"))
    print(f"wrote {KNOWN_OUTCOMES_FILE} ({len(table['outcomes'])} entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
