"""Measurements on synthetic label maps with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from linkstyle_core.measure import MEASURES, luminance, optical_flow, part_measures, part_motion

H = W = 64
YS, XS = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")


def _ellipse(cx: float, cy: float, a: float, b: float, degrees: float) -> torch.Tensor:
    """Filled ellipse, semi-axes a (major) and b, major axis rotated counter-clockwise as seen
    on screen (image y points down)."""
    th = math.radians(degrees)
    dx, dy = XS - cx, -(YS - cy)
    u = dx * math.cos(th) + dy * math.sin(th)
    v = -dx * math.sin(th) + dy * math.cos(th)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def _measure(mask: torch.Tensor, value: float = 0.5, parts: int = 3) -> dict[str, float]:
    img = torch.full((1, 3, H, W), -1.0)
    img[:, :, mask] = value
    m = part_measures(img, mask.long()[None], parts)
    return dict(zip(MEASURES, m[0, 1].tolist(), strict=True))


def test_disc_area_centre_and_axes() -> None:
    m = _measure(_ellipse(40, 24, 10, 10, 0))
    assert m["area"] == pytest.approx(math.pi * 100 / (H * W), rel=0.03)
    # the only foreground part: its centre is the creature's centre
    assert (m["cx"], m["cy"]) == (pytest.approx(0, abs=1e-4), pytest.approx(0, abs=1e-4))
    assert m["width"] == pytest.approx(20, rel=0.03) and m["height"] == pytest.approx(20, rel=0.03)
    assert m["eccentricity"] < 0.1


@pytest.mark.parametrize("degrees", [0.0, 30.0, 75.0, -45.0])
def test_ellipse_axes_eccentricity_and_angle(degrees: float) -> None:
    m = _measure(_ellipse(32, 30, 14, 7, degrees))
    assert m["width"] == pytest.approx(28, rel=0.04)
    assert m["height"] == pytest.approx(14, rel=0.06)
    assert m["eccentricity"] == pytest.approx(math.sqrt(1 - 0.25), abs=0.02)
    assert m["angle"] == pytest.approx(degrees, abs=2.5)


def test_centres_are_relative_to_the_foreground() -> None:
    labels = _ellipse(40, 24, 6, 6, 0).long() + 2 * _ellipse(20, 40, 6, 6, 0).long()
    m = part_measures(torch.zeros(1, 3, H, W), labels[None], 3)[0]
    cx, cy = MEASURES.index("cx"), MEASURES.index("cy")
    # two equal discs: the creature's centroid lies halfway, at (30, 32)
    assert (float(m[1, cx]), float(m[1, cy])) == (pytest.approx(10, abs=1e-3),
                                                  pytest.approx(-8, abs=1e-3))
    assert (float(m[2, cx]), float(m[2, cy])) == (pytest.approx(-10, abs=1e-3),
                                                  pytest.approx(8, abs=1e-3))
    # shifting the whole creature changes no part's centre
    shifted = part_measures(torch.zeros(1, 3, H, W), labels.roll((3, -5), (0, 1))[None], 3)[0]
    torch.testing.assert_close(shifted[1:, [cx, cy]], m[1:, [cx, cy]])


def test_luminance_and_entropy() -> None:
    mask = _ellipse(32, 32, 12, 12, 0)
    flat = _measure(mask, value=0.0)  # grey 0.5 in [0, 1]
    assert flat["luminance"] == pytest.approx(0.5, abs=1e-6)
    assert flat["entropy"] == pytest.approx(0.0, abs=1e-6)
    img = torch.full((1, 3, H, W), -1.0)
    img[:, :, mask] = 1.0
    img[:, :, mask & (XS < 32)] = -1.0  # half black, half white: one bit of entropy
    m = part_measures(img, mask.long()[None], 2)[0, 1]
    assert m[MEASURES.index("entropy")] == pytest.approx(1.0, abs=0.02)
    assert m[MEASURES.index("luminance")] == pytest.approx(0.5, abs=0.03)
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert luminance(red)[0, 0, 0] == pytest.approx(0.299)


@pytest.mark.parametrize(("rgb", "red_green", "yellow_blue"), [
    ((1.0, 0.0, 0.0), 1.0, 0.5), ((0.0, 1.0, 0.0), -1.0, 0.5), ((0.0, 0.0, 1.0), 0.0, -1.0),
    ((1.0, 1.0, 0.0), 0.0, 1.0), ((0.5, 0.5, 0.5), 0.0, 0.0),
])
def test_opponent_colour_of_a_part(rgb: tuple[float, float, float], red_green: float,
                                   yellow_blue: float) -> None:
    mask = _ellipse(32, 32, 12, 12, 0)
    img = torch.full((1, 3, H, W), -1.0)  # black background, its own part 0
    img[:, :, mask] = (torch.tensor(rgb) * 2 - 1).view(3, 1)
    m = dict(zip(MEASURES, part_measures(img, mask.long()[None], 2)[0, 1].tolist(), strict=True))
    assert m["red_green"] == pytest.approx(red_green, abs=1e-5)
    assert m["yellow_blue"] == pytest.approx(yellow_blue, abs=1e-5)


def test_absent_parts_are_nan_but_have_zero_area() -> None:
    m = part_measures(torch.zeros(2, 3, H, W), torch.zeros(2, H, W, dtype=torch.long), 3)
    assert m.shape == (2, 3, len(MEASURES))
    assert (m[:, 1:, 0] == 0).all() and torch.isnan(m[:, 1:, 1:]).all()
    assert m[:, 0, 0].tolist() == [1.0, 1.0]


def test_batched_measures_match_single_images() -> None:
    masks = torch.stack([_ellipse(20, 20, 8, 5, 10), _ellipse(40, 35, 12, 9, -30)]).long()
    imgs = torch.rand(2, 3, H, W) * 2 - 1
    both = part_measures(imgs, masks, 2)
    for i in range(2):
        torch.testing.assert_close(both[i], part_measures(imgs[i:i + 1], masks[i:i + 1], 2)[0],
                                   equal_nan=True)


def test_flow_follows_a_moving_disc() -> None:
    def scene(cx: float, cy: float) -> torch.Tensor:
        disc = ((XS - cx) ** 2 + (YS - cy) ** 2 <= 100).float()
        texture = 0.3 * torch.sin((XS - cx) / 2) * torch.cos((YS - cy) / 3)  # moves along
        return (disc * (0.6 + texture) * 2 - 1)[None, None].expand(1, 3, H, W)

    still = optical_flow(scene(30, 32), scene(30, 32))
    assert still.abs().max() < 1e-3
    flow = optical_flow(scene(30, 32), scene(33, 30))
    disc = (((XS - 30) ** 2 + (YS - 32) ** 2) <= 49)
    u, v = flow[0, 0][disc].mean(), flow[0, 1][disc].mean()
    assert u == pytest.approx(3.0, abs=0.8) and v == pytest.approx(-2.0, abs=0.8)
    labels = (((XS - 30) ** 2 + (YS - 32) ** 2) <= 100).long()[None]
    motion = part_motion(flow, labels, 3)
    # the disc is the whole creature: moving it is not a part's own motion
    assert motion[0, 1] < 0.5
    assert torch.isnan(motion[0, 2])


def test_part_motion_is_relative_to_the_creature() -> None:
    labels = torch.zeros(1, H, W, dtype=torch.long)
    labels[0, 10:20, 10:20] = 1  # 100 px part that moves
    labels[0, 30:50, 20:40] = 2  # 400 px part that stays
    flow = torch.zeros(1, 2, H, W)
    flow[0, 0][labels[0] == 1], flow[0, 1][labels[0] == 1] = 3.0, -4.0
    motion = part_motion(flow, labels, 3)
    # the foreground drifts by a fifth of (3, -4); each part moves relative to that drift
    assert motion[0, 1] == pytest.approx(0.8 * 5.0, abs=1e-5)
    assert motion[0, 2] == pytest.approx(0.2 * 5.0, abs=1e-5)
    # moving the whole creature alike moves no part
    flow[0, 0], flow[0, 1] = 3.0, -4.0
    assert part_motion(flow, labels, 3)[0, 1:].abs().max() < 1e-5
