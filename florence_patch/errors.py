"""One error hierarchy; each error class carries the CLI exit code it maps to.

Exit codes (documented in the README):
  0 done
  1 a check failed: `--check` found copies that need a fix, or `verify` failed
  2 usage error (bad option or argument)
  3 not found: model, revision or path not in the cache
  4 unrecognized code: not Florence-2, unknown shape, syntax error, not UTF-8
  5 conflict: file changed since we patched it, backup missing or corrupt
  6 permission or I/O error: read-only file or directory, lock timeout
"""

from __future__ import annotations


class FlorencePatchError(Exception):
    exit_code = 1


class UsageError(FlorencePatchError):
    exit_code = 2


class NotFoundError(FlorencePatchError):
    exit_code = 3


class UnrecognizedError(FlorencePatchError):
    exit_code = 4


class ConflictError(FlorencePatchError):
    exit_code = 5


class AccessError(FlorencePatchError):
    exit_code = 6
