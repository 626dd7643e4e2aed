"""The toy world's own commands at their edges (issue 35, cases 5-7): weight files with a
wrong body, ``toy train-*`` arguments checked before the training starts, and a
``counterfactual`` stopped by SIGTERM, each one line and exit code 2 (143 for SIGTERM)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from flows.cli import main
from linkstyle_core.models.toy import toy_classifier_path
from tests.fixtures.snapshot import snapshot
from tests.fixtures.tiny_models import TINY_CONFIG

REPO = Path(__file__).resolve().parents[2]


def _lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def _damaged(tmp_path: Path, how: str) -> Path:
    payload = torch.load(toy_classifier_path(), map_location="cpu", weights_only=True)
    state = payload["state_dict"]
    name = next(k for k, v in state.items() if v.is_floating_point() and v.dim() == 4)
    if how == "no state_dict":
        del payload["state_dict"]
    elif how == "wrong shapes":
        state[name] = state[name][:, :1].clone()
    elif how == "missing tensors":
        del state[name]
    elif how == "nan":
        state[name] = state[name].clone().fill_(float("nan"))
    elif how == "bad config":
        payload["config"] = {"channels": "many"}
    path = tmp_path / f"{how.replace(' ', '-')}.pt"
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("how,words", [
    ("no state_dict", ["no state_dict", "retrain"]),
    ("wrong shapes", ["do not fit", "size mismatch", "retrain"]),
    ("missing tensors", ["do not fit", "Missing key", "retrain"]),
    ("nan", ["non-finite", "retrain"]),
    ("bad config", ["no usable model config", "retrain"]),
])
def test_a_damaged_toy_weight_file_is_one_line_in_validate_and_run(tmp_path, capsys, how,
                                                                   words) -> None:
    weights = _damaged(tmp_path, how)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"classifier": {"kind": "toy", "weights": str(weights)},
                                      "artifact_root": str(tmp_path / "root")}))
    for argv in (["config", "validate", str(config), "--models"],
                 ["run", "--config", str(config)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        lines = _lines(err)
        assert len(lines) == 1 and lines[0].startswith("linkstyle: error: classifier.weights"), err
        assert str(weights) in lines[0] and all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / "root").exists()  # refused before anything was written


@pytest.mark.parametrize("argv,words", [
    (["--steps", "0"], ["--steps", "got 0"]),
    (["--steps", "-5"], ["--steps", "got -5"]),
    (["--invariance", "nan"], ["--invariance", "finite"]),
    (["--invariance", "-1"], ["--invariance", "got -1"]),
    (["--invariance", "inf"], ["--invariance", "finite"]),
])
def test_train_classifier_arguments_are_checked_before_training(tmp_path, capsys, monkeypatch,
                                                                argv, words) -> None:
    import linkstyle_core.toyworld as toyworld

    monkeypatch.setattr(toyworld, "train_classifier", lambda *a, **k: pytest.fail("trained"))
    out = tmp_path / "c.pt"
    assert main(["toy", "train-classifier", "--out", str(out), *argv]) == 2
    lines = _lines(capsys.readouterr().err)
    assert len(lines) == 1 and all(w in lines[0] for w in words), lines
    assert list(tmp_path.iterdir()) == []


def test_train_out_is_checked_before_training_and_leaves_nothing(tmp_path, capsys,
                                                                 monkeypatch) -> None:
    import os

    import flows.outputs
    import linkstyle_core.toyworld as toyworld

    monkeypatch.setattr(toyworld, "train_classifier", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr(toyworld, "train_generator", lambda *a, **k: pytest.fail("trained"))
    folder = tmp_path / "weights"
    folder.mkdir()
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # a read-only folder (root may write anywhere, so the check's answer is what is faked)
    monkeypatch.setattr(flows.outputs.os, "access",
                        lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    root = tmp_path / "root"
    root.mkdir()
    (root / ".linkstyle-root.json").write_text('{"linkstyle_root": 1}')
    before = snapshot(tmp_path)
    for command, out, words in (("train-classifier", folder, ["is a folder", "file name"]),
                                ("train-generator", locked / "g.pt", ["permission denied"]),
                                ("train-classifier", root / "c.pt", ["artifact root"])):
        assert main(["toy", command, "--out", str(out)]) == 2
        lines = _lines(capsys.readouterr().err)
        assert len(lines) == 1 and all(w in lines[0] for w in words), lines
        assert "--root" not in lines[0]
    assert snapshot(tmp_path) == before


def test_training_that_diverges_writes_nothing(tmp_path) -> None:
    from linkstyle_core.toyworld.train import check_finite

    model = torch.nn.Linear(2, 2)
    check_finite(model, "lower it")  # finite: nothing to say
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="diverged.*weight.*nothing was written"):
        check_finite(model, "lower --invariance")


def test_a_counterfactual_stopped_by_sigterm_is_one_line(tmp_path) -> None:
    config = {**TINY_CONFIG, "artifact_root": str(tmp_path / "root"),
              "data": {"samples_per_class": 12, "test_samples_per_class": 12},
              "counterfactual": {"samples": 12, "max_steps": 100000, "check_every": 100000,
                                 "lr": 1e-6}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "counterfactual", "--config",
                             str(tmp_path / "c.yaml"), "--no-selectivity"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None \
                and not list((tmp_path / "root").glob("link/*/manifest.json")):
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(3.0)  # into the counterfactual task's optimisation
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = err.decode()
    assert proc.returncode == 143, text[-3000:]
    assert "Traceback" not in text and "StopRequested" not in text, text[-3000:]
    assert "terminated (SIGTERM); committed artifacts are kept" in text
    assert not list((tmp_path / "root").glob("counterfactual/*/manifest.json"))
