"""ResNet blocks in their binary forms, built from torchvision blocks keeping child names.

Three forms (methods.md §1.4-1.7):

* ``xnor``: the ResNet block as is (one shortcut per two convs), minus the ReLUs: a ReLU
  before ``sign`` makes the binary input constant. XNOR-Net's order is BN -> sign -> conv.
* ``bireal``: Bi-Real Net: every binary 3x3 conv gets its own real identity shortcut,
  ``y = BN(BinConv(sign(x))) + shortcut(x)``, no ReLU; the downsample shortcut becomes
  ``AvgPool2d(2) -> real 1x1 conv -> BN`` (``liuzechun/Bi-Real-net birealnet.py``).
* ``reactnet``: Bi-Real plus RPReLU after each shortcut sum (and RSign on the conv's input,
  which the layout sets as the input quantizer): ReAct-ResNet-18 of ``2_step2/birealnet.py``.

LWS-Det's ``lws`` form registers itself from :mod:`detbin.binary.lws_blocks`.

A converted block keeps ``conv1, bn1, conv2, bn2(, conv3, bn3), downsample`` with the same
names and weights as the teacher's block, so weights and taps line up by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from detbin.binary.layers import RPReLU
from detbin.core.errors import ConfigError, close_matches

__all__ = ["BlockForm", "register_form", "get_form", "form_names", "PooledShortcut", "BinaryBasicBlock",
           "BinaryBottleneck", "convert_resnet"]

MakeActivation = Callable[[int], nn.Module]


@dataclass(frozen=True)
class BlockForm:
    """A binarization form: how a ResNet body's blocks are rewritten, and the activation it uses.

    Attributes:
        name: what ``binarize.form`` spells in YAML.
        convert: ``(body, make_activation) -> blocks converted``, in place, keeping child names.
        activation: ``channels -> module`` placed where a ReLU would feed a sign (Identity for
            XNOR and Bi-Real, RPReLU for ReActNet).
        keep_real: module-name globs of layers the form adds that stay real (LWS-Det's
            ``*.downsample2.*`` shortcut), kept real with the family's defaults.
    """

    name: str
    convert: Callable[[nn.Module, MakeActivation], int]
    activation: MakeActivation
    keep_real: tuple[str, ...] = ()


_FORMS: dict[str, BlockForm] = {}


def register_form(form: BlockForm, replace: bool = False) -> BlockForm:
    """Add a form to the table (``replace`` to overwrite one of the same name).

    Raises:
        ConfigError: the name is taken.
    """
    if form.name in _FORMS and not replace and _FORMS[form.name] is not form:
        raise ConfigError(f"binarization form {form.name!r} is already registered")
    _FORMS[form.name] = form
    return form


def get_form(name: str) -> BlockForm:
    """The form called ``name``.

    Raises:
        ConfigError: unknown form (close names and every form are listed).
    """
    if name not in _FORMS:
        raise ConfigError(f"binarize.form: unknown form {name!r}{close_matches(name, _FORMS)}; valid: "
                          f"{', '.join(form_names())}")
    return _FORMS[name]


def form_names() -> list[str]:
    """Names accepted by :func:`get_form`."""
    return sorted(_FORMS)


class PooledShortcut(nn.Module):
    """Bi-Real downsample: ``AvgPool2d(2, s, ceil_mode) -> 1x1 conv (stride 1) -> BN``.

    Children ``0`` (conv) and ``1`` (BN) keep the names of torchvision's downsample
    ``Sequential``; the teacher's strided 1x1 conv is reused with stride 1 after the pool.
    ``ceil_mode`` matches the output size of a padded stride-2 3x3 conv on odd inputs (IDa-Det).
    """

    def __init__(self, downsample: nn.Sequential, stride: int) -> None:
        super().__init__()
        conv, norm = downsample[0], downsample[1]
        conv.stride = (1, 1)
        self.pool = nn.AvgPool2d(stride, stride, ceil_mode=True) if stride > 1 else nn.Identity()
        self.add_module("0", conv)
        self.add_module("1", norm)

    def forward(self, x: Tensor) -> Tensor:
        return getattr(self, "1")(getattr(self, "0")(self.pool(x)))


def _stride(conv: nn.Conv2d) -> int:
    return conv.stride[0] if isinstance(conv.stride, tuple) else int(conv.stride)


class BinaryBasicBlock(nn.Module):
    """A ResNet basic block in the ``xnor``, ``bireal`` or ``reactnet`` form.

    Shape: ``[N, C_in, H, W] -> [N, C_out, H/s, W/s]``.
    """

    def __init__(self, block: BasicBlock, form: str, make_activation: MakeActivation) -> None:
        super().__init__()
        self.form = form
        self.conv1, self.bn1, self.conv2, self.bn2 = block.conv1, block.bn1, block.conv2, block.bn2
        ds = block.downsample
        self.downsample = PooledShortcut(ds, _stride(ds[0])) if ds is not None and form != "xnor" else ds
        planes = block.bn2.num_features
        self.act1, self.act2 = make_activation(planes), make_activation(planes)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.conv1(x))
        if self.form == "xnor":
            out = self.bn2(self.conv2(self.act1(out)))
            return self.act2(out + shortcut)
        out = self.act1(out + shortcut)  # Bi-Real: each binary conv has its own shortcut
        return self.act2(self.bn2(self.conv2(out)) + out)


class BinaryBottleneck(nn.Module):
    """A ResNet bottleneck in a binary form.

    The 3x3 conv gets its own shortcut in the ``bireal``/``reactnet`` forms (average-pooled
    when strided); the 1x1 convs change the width, so they keep only the block's shortcut
    ([D]: the papers' "Bi-Real-modified ResNet-50" does not say more).
    """

    def __init__(self, block: Bottleneck, form: str, make_activation: MakeActivation) -> None:
        super().__init__()
        self.form = form
        self.conv1, self.bn1, self.conv2, self.bn2 = block.conv1, block.bn1, block.conv2, block.bn2
        self.conv3, self.bn3 = block.conv3, block.bn3
        ds = block.downsample
        self.downsample = PooledShortcut(ds, _stride(ds[0])) if ds is not None and form != "xnor" else ds
        stride = _stride(block.conv2)
        self.pool = nn.AvgPool2d(stride, stride, ceil_mode=True) if stride > 1 else nn.Identity()
        width = block.bn1.num_features
        self.act1, self.act2 = make_activation(width), make_activation(width)
        self.act3 = make_activation(block.bn3.num_features)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        mid = self.bn2(self.conv2(out))
        if self.form != "xnor":
            mid = mid + self.pool(out)
        out = self.act2(mid)
        return self.act3(self.bn3(self.conv3(out)) + shortcut)


def convert_resnet(body: nn.Module, form: str, make_activation: MakeActivation) -> int:
    """Convert every block of ``body.layer1..layer4`` to ``form`` (xnor, bireal, reactnet) in place.

    The stem ReLU is dropped: the stem keeps conv -> BN -> max-pool without ReLU (Bi-Real and
    IDa-Det stems), since its output feeds the first binary conv's sign.

    Returns:
        The number of blocks converted.
    """
    if form not in ("xnor", "bireal", "reactnet"):
        raise ConfigError(f"convert_resnet: form {form!r} is not a ResNet block form (xnor, bireal, reactnet)")
    count = 0
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(body, stage)
        for i, block in enumerate(layer):
            if isinstance(block, BasicBlock):
                layer[i] = BinaryBasicBlock(block, form, make_activation)
            elif isinstance(block, Bottleneck):
                layer[i] = BinaryBottleneck(block, form, make_activation)
            else:
                continue
            count += 1
    body.relu = nn.Identity()
    return count


def _identity(channels: int) -> nn.Module:
    return nn.Identity()


for _name, _activation in (("xnor", _identity), ("bireal", _identity), ("reactnet", RPReLU)):
    register_form(BlockForm(_name, lambda body, act, form=_name: convert_resnet(body, form, act), _activation))
