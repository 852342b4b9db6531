"""SSD training augmentation (ssd.pytorch's SSDAugmentation, ``data.augment: ssd``): geometry by hand, determinism."""

from __future__ import annotations

import colorsys

import torch

from detbin.data.ssd_augment import (Draw, SSDAugmentation, SSDTrainView, crop_rejected, crop_with, expand_with,
                                     hsv_to_rgb, mirror, photometric_distort, random_crop, resize, rgb_to_hsv)


def test_expand_by_hand():
    image = torch.arange(18, dtype=torch.float32).view(3, 2, 3)  # H 2, W 3
    boxes = torch.tensor([[0.0, 0.0, 3.0, 2.0]])
    canvas, moved = expand_with(image, boxes, ratio=2.0, left=1.7, top=0.4, mean=(0.1, 0.2, 0.3))
    assert canvas.shape == (3, 4, 6)  # int(2 * 2) x int(3 * 2)
    assert torch.equal(canvas[:, 0:2, 1:4], image)  # placed at (int(1.7), int(0.4)) = (1, 0)
    assert torch.equal(canvas[:, 3, 5], torch.tensor([0.1, 0.2, 0.3])) and torch.equal(canvas[:, 0, 0], canvas[:, 3, 5])
    assert torch.equal(moved, torch.tensor([[1.0, 0.0, 4.0, 2.0]]))


def test_crop_by_hand():
    image = torch.rand(3, 10, 10)
    # centres (3, 3), (7.5, 7.5), (1, 9)
    boxes = torch.tensor([[1.0, 1.0, 5.0, 5.0], [6.0, 6.0, 9.0, 9.0], [0.0, 8.0, 2.0, 10.0]])
    out, kept_boxes, kept = crop_with(image, boxes, (2, 2, 8, 8))
    assert kept.tolist() == [0, 1]
    # clipped to the crop, then shifted by its corner (2, 2)
    assert torch.equal(kept_boxes, torch.tensor([[2 - 2, 2 - 2, 5 - 2, 5 - 2], [6 - 2, 6 - 2, 8 - 2, 8 - 2]],
                                                dtype=torch.float32))
    assert torch.equal(out, image[:, 2:8, 2:8])
    assert crop_with(image, boxes, (5, 0, 7, 3)) is None  # no box centre inside: ssd.pytorch tries again


def test_crop_iou_test_quirk():
    iou = torch.tensor([0.05, 0.2])
    assert not crop_rejected(iou, 0.3, float("inf"), "ssd.pytorch")  # 'and' with hi = inf never rejects
    assert crop_rejected(iou, 0.3, float("inf"), "enforced")
    assert not crop_rejected(torch.tensor([0.5, 0.6]), 0.3, float("inf"), "enforced")


def test_crop_of_an_image_without_boxes_is_the_image():
    image, boxes = torch.rand(3, 20, 30), torch.zeros(0, 4)
    out, out_boxes, kept = random_crop(image, boxes, Draw(torch.Generator().manual_seed(0)))
    assert out is image and out_boxes.shape == (0, 4) and kept.numel() == 0


def test_mirror_and_resize_by_hand():
    image, boxes = torch.rand(3, 6, 10), torch.tensor([[1.0, 2.0, 4.0, 6.0]])
    seed = next(s for s in range(100) if Draw(torch.Generator().manual_seed(s)).uniform() < 0.5)  # a draw that flips
    flipped, moved = mirror(image, boxes, Draw(torch.Generator().manual_seed(seed)))
    assert torch.equal(flipped, image.flip(-1)) and torch.equal(moved, torch.tensor([[10 - 4.0, 2.0, 10 - 1.0, 6.0]]))
    kept, same = mirror(image, boxes, Draw(torch.Generator().manual_seed(seed)), p=0.0)  # data.flip: 0
    assert kept is image and same is boxes
    out, scaled = resize(torch.rand(3, 100, 200), torch.tensor([[20.0, 10.0, 100.0, 50.0]]))
    assert out.shape == (3, 300, 300)
    assert torch.allclose(scaled, torch.tensor([[20 * 1.5, 10 * 3.0, 100 * 1.5, 50 * 3.0]]))


