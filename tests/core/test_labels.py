"""Label folders for real generators: export, import, and the errors a person can make."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from linkstyle_core.labels import (
    LabelError,
    export_folder,
    import_folder,
    load_folder,
    overlay,
    part_colours,
    save_mask,
)
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


def test_export_writes_a_preview_per_image(tmp_path) -> None:
    export_folder(tiny_generator(), tmp_path, 3, ["background", "a", "b"], seed=0, truncation=1.0)
    for i in range(3):
        preview = np.asarray(Image.open(tmp_path / "preview" / f"{i:04d}.png"))
        image = np.asarray(Image.open(tmp_path / "images" / f"{i:04d}.png"))
        assert np.array_equal(preview, image)  # empty masks: nothing tinted yet


def test_save_mask_is_checked_atomic_and_writes_its_preview(tmp_path) -> None:
    export_folder(tiny_generator(), tmp_path, 3, ["background", "a", "b"], seed=0, truncation=1.0)
    mask = np.zeros((RES, RES), np.uint8)
    mask[:3] = 2
    mask[5:, 2:4] = 1
    others = [(tmp_path / f"labels/{i:04d}.png").read_bytes() for i in (0, 2)]
    save_mask(tmp_path, 1, mask)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "labels/0001.png")), mask)
    assert [(tmp_path / f"labels/{i:04d}.png").read_bytes() for i in (0, 2)] == others
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == \
        ["0000.png", "0001.png", "0002.png"]  # no temporary file left behind
    image = np.asarray(Image.open(tmp_path / "images/0001.png").convert("RGB"))
    preview = np.asarray(Image.open(tmp_path / "preview/0001.png"))
    assert np.array_equal(preview, overlay(image, mask, 3))
    # a labelled pixel moves towards its part's colour; a background pixel stays as it was
    colours = part_colours(3).astype(int)
    assert np.abs(preview[0, 0].astype(int) - colours[2]).sum() \
        < np.abs(image[0, 0].astype(int) - colours[2]).sum()
    assert np.array_equal(preview[4, 0], image[4, 0])
    before = (tmp_path / "labels/0001.png").read_bytes()
    for index, bad, words in ((3, mask, "has no exported image 3"),
                              (-1, mask, "has no exported image -1"),
                              (1, mask[:-1], "the image is 8x8"),
                              (1, mask + 1, "uses label 3 but parts.json names only 3")):
        with pytest.raises(LabelError, match=words):
            save_mask(tmp_path, index, bad)
    assert (tmp_path / "labels/0001.png").read_bytes() == before


def test_import_counts_pixels_and_refuses_a_part_no_image_labels(tmp_path) -> None:
    folder = _labelled(tmp_path)
    summary = import_folder(folder, RES)
    labels = load_folder(folder)[1].numpy()
    assert summary["pixels_per_part"] == {
        p: int((labels == i).sum()) for i, p in enumerate(["background", "bright", "dark"])}
    assert summary["images_per_part"]["background"] == 3
    for path in sorted((folder / "labels").glob("*.png")):
        mask = np.asarray(Image.open(path)).copy()
        mask[mask == 2] = 1
        mask[0, 0] = 1
        Image.fromarray(mask, mode="L").save(path)
    with pytest.raises(LabelError, match=r"part 'dark' \(label 2\) is labelled in none of the 3 "
                                         r"masks; label it where it shows, or remove it"):
        import_folder(folder, RES)
