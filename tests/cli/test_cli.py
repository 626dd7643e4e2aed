"""The command line: status, clean, config, and clear errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from flows.cli import main
from storage import ArtifactStore


def _committed_and_leftover(root: str) -> None:
    store = ArtifactStore(root)
    with store.writer("paired", "a" * 20) as w:
        w.write_array("w", np.zeros((3, 2)))
    with pytest.raises(RuntimeError):
        with store.writer("link", "b" * 20) as w:
            w.write_array("coef", np.zeros(2))
            raise RuntimeError("killed")


def test_status_lists_stage_key_status_and_size(tmp_path, capsys) -> None:
    root = str(tmp_path / "store")
    _committed_and_leftover(root)
    assert main(["status", "--root", root]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert lines["paired"][1:3] == ["a" * 20, "complete"]
    assert lines["link"][1:3] == ["b" * 20, "uncommitted"]


def test_clean_removes_leftovers_and_keeps_commits(tmp_path, capsys) -> None:
    root = str(tmp_path / "store")
    _committed_and_leftover(root)
    assert main(["clean", "--root", root, "--older-than", "0", "--dry-run"]) == 0
    assert "would remove 1 uncommitted leftover(s)" in capsys.readouterr().out
    assert main(["clean", "--root", root, "--older-than", "0"]) == 0
    assert "removed 1 uncommitted" in capsys.readouterr().out
    infos = ArtifactStore(root).list_artifacts()
    assert [(i.stage, i.status) for i in infos] == [("paired", "complete")]


def test_config_show_and_validate(tmp_path, capsys) -> None:
    assert main(["config", "show"]) == 0
    assert "kind: toy" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("link:\n  type: lasso\n")
    assert main(["config", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "link.type: Input should be 'lr', 'ridge' or 'elasticnet' (got 'lasso')" in err
    assert "Traceback" not in err


def test_console_script_is_installed() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "status" in out.stdout and "clean" in out.stdout


def test_command_line_overrides_are_validated(capsys) -> None:
    assert main(["counterfactual", "--samples", "0", "--root", "/tmp/unused"]) == 2
    err = capsys.readouterr().err
    assert "counterfactual.samples: Input should be greater than or equal to 1" in err


def test_config_validate_checks_the_file_and_with_models_the_models(tmp_path, capsys,
                                                                    monkeypatch) -> None:
    """Without --models only the file is checked (a missing network passes); with --models the
    network loads (the stand-in of a StyleGAN-XL snapshot, D left unloaded, which the command
    says), the models are checked against each other, and a missing file is named."""
    import yaml

    from tests.fixtures.stylegan_standin import (
        NETWORK_ENV,
        SOURCE_ENV,
        write_checkout,
        write_network,
    )

    source = write_checkout(tmp_path / "stylegan-xl")
    network = write_network(tmp_path / "net.pkl", source)
    monkeypatch.setenv(SOURCE_ENV, str(source))  # the stand-in classifier fits this network
    monkeypatch.setenv(NETWORK_ENV, str(network))
    config = {"generator": {"kind": "stylegan-xl", "network": str(network), "source": str(source),
                            "ops": "ref"},
              "classifier": {"kind": "python",
                             "target": "tests.fixtures.stylegan_standin:standin_classifier"},
              "runtime": {"device": "cpu"}, "artifact_root": str(tmp_path / "artifacts")}
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["config", "validate", str(path), "--models"]) == 0
    out, err = capsys.readouterr()
    assert "the stylegan-xl generator" in out and "load on cpu and fit each other" in out
    assert "segment.labels is not set yet" in out
    assert f"linkstyle: {network}: left D unloaded (only G_ema is used)" in err
    assert not (tmp_path / "artifacts").exists()  # checked, not created
    config["generator"]["network"] = str(tmp_path / "missing.pkl")
    path.write_text(yaml.safe_dump(config))
    assert main(["config", "validate", str(path)]) == 0  # the file itself is fine
    assert "--models also loads the models" in capsys.readouterr().out
    assert main(["config", "validate", str(path), "--models"]) == 2
    assert "missing.pkl" in capsys.readouterr().err


def test_labels_open_serves_on_localhost_until_ctrl_c(tmp_path) -> None:
    """`linkstyle labels open` as a person runs it: the address printed, the page served from
    127.0.0.1, a clean stop on Ctrl-C (SIGINT) with the masks kept."""
    import json
    import os
    import re
    import signal
    import urllib.request

    from tests.fixtures.tiny_models import TINY_CONFIG, tiny_label_folder

    folder = tiny_label_folder(tmp_path / "labels", count=3)
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(TINY_CONFIG))  # JSON is YAML
    env = {**os.environ, "DISPLAY": "", "WAYLAND_DISPLAY": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "labels", "open", "--config", str(config), folder],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.search(r"at (http://127\.0\.0\.1:(\d+)/)", first)
        assert match, first + proc.stderr.read()
        assert "3 images, 3 labelled" in first
        assert "open that address in a browser" in proc.stdout.readline()
        with urllib.request.urlopen(match.group(1) + "api/state", timeout=60) as response:
            state = json.load(response)
        assert state["labelled"] == [0, 1, 2] and state["parts"][1] == "bright"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err  # interrupted, as every command (main's docstring)
    assert "stopped; 3 of 3 images labelled" in out and "Traceback" not in err