def test_numpy_uniform_with_one_argument():
    draw = Draw(torch.Generator().manual_seed(0))
    values = [draw.uniform(5.0) for _ in range(200)]  # numpy uniform(low=5, high=1): between 1 and 5
    assert 1.0 <= min(values) and max(values) <= 5.0 and max(values) - min(values) > 3.0


def test_hsv_matches_colorsys_and_round_trips():
    image = torch.rand(3, 4, 4)
    hsv = rgb_to_hsv(image)
    for y, x in ((0, 0), (1, 3), (3, 2)):
        h, s, v = colorsys.rgb_to_hsv(*image[:, y, x].tolist())
        assert torch.allclose(hsv[:, y, x], torch.tensor([h * 360.0, s, v]), atol=1e-4)
    assert torch.allclose(hsv_to_rgb(hsv), image, atol=1e-5)


def test_photometric_stays_in_range_and_is_deterministic():
    image = torch.rand(3, 16, 16)
    outs = [photometric_distort(image, Draw(torch.Generator().manual_seed(s))) for s in (4, 4, 5)]
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    assert all(0.0 <= float(o.min()) and float(o.max()) <= 1.0 for o in outs)


def _source(n: int = 4):
    items = []
    for i in range(n):
        image = torch.zeros(3, 120, 160)
        image[:, 40:80, 60:140] = 1.0  # one white rectangle = its box
        items.append((image, {"boxes": torch.tensor([[60.0, 40.0, 140.0, 80.0], [5.0 + i, 90.0, 30.0, 115.0]]),
                              "labels": torch.tensor([1, 2]), "difficult": torch.tensor([False, True])}))
    return items


def test_view_is_deterministic_per_seed_epoch_and_index():
    view = SSDTrainView(_source(), seed=3)
    first = [view[i] for i in range(4)]
    again = [view[i] for i in range(4)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"]) for a, b in zip(first, again))
    view.epoch = 1
    later = [view[i] for i in range(4)]
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, later))
    assert all(t["labels"].tolist() == [1] for _, t in first)  # the difficult object is dropped first


def test_boxes_follow_the_image():
    augment = SSDAugmentation(photometric=False, mean=(0.0, 0.0, 0.0))
    image, target = _source(1)[0]
    target = {"boxes": target["boxes"][:1], "labels": target["labels"][:1]}
    for seed in range(12):
        out, t = augment(image, target, torch.Generator().manual_seed(seed))
        assert out.shape == (3, 300, 300) and len(t["boxes"]) == len(t["labels"]) == 1
        bright = out[0] > 0.5
        ys, xs = torch.where(bright)
        extent = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        assert torch.allclose(extent, t["boxes"][0], atol=2.0), (seed, extent, t["boxes"][0])


def test_the_loader_uses_the_pipeline_when_the_file_says_so(tmp_path):
    from detbin.app.build.data import train_loader
    from detbin.config import validate
    from detbin.data.synthetic import SyntheticDetection

    source = SyntheticDetection(4, seed=0)
    base = {"train": {"max_iterations": 1, "batch_size": 2, "seed": 3}}
    plain = train_loader(source, validate(base, "test"))
    ssd = train_loader(source, validate({**base, "data": {"augment": "ssd"}}, "test"))
    assert type(plain.dataset).__name__ == "TrainView" and isinstance(ssd.dataset, SSDTrainView)
    assert ssd.dataset.seed == 3 and ssd.dataset.augment.size == 300 and ssd.dataset.augment.flip == 0.5
    images, _ = next(iter(ssd))
    assert [tuple(i.shape) for i in images] == [(3, 300, 300)] * 2
    sized = train_loader(source, validate({**base, "data": {"augment": "ssd", "flip": 0.0},
                                           "detector": {"arch": "ssd300_vgg16", "min_size": 320}}, "test"))
    assert sized.dataset.augment.size == 320 and sized.dataset.augment.flip == 0.0
