"""Independent judges for ``focusnfix eval --judge NAME[=ARGS]``: any registered reward, classifier or detector
(or a plug-in ``package.module:Class``) run on every eval image as a metric of its own.

``NAME`` is a reward name of :data:`~focusnfix.rewards.registry.REWARDS` or an import path; ``ARGS`` a YAML
mapping of its constructor arguments (``ocr={target: OPEN}``). Each judge's score is the per-sample metric
``judge_<name>`` in ``samples.jsonl``; ``eval.json`` declares it (``"judge": true``) and summarises it per method
(:func:`judge_summary`: mean with a 95% CI, and the paired change vs the reference with its Student-t CI). A judge
is never the training reward unless the user names it; then it is labelled "training reward". The ``--judge``
texts are parsed by :mod:`focusnfix.rewards.judges` (training's ``train.eval_judges`` reads them too).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ..rewards.judges import PREFIX, JudgeSpec, judge_score, parse_judge, parse_judges  # noqa: F401 (re-exported)
from ..rewards.registry import build_reward
from .pareto import bootstrap_ci, wilson
from .stats import finite, paired_stats, paired_values


class Judge:
    """An extra metric for :class:`~focusnfix.evaluation.runner.Evaluation`: ``fn(images, prompts) -> {key: (B,)}``
    with ``metric_info`` (what eval.json declares about the metric)."""

    def __init__(self, spec: JudgeSpec, reward, training_reward: bool):
        self.spec, self.reward, self.training_reward = spec, reward, training_reward
        what = getattr(reward, "metric_label", None)
        label = (f"judge {spec.name}" + (" [training reward]" if training_reward else "")
                 + (f": {what}" if isinstance(what, str) and what else ""))
        self.metric_info = {spec.key: {"label": label, "higher_is_better": True, "judge": spec.name,
                                       "args": spec.args, "training_reward": training_reward}}

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        return {self.spec.key: judge_score(self.spec, self.reward, images, prompts)}


def build_judges(specs: list[JudgeSpec], training_reward_name: str) -> list[Judge]:
    """The judges, built (an optional extra that is missing is a one-line error); the one that *is* the
    training reward (same name) is labelled so."""
    return [Judge(spec, build_reward(spec.name, **spec.args), spec.name == training_reward_name) for spec in specs]


def _interval(values: list[float]) -> tuple[list[float] | None, str]:
    """95% CI of a mean: Wilson's for 0/1 values (a rate), else the percentile bootstrap over images."""
    if not values:
        return None, ""
    if all(v in (0.0, 1.0) for v in values):
        return list(wilson(sum(values), len(values))), "wilson"
    ci = bootstrap_ci(values)
    return [ci["lo"], ci["hi"]], "bootstrap"


def judge_summary(rows: list[dict[str, Any]], methods: list[str], reference: str,
                  metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per judge metric and method: ``n``, ``mean``, ``ci`` (95%, ``ci_kind`` wilson or bootstrap) and, for the
    other methods, ``delta`` (paired mean change vs ``reference``), ``delta_ci`` (Student t) and ``p``."""
    out: dict[str, Any] = {}
    for key, info in metrics.items():
        if not info.get("judge"):
            continue
        per_method = {}
        for method in methods:
            values = [float(r[key]) for r in rows if r.get("method") == method and finite(r.get(key))]
            ci, kind = _interval(values)
            entry: dict[str, Any] = {"n": len(values), "mean": sum(values) / len(values) if values else None,
                                     "ci": ci, "ci_kind": kind}
            if method != reference:
                a, b, _ = paired_values(rows, key, method, reference)
                s = paired_stats(a, b)
                entry.update(delta=s["mean_diff"], delta_ci=s["ci"], p=s["p"], n_pairs=s["n"])
            per_method[method] = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                  for k, v in entry.items()}
        out[key] = {"judge": info["judge"], "label": info["label"], "args": info.get("args") or {},
                    "training_reward": bool(info.get("training_reward")), "methods": per_method}
    return out
