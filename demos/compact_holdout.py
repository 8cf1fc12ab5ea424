"""Students against the teacher and against what a user could download instead, on photos nothing was tuned on:
now the command ``gankd-distill eval``; this script forwards its arguments to it.

    python demos/compact_holdout.py TEACHER_DIR MODEL_DIR [MODEL_DIR ...] [gankd-distill eval options]
    # is
    gankd-distill eval TEACHER_DIR MODEL_DIR [MODEL_DIR ...] [--images DIR] [--degrade clean,jpeg,...] [--out DIR]

See ``gankd-distill eval --help`` and docs/compact.md ("Measure students on your own photos").
"""

from __future__ import annotations

import sys

from gankd.distill.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
