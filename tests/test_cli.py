"""The CLI as a user runs it: the installed console scripts in a subprocess, one-line errors, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gankd.distill import create_model, load_model
from gankd.distill.cli import main

BIN = Path(sys.executable).parent


def _run(*args, check=False):
    exe = shutil.which("gankd-distill", path=str(BIN)) or shutil.which("gankd-distill")
    assert exe, "the gankd-distill console script is not installed"
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def tiny_pth(tmp_path):
    sd = create_model("rrdbnet", num_feat=16, num_block=2, num_grow_ch=8).state_dict()
    torch.save({"params_ema": sd}, tmp_path / "tiny_x4.pth")
    return tmp_path / "tiny_x4.pth"


def test_help_lists_commands():
    out = _run("--help", check=True).stdout
    assert "import-teacher" in out and "inspect" in out


def test_import_then_inspect(tiny_pth, tmp_path):
    out_dir = tmp_path / "teachers" / "tiny"
    proc = _run("import-teacher", "--from", "pth", str(tiny_pth), "--out", str(out_dir), check=True)
    assert "rrdbnet" in proc.stdout and out_dir.joinpath("model.safetensors").is_file()
    assert load_model(out_dir).gankd_config.kwargs["num_block"] == 2
    table = _run("inspect", str(out_dir), "--input", "1x3x32x32", check=True).stdout
    for row in ("model", "C=1/2", "C=1/4", "C=1/8", "SRVGG-32", "GMACs"):
        assert row in table
    data = json.loads(_run("inspect", str(out_dir), "--json", check=True).stdout)
    assert data["rows"][0]["params"] == sum(p.numel() for p in load_model(out_dir).parameters())


def test_import_refuses_to_overwrite(tiny_pth, tmp_path):
    out_dir = tmp_path / "t"
    assert main(["import-teacher", "--from", "pth", str(tiny_pth), "--out", str(out_dir)]) == 0
    before = (out_dir / "model.safetensors").read_bytes()
    proc = _run("import-teacher", "--from", "pth", str(tiny_pth), "--out", str(out_dir))
    assert proc.returncode == 2 and "already exists and is not empty; pass --force" in proc.stderr
    assert (out_dir / "model.safetensors").read_bytes() == before
    assert main(["import-teacher", "--from", "pth", str(tiny_pth), "--out", str(out_dir), "--force"]) == 0


def test_errors_are_one_line_and_nonzero(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model folder") and err.count("\n") == 1
    assert main(["import-teacher", "--from", "pth", str(tmp_path / "x.pth"), "--out", str(tmp_path / "o")]) == 2
    assert "x.pth' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_shape_option():
    proc = _run("inspect", ".", "--input", "64x64")
    assert proc.returncode == 2 and "NxCxHxW" in proc.stderr


def test_demo_script_lists_serve_and_upscale_and_checks_folders(tmp_path):
    exe = shutil.which("gankd-demo", path=str(BIN))
    assert exe
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "serve" in help_text and "upscale" in help_text
    proc = subprocess.run([exe, str(tmp_path / "missing"), "--port", "7999"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr


@pytest.mark.parametrize("script, words", [("gankd-export", ("--formats", "--int8", "--opt-shape")),
                                           ("gankd-bench", ("--backends", "--shapes", "--warmup-ms"))])
def test_export_and_bench_scripts_are_built(script, words):
    exe = shutil.which(script, path=str(BIN))
    assert exe
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert all(word in help_text for word in words)
    proc = subprocess.run([exe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Missing argument" in proc.stderr


def test_import_from_ncnn_files_and_inspect_a_discriminator(tmp_path):
    from helpers.ncnn_writer import write_ncnn

    param = write_ncnn(create_model("srvgg_compact", num_feat=8, num_conv=2), tmp_path / "ncnn" / "tiny-x4")
    assert main(["import-teacher", "--from", "ncnn", str(param), "--out", str(tmp_path / "s")]) == 0
    assert load_model(tmp_path / "s").gankd_config.arch == "srvgg_compact"

    torch.save({"params": create_model("unet_discriminator_sn", num_feat=8).state_dict()}, tmp_path / "netD.pth")
    proc = _run("import-teacher", "--from", "pth", str(tmp_path / "netD.pth"), "--out", str(tmp_path / "d"),
                check=True)
    assert "unet_discriminator_sn" in proc.stdout and "xNone" not in proc.stdout
    table = _run("inspect", str(tmp_path / "d"), "--input", "1x3x64x64", check=True).stdout
    assert "C=1/4" in table and "SRVGG" not in table
