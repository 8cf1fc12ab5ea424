"""The bottom layer of gankd.serve, which every package may import: the timing loop, seed_z, GCFSR's low-quality
input, the port checks, the atomic write and file hash, PSNR and the error root. Each lives once, and the callers
that had copies use it."""

from __future__ import annotations

import errno
import math
import os
import socket
import stat

import numpy as np
import pytest
import torch

from gankd.serve import faces as serve_faces
from gankd.serve.errors import GankdError, ServeError
from gankd.serve.files import atomic_write
from gankd.serve.ports import check_port_free, port_message
from gankd.serve.psnr import PSNR_CAP_DB, psnr, psnr_db
from gankd.serve.timing import measure_interleaved, timed_ms
from helpers.clock import FakeClock

# ----------------------------------------------------------------------------------------------- timing


def test_duration_rounds_are_bounded_by_min_and_max_rounds():
    clock = FakeClock()
    slow = measure_interleaved([clock.workload(0, 400.0)], warmup_ms=0, duration_s=0.1, iterations=None,
                               min_rounds=3, max_rounds=15, clock=clock)
    assert len(slow[0]) == 3  # over the duration after one round, but at least min_rounds
    clock = FakeClock()
    fast = measure_interleaved([clock.workload(0, 1.0)], warmup_ms=0, duration_s=10.0, iterations=None,
                               min_rounds=3, max_rounds=15, clock=clock)
    assert len(fast[0]) == 15 and fast[0] == pytest.approx([1.0] * 15)


def test_no_warm_up_when_the_caller_warmed_up():
    clock = FakeClock()
    measure_interleaved([clock.workload(0, 5.0), clock.workload(1, 5.0)], warmup_ms=None, duration_s=None,
                        iterations=2, clock=clock)
    assert clock.calls == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="either a duration or a number of iterations"):
        measure_interleaved([lambda: None], warmup_ms=0, duration_s=None, iterations=None)


def test_timed_ms_returns_the_result_and_a_duration(monkeypatch):
    from gankd.serve import timing

    clock = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    slow_add = clock.workload(0, 7.5)
    result, ms = timed_ms(lambda a, b=0: (slow_add(), a + b)[1], 2, b=3)
    assert result == 5 and ms == pytest.approx(7.5)


def test_the_latency_loops_time_through_serve_timing():
    from gankd.distill.tools import bench_step, inspect_model, search
    from gankd.export import bench
    from gankd.serve import auto, timing

    assert bench.measure_interleaved is timing.measure_interleaved
    for module in (auto, bench_step, inspect_model, search):
        assert module.measure_interleaved is timing.measure_interleaved, module.__name__
    calls = []
    search._median_ms(lambda: calls.append(0), 4, 6, 0.0)  # min_runs / max_runs map onto min/max rounds
    assert len(calls) == 1 + 4  # one warm-up run, then min_runs: the duration (0 s) is over after the first


# ----------------------------------------------------------------------------------------------- seed_z


def test_one_seed_z():
    from gankd.export import tasks
    from gankd.serve import session

    assert tasks.seed_z is session.seed_z
    z = session.seed_z([3, 4], 8)
    assert z.shape == (2, 8) and z.dtype == np.float32
    assert np.array_equal(z[0], np.random.default_rng(3).standard_normal(8, dtype=np.float32))


# ----------------------------------------------------------------------------------------------- gcfsr_lq


def _factors_in_use() -> list[float]:
    """Every factor the code degrades faces by: the training lists, the recipe's validation scales, the export's
    parity scales and the demo's slider (4 to 64, step 4)."""
    from gankd.distill.data.faces import DEFAULT_FACTORS, FACTORS_1024
    from gankd.distill.train.recipe import Recipe
    from gankd.export.tasks import FACE_SCALES
    from gankd.serve.app import FACE_SCALES as SLIDER

    slider = range(SLIDER[0], SLIDER[1] + 1, 4)
    recipe_scales = Recipe.__dataclass_fields__["val_scales"].default_factory()
    return sorted({*DEFAULT_FACTORS, *FACTORS_1024, *FACE_SCALES, *slider, *recipe_scales})


FACE_SIZE = 64  # the face SR tests' size: every factor in use divides into it or takes the S / small-side path


def _face(size: int = FACE_SIZE) -> np.ndarray:
    from gankd.distill.data.faces import astronaut_face

    return astronaut_face(size).numpy()  # 3 x S x S in [0, 1]


