"""The collateral budget: the weight λ of the region constraint found during training instead of set by hand.

The user states how much the image may change outside the problem mask, ``objective.budget`` = B: the mean
|Î − Î0| over the pixels and channels outside M(Î0), in 8-bit grey levels (1.0 = one level per pixel and channel
on average). That unit needs no knowledge of the reward's scale, the resolution or the model family. Training then
solves the constrained problem

    max_θ E[r(Î, c)]   subject to   E[c(Î, Î0)] ≤ B,    c = 255 · mean over (1 − M) of |Î − Î0|

through its Lagrangian −r + λ · ‖(1 − M) ⊙ (Î − Î0)‖ (the paper's loss, :mod:`.objective`), with the multiplier
λ ≥ 0 adapted after every optimizer step from the step's measured c̄ (dual ascent, as in constrained RL: Stooke,
Achiam & Abbeel 2020, "Responsive Safety in RL by PID Lagrangian Methods"). The update is multiplicative, an
exponentiated-gradient step on the dual, because the scale λ needs (reward units per pixel norm) is not known in
advance and differs by orders of magnitude between rewards and resolutions:

    e = clip((c̄ − B) / B, −1, 1)          (the relative violation)
    λ ← max(0, (λ + λ_floor) · exp(η · e) − λ_floor)

λ starts at 0 and stays 0 while there is slack (c̄ < B): early steps move as fast as DRaFT's. Once c̄ exceeds B,
λ grows geometrically (at most a factor e^η per step) from the floor λ_floor, so it reaches any scale in
log(λ*/λ_floor)/η steps, and shrinks again when the change falls below the budget. ``objective.budget_rate`` is η.
"""
from __future__ import annotations

import math

LAM_FLOOR = 1e-2  # λ_floor: where a multiplier that was 0 starts growing (0 -> 0.2 in 15 violating steps at η = 0.2)


class Budget:
    """The multiplier λ for a collateral budget ``budget`` (grey levels), updated by :meth:`update`."""

    def __init__(self, budget: float, rate: float):
        if not budget > 0 or not rate > 0:
            raise ValueError(f"budget and rate must be > 0, got {budget}, {rate}")
        self.budget, self.rate = float(budget), float(rate)
        self.lam = 0.0

    def update(self, change: float) -> float:
        """One dual step from the step's mean outside change ``change`` (grey levels); returns the new λ.
        A non-finite measurement leaves λ as it is."""
        if math.isfinite(change):
            violation = min(1.0, max(-1.0, (change - self.budget) / self.budget))
            self.lam = max(0.0, (self.lam + LAM_FLOOR) * math.exp(self.rate * violation) - LAM_FLOOR)
        return self.lam

    def state_dict(self) -> dict[str, float]:
        return {"lam": self.lam}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.lam = float(state["lam"])
