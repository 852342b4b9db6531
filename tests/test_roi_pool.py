"""The parallel RoIAlign backward equals torchvision's bit for bit; the forward is torchvision's op."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign as TorchvisionMultiScaleRoIAlign

from detbin.models.roi_pool import MultiScaleRoIAlign


@pytest.mark.parametrize("threads", [2, 3])
def test_parallel_backward_is_torchvisions_bit_for_bit(threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        sizes = [(24, 20), (12, 10), (6, 5), (3, 3)]
        maps = {str(i): torch.randn(2, 10, h, w, requires_grad=True) for i, (h, w) in enumerate(sizes)}
        corners = torch.rand(2, 40, 2) * torch.tensor([80.0, 96.0]) - 4  # some boxes leave the image
        boxes = [torch.cat([c, c + torch.rand(40, 2) * 70 + 0.5], dim=1) for c in corners]
        pooled = {}
        for name, pool in (("ours", MultiScaleRoIAlign(list(maps), 7, 2)),
                           ("torchvision", TorchvisionMultiScaleRoIAlign(list(maps), 7, 2))):
            out = pool(maps, boxes, [(96, 80), (96, 80)])
            grads = torch.autograd.grad(out, list(maps.values()), torch.linspace(-1, 1, out.numel()).view_as(out))
            pooled[name] = (out, grads)
        assert torch.equal(pooled["ours"][0], pooled["torchvision"][0])
        assert all(torch.equal(a, b) for a, b in zip(pooled["ours"][1], pooled["torchvision"][1]))
        assert any(g.abs().sum() > 0 for g in pooled["ours"][1])
    finally:
        torch.set_num_threads(previous)
