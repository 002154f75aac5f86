"""Text rendering judge and text-box masks from RapidOCR (PP-OCRv4 detector and recogniser, ONNX).

``score (B,)`` in ``[0, 1]``, higher = better: how well the text the prompt asks for is written in the image.
The *targets* are the prompt's quoted spans (``a sign that says "OPEN"`` -> ``OPEN``; straight or curly
double quotes, and single quotes that are not apostrophes), or the fixed ``target`` argument. Both the
targets and what the OCR reads are *normalised*: case-folded, every character that is not a letter or a
digit dropped (spaces and punctuation do not count). For each target ``t``, with ``read`` = the normalised
text of all lines read with confidence >= ``text_score``, joined in reading order:

    match(t) = max(0, 1 - d / len(t)),   d = the fewest single-character edits (insert, delete, replace)
                                              that turn t into some substring of read

so 1 = written exactly, 0 = nothing like it; the score is the mean over the prompt's targets. A prompt that
quotes nothing (and no ``target``) scores ``no_text`` (default NaN: not applicable, left out of eval means).

``heatmap (B,1,H,W)`` in ``{0, 1}``: the union of every detected text box (axis-aligned hull of each
detected quadrilateral, whatever its recognised text and confidence), dilated by ``dilate`` px: a mask of
where text is, to fix garbled text with Focus-N-Fix. Not differentiable (a detector and a string match).

Weights: the three ONNX models bundled in the ``rapidocr-onnxruntime`` 1.4.x wheel (PaddleOCR's PP-OCRv4
detector and recogniser, the mobile v2 angle classifier; Apache-2.0), run by onnxruntime on the CPU. Nothing
is downloaded. Install: ``pip install focusnfix[judges]``.
"""
from __future__ import annotations

import functools
import math
import re
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import FocusNFixError, RunFailed, one_line
from .base import RewardOutput
from .masks import box_heatmap

INSTALL_HINT = "pip install focusnfix[judges]"
_QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”|‘([^’]+)’|(?<!\w)\'([^\']+)\'(?!\w)')


def quoted_texts(prompt: str) -> list[str]:
    """The prompt's quoted spans, in order: ``"..."``, ``“...”``, ``‘...’`` and ``'...'`` (not apostrophes)."""
    return [next(g for g in m.groups() if g is not None) for m in _QUOTED.finditer(prompt)]


def normalize(text: str) -> str:
    """Case-folded letters and digits only (spaces and punctuation dropped)."""
    return "".join(c for c in text.casefold() if c.isalnum())


def substring_distance(pattern: str, text: str) -> int:
    """The fewest single-character edits turning ``pattern`` into some substring of ``text`` (the substring may
    be empty, so the answer is at most ``len(pattern)``): edit distance with a free start and end in ``text``."""
    row = [0] * (len(text) + 1)  # matching the empty prefix of pattern costs nothing anywhere in text
    for i, p in enumerate(pattern, 1):
        prev_diag, row[0] = row[0], i
        for j, t in enumerate(text, 1):
            prev_diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev_diag + (p != t))
    return min(row)


def match_score(target: str, read: str) -> float:
    """``max(0, 1 - d / len(t))`` on the normalised strings (see the module docstring); NaN if ``target`` has no
    letter or digit."""
    t, r = normalize(target), normalize(read)
    if not t:
        return math.nan
    return max(0.0, 1.0 - substring_distance(t, r) / len(t))


