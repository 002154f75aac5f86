"""Evaluation: image metrics, paired statistics and the ``evaluate()`` driver (re-exports only)."""
from .stats import category_table, holm, paired_stats, paired_values, t_cdf, t_ppf

__all__ = ["category_table", "holm", "paired_stats", "paired_values", "t_cdf", "t_ppf"]
