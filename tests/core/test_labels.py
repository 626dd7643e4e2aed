"""Label folders for real generators: export, import, and the errors a person can make."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from linkstyle_core.labels import LabelError, export_folder, import_folder, load_folder
from tests.fixtures.tiny_models import RES, tiny_generator, tiny_label_folder


def test_export_writes_images_latents_and_empty_masks(tmp_path) -> None:
    export_folder(tiny_generator(), tmp_path, 4, ["background", "a", "b"], seed=0, truncation=1.0)
    assert len(list((tmp_path / "images").glob("*.png"))) == 4
    assert np.load(tmp_path / "latents.npy").shape == (4, 2, 6)
    mask = np.asarray(Image.open(tmp_path / "labels" / "0000.png"))
    assert mask.shape == (RES, RES) and mask.max() == 0
    with pytest.raises(LabelError, match="masks contain only background"):
        import_folder(tmp_path, RES)


def test_import_round_trip(tmp_path) -> None:
    folder = tiny_label_folder(tmp_path / "labels", count=6)
    ws, labels, parts, digest = load_folder(folder)
    assert ws.shape == (6, 2, 6) and labels.shape == (6, RES, RES)
    assert parts == ["background", "bright", "dark"] and len(digest) == 20
    assert int(labels.max()) <= 2


def _labelled(tmp_path):
    folder = tmp_path / "labels"
    tiny_label_folder(folder, count=3)
    return folder


def test_a_label_outside_the_part_list_is_refused(tmp_path) -> None:
    folder = _labelled(tmp_path)
    Image.fromarray(np.full((RES, RES), 7, np.uint8), mode="L").save(folder / "labels/0001.png")
    with pytest.raises(LabelError, match=r"0001\.png uses label 7 but parts\.json names only 3"):
        import_folder(folder, RES)


def test_wrong_size_and_colour_masks_are_refused(tmp_path) -> None:
    folder = _labelled(tmp_path)
    Image.fromarray(np.ones((RES * 2, RES * 2), np.uint8), mode="L").save(
        folder / "labels/0000.png")
    with pytest.raises(LabelError, match=r"0000\.png is 16x16, the generator renders 8x8"):
        import_folder(folder, RES)
    Image.fromarray(np.ones((RES, RES, 3), np.uint8)).save(folder / "labels/0000.png")
    with pytest.raises(LabelError, match="is not an index mask"):
        import_folder(folder, RES)


def test_missing_masks_and_missing_import_are_explained(tmp_path) -> None:
    folder = _labelled(tmp_path)
    (folder / "labels/0002.png").unlink()
    with pytest.raises(LabelError, match="holds 2 masks for 3 exported images"):
        import_folder(folder, RES)
    with pytest.raises(LabelError, match="run `linkstyle labels import"):
        load_folder(tmp_path / "nowhere")
    with pytest.raises(LabelError, match="parts.json is missing"):
        import_folder(tmp_path / "nowhere", RES)
