"""The smaller one-line cases of issue 14, through the real `gankd-distill` CLI: a random binary and a plain pickle
given as .pth, a run that fails its checks before starting (it leaves nothing behind) and a damaged run state
(the error says what to do)."""

from __future__ import annotations

import pickle

import yaml

from gankd.distill.cli import main as distill_main


def _cli_error(argv, capsys) -> str:
    assert distill_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err  # one line: no warning, no traceback
    return err


def test_random_binary_pth_is_called_corrupted(tmp_path, capsys):
    (tmp_path / "random.pth").write_bytes(bytes(range(7, 256)) * 16)
    err = _cli_error(["import-teacher", "--from", "pth", str(tmp_path / "random.pth"), "--out", str(tmp_path / "t")],
                     capsys)
    assert "is truncated or corrupted (not a torch.save checkpoint" in err
    assert "needs more than tensors" not in err


def test_plain_pickle_pth_is_one_line_without_a_torch_warning(tmp_path, capsys, recwarn):
    with open(tmp_path / "plain.pth", "wb") as handle:
        pickle.dump({"params": {"w": [1.0, 2.0]}}, handle)  # protocol 4/5: torch.load would warn about it
    err = _cli_error(["import-teacher", "--from", "pth", str(tmp_path / "plain.pth"), "--out", str(tmp_path / "t")],
                     capsys)
    assert "is a plain Python pickle, not a torch.save checkpoint" in err
    assert not [w for w in recwarn if "pickle" in str(w.message).lower()]


def _recipe(tmp_path, teacher) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "r", "teacher": str(teacher), "out_dir": str(tmp_path / "run"),
                                    "n1": 0, "n2": 0, "n3": 1, "steps_per_epoch": 1, "threads": 1}))
    return str(path)


def test_a_run_that_fails_its_checks_leaves_no_run_folder(tmp_path, capsys):
    err = _cli_error(["run", _recipe(tmp_path, tmp_path / "no_teacher")], capsys)
    assert "no_teacher" in err
    assert not (tmp_path / "run").exists()  # no folder, so no config.resolved.yaml either


def test_damaged_run_state_says_what_to_do(tmp_path, capsys):
    state = tmp_path / "run" / "state" / "last.pt"
    state.parent.mkdir(parents=True)
    state.write_bytes(b"PK\x03\x04 half a checkpoint")
    err = _cli_error(["run", _recipe(tmp_path, tmp_path / "no_teacher"), "--resume"], capsys)
    assert "unreadable run state" in err
    assert "restore that file from a copy, or move" in err and "start the run again without --resume" in err