@functools.lru_cache(maxsize=2)
def _engine(threads: int):
    """One RapidOCR engine per process (about 0.5 s to build); lazy import: an optional extra."""
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError:
        raise FocusNFixError(f"the ocr judge needs rapidocr-onnxruntime 1.4.x (its wheel bundles the models): "
                             f"{INSTALL_HINT}") from None
    return RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(B,3,H,W)`` in ``[0, 1]`` -> ``(B,H,W,3)`` uint8 RGB (the 8-bit image a user sees)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class OCRTextReward:
    """Quoted-text OCR score and text-box heatmap (module docstring).

    Args:
        target: text every image should show; None = each prompt's quoted spans.
        text_score: recognition confidence a line needs to count as read (RapidOCR's default 0.5).
        box_thresh: detection score a text box needs (RapidOCR's default 0.5).
        dilate: px added around the text boxes in the heatmap.
        no_text: score of a prompt with nothing to read; None = NaN (not applicable).

    ``info``: ``texts`` (per image, the lines read: ``(text, confidence)``, all confidences), ``boxes`` (per image,
    ``[x, y, w, h]`` of every detected text box), ``n_boxes`` ``(B,)``.
    """

    name = "ocr"
    differentiable = False
    metric_label = "quoted text read by OCR, 0-1"

    def __init__(self, target: str | None = None, text_score: float = 0.5, box_thresh: float = 0.5,
                 dilate: int = 4, no_text: float | None = None):
        if target is not None and not normalize(str(target)):
            raise FocusNFixError(f"ocr target {target!r} has no letter or digit to read")
        for key, value in (("text_score", text_score), ("box_thresh", box_thresh)):
            if not 0.0 <= float(value) <= 1.0:
                raise FocusNFixError(f"ocr {key} must be in [0, 1], got {value}")
        if int(dilate) < 0:
            raise FocusNFixError(f"ocr dilate must be >= 0 px, got {dilate}")
        self.target = None if target is None else str(target)
        self.text_score, self.box_thresh, self.dilate = float(text_score), float(box_thresh), int(dilate)
        self.no_text = math.nan if no_text is None else float(no_text)
        self.engine = _engine(max(1, torch.get_num_threads()))

    def read(self, image: np.ndarray) -> list[tuple[str, float, list[float]]]:
        """``(text, confidence, [x, y, w, h])`` of every text box in one ``(H,W,3)`` uint8 RGB image, in reading
        order (top to bottom, left to right)."""
        bgr = np.ascontiguousarray(image[..., ::-1])  # RapidOCR takes arrays as OpenCV's BGR
        try:
            result, _ = self.engine(bgr, box_thresh=self.box_thresh, unclip_ratio=1.6, text_score=0.0)
        except Exception as e:  # onnxruntime or OpenCV failing on a valid image: a runtime failure
            raise RunFailed(one_line(f"the ocr judge failed: {type(e).__name__}: {e}", 200)) from None
        lines = []
        for quad, text, conf in result or []:
            xs, ys = [p[0] for p in quad], [p[1] for p in quad]
            lines.append((str(text), float(conf), [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]))
        return lines

    def score_of(self, lines: Sequence[tuple[str, float, Any]], prompt: str) -> float:
        """The score of one image's OCR lines against one prompt (module docstring)."""
        targets = [self.target] if self.target is not None else quoted_texts(prompt)
        read = "".join(text for text, conf, _ in lines if conf >= self.text_score)
        scores = [s for s in (match_score(t, read) for t in targets) if not math.isnan(s)]
        return sum(scores) / len(scores) if scores else self.no_text

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> RewardOutput:
        """``images (B,3,H,W)`` in ``[0,1]``; ``prompts`` say what text to look for (unless ``target`` is set)."""
        prompts = list(prompts) if len(prompts) else [""] * images.shape[0]
        if len(prompts) != images.shape[0]:
            raise FocusNFixError(f"ocr judge got {images.shape[0]} images but {len(prompts)} prompts")
        reads = [self.read(a) for a in to_uint8(images)]
        score = torch.tensor([self.score_of(lines, p) for lines, p in zip(reads, prompts)], device=images.device)
        boxes = [[box for _, _, box in lines] for lines in reads]
        heat = box_heatmap(boxes, *images.shape[-2:], self.dilate, device=images.device)
        info = {"texts": [[(t, c) for t, c, _ in lines] for lines in reads], "boxes": boxes,
                "n_boxes": torch.tensor([len(b) for b in boxes], dtype=torch.float32)}
        return RewardOutput(score=score, heatmap=heat, info=info)