@pytest.mark.parametrize("factor", _factors_in_use())
def test_gcfsr_lq_at_every_factor_in_use(factor):
    from gankd.distill.data.faces import gcfsr_lq

    face = _face()
    lq = serve_faces.lq_planes(face, factor)
    assert lq.shape == face.shape and lq.min() >= 0 and lq.max() <= 1
    assert np.array_equal(lq, np.rint(lq * 255) / 255)  # on the 8-bit grid
    hwc = serve_faces.gcfsr_lq(face.transpose(1, 2, 0), factor)  # what Session.restore_face feeds the model
    assert hwc.dtype == np.float32 and np.array_equal(hwc, lq.transpose(1, 2, 0).astype(np.float32))
    if FACE_SIZE % factor == 0:  # distill's torch path (integer factors that divide S): the same numbers
        hr = torch.from_numpy(face)[None] * 2 - 1
        ours = ((gcfsr_lq(hr, int(factor)) + 1) / 2)[0].numpy()
        assert np.abs(ours - lq).max() <= 1e-6


@pytest.mark.parametrize("factor", _factors_in_use())
def test_gcfsr_lq_matches_basicsr_imresize_at_every_factor(factor):
    """GCFSR's own recipe, built from basicsr's MATLAB imresize: down by the factor, up to S, 8-bit. At GCFSR's
    512 px: basicsr's symmetric border reflects once only, so it cannot shrink 64 px by 40 or more."""
    from basicsr.utils import matlab_functions as matlab  # basicsr-fixed is part of gankd[all]: no skip
    size = 512
    face = torch.from_numpy(_face(size)).double()
    small = matlab.imresize(face, 1 / factor)
    up_scale = factor if small.shape[-1] * factor == size else size / small.shape[-1]
    reference = torch.clamp(torch.round(matlab.imresize(small, up_scale) * 255), 0, 255).numpy()  # 8-bit levels
    ours = np.rint(serve_faces.lq_planes(face.numpy(), factor) * 255)
    assert reference.shape == ours.shape
    assert np.abs(ours - reference).max() <= 1  # at most a rounding tie apart (basicsr computes in float32)
    assert np.mean(ours != reference) < 0.01


def test_gcfsr_lq_loses_more_detail_at_larger_factors():
    face = _face()
    errors = [np.abs(serve_faces.lq_planes(face, f) - face).mean() for f in (4, 8, 16, 32, 64)]
    assert errors == sorted(errors)


# ----------------------------------------------------------------------------------------------- port check


def test_one_port_check_for_the_demo_and_triton():
    from gankd.serve import app, triton

    assert triton.check_port_free is check_port_free
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServeError) as caught:
            check_port_free("127.0.0.1", port, hint=app.PORT_HINT)
        assert str(caught.value) == (f"port {port} on 127.0.0.1 is in use (another gankd-demo?); pass --port "
                                     "with a free one")
        with pytest.raises(ServeError, match=f"^port {port} on 127.0.0.1 is in use; pass --http-port with a free"):
            check_port_free("127.0.0.1", port, "--http-port")
    check_port_free("127.0.0.1", port)  # free again
    assert port_message("h", 1, OSError("Cannot find empty port in range")).startswith("port 1 on h is in use")
    assert port_message("h", 1, OSError(errno.EACCES, "Permission denied")) == "cannot listen on h:1: " \
                                                                               "[Errno 13] Permission denied"


# ----------------------------------------------------------------------------------------------- atomic write


def test_atomic_write_bytes_text_and_a_writer(tmp_path):
    atomic_write(tmp_path / "a.bin", b"\x00\x01")
    atomic_write(tmp_path / "b.txt", "é\n")
    atomic_write(tmp_path / "c.npy", lambda path: np.save(path, np.arange(3)))  # the name keeps the suffix
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01" and (tmp_path / "b.txt").read_text("utf-8") == "é\n"
    assert np.array_equal(np.load(tmp_path / "c.npy"), np.arange(3))
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o666 & ~mask  # as open() makes it


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")

    def crash(path):
        path.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_a_symlink_is_replaced_not_written_through(tmp_path):
    (tmp_path / "elsewhere").write_text("keep")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    atomic_write(tmp_path / "link", "new")
    assert (tmp_path / "elsewhere").read_text() == "keep" and not (tmp_path / "link").is_symlink()


def test_every_durable_writer_fsyncs(tmp_path, monkeypatch):
    from gankd.distill import ModelConfig, save_model
    from gankd.distill.train.run_state import Progress, load_state, save_state

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    atomic_write(tmp_path / "cache.json", "{}", fsync=False)
    assert synced == []
    save_state(tmp_path / "state" / "last.pt", {}, {}, Progress())
    assert len(synced) == 2  # the file, then its folder (the rename)
    assert load_state(tmp_path / "state" / "last.pt", {}, {}).position.step == 0
    config = ModelConfig(arch="srvgg_compact", kwargs={"num_feat": 4, "num_conv": 1, "upscale": 2}, task="sr",
                         scale=2)
    save_model(tmp_path / "model", config.build(), config)
    written = len(list((tmp_path / "model").iterdir()))  # weights, checksum, config
    assert len(synced) == 2 + 2 * written  # each file and, for its rename, its folder
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors",
                                                                       "model.safetensors.sha256"]


# ----------------------------------------------------------------------------------------------- PSNR


def test_psnr_db_on_floats_arrays_and_tensors():
    assert psnr_db(0.01) == pytest.approx(20.0) and psnr_db(0.0) == math.inf
    assert psnr_db(1.0, peak=255.0) == pytest.approx(20 * math.log10(255))
    arr = psnr_db(np.array([0.01, 0.0001, 0.0]))
    assert arr == pytest.approx([20.0, 40.0, math.inf])
    ten = psnr_db(torch.tensor([0.01, 0.0001, 0.0], dtype=torch.float64))
    assert isinstance(ten, torch.Tensor) and ten.tolist() == pytest.approx([20.0, 40.0, math.inf])
    a, b = np.zeros((2, 3)), np.full((2, 3), 0.1)
    assert psnr(a, b) == pytest.approx(20.0) == psnr(torch.from_numpy(a), torch.from_numpy(b))
    assert psnr(a, a) == math.inf


def test_the_psnr_wrappers_share_the_formula():
    from gankd.distill import metrics
    from gankd.distill.models import surgery
    from gankd.export import parity
    from gankd.serve import app, backends

    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = (x + 0.05 * torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    q = (lambda t: torch.round(t * 255))  # metrics.psnr scores 8-bit values
    per_image = [psnr(q(x[i]).numpy(), q(y[i]).numpy(), peak=255.0) for i in range(2)]
    assert metrics.psnr(x, y).tolist() == pytest.approx(per_image)
    assert metrics.PSNR_CAP_DB == parity.PSNR_CAP_DB == PSNR_CAP_DB
    assert surgery._psnr(y, x) == pytest.approx(psnr(x.numpy().astype(np.float64), y.numpy()), rel=1e-5)
    assert parity.compare(x.numpy(), y.numpy()) == backends.compare_outputs(x.numpy(), y.numpy(), (0.0, 1.0))
    assert parity.compare(x.numpy(), x.numpy())[1] == PSNR_CAP_DB
    assert app._psnr_text(x.numpy(), y.numpy()) == f"{psnr(x.numpy(), y.numpy()):.2f} dB"
    assert app._psnr_text(x.numpy(), x.numpy()) == "inf dB (identical)"


# ----------------------------------------------------------------------------------------------- errors


def test_one_error_hierarchy():
    from gankd import distill
    from gankd.distill.errors import RunInterrupted
    from gankd.serve.errors import OverBudget

    assert distill.GankdError is GankdError
    assert issubclass(ServeError, GankdError) and issubclass(OverBudget, ServeError)
    assert issubclass(RunInterrupted, GankdError) and not issubclass(RunInterrupted, ServeError)
    assert str(ServeError("two\n  lines")) == "two lines"  # one line, as GankdError always made it
    budget = OverBudget("stopped", 2, 5)
    assert (str(budget), budget.done, budget.total) == ("stopped", 2, 5)


def test_a_serve_error_reaches_the_export_cli_as_one_line(tmp_path, capsys):
    from gankd.export.cli import bench_main

    assert bench_main([str(tmp_path)]) == 2  # the manifest reader's ServeError, unconverted
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "manifest.json is missing" in err and err.count("\n") == 1


def test_publish_folder_swaps_whole_folders_and_keeps_the_old_one_on_failure(tmp_path, monkeypatch):
    from gankd.serve.files import publish_folder

    target = tmp_path / "art"
    first = tmp_path / ".stage1"
    first.mkdir()
    (first / "a.txt").write_text("one")
    publish_folder(first, target)
    assert (target / "a.txt").read_text() == "one" and not first.exists()
    second = tmp_path / ".stage2"
    second.mkdir()
    (second / "b.txt").write_text("two")
    publish_folder(second, target)
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # the old folder is gone, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # nothing left aside
    third = tmp_path / ".stage3"
    third.mkdir()
    real_rename = type(third).rename

    def failing(self, dest):
        if self == third:
            raise OSError("disk full")
        return real_rename(self, dest)

    monkeypatch.setattr(type(third), "rename", failing)
    with pytest.raises(OSError, match="disk full"):
        publish_folder(third, target)
    assert (target / "b.txt").read_text() == "two"  # what was saved is back in place
