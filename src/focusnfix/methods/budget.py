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

λ starts at 0 and stays 0 while there is slack (c̄ < B): early steps move as fast as DRaFT's. With
``objective.budget_measure_every`` = N > 1, while λ = 0 the frozen model's Î0 is computed (to measure c̄) on one
optimizer step in N only; the others are DRaFT steps, the same gradient without the reference pass (λ = 0 weighs the
constraint by nothing), so the slack costs DRaFT's time per step plus 1/N of the reference. The first violation
measured starts λ growing, at most N − 1 steps late. Once c̄ exceeds B,
λ grows geometrically (at most a factor e^η per step) from the floor λ_floor, so it reaches any scale in
log(λ*/λ_floor)/η steps, and shrinks again when the change falls below the budget. ``objective.budget_rate`` is η.

Anti-windup: a budget below what the optimizer can hold (Adam moves every LoRA weight by about the learning rate
each step, so Î jitters around Î0 by a floor no λ removes; on the world at lr 1e-3 about 0.7 grey levels of the
training images) would otherwise raise λ without bound, until the constraint drowns the reward and undoes the fix,
and a λ wound up that far takes many steps to come down. So λ is capped where the constraint already pulls much
harder than the reward on the image: with λ_eq = ‖∂r/∂Î‖ / ‖∂penalty/∂Î per unit λ‖ (the λ at which both pull
equally; the penalty's pull is 1 per unit λ for the Frobenius norm, 1/√(3HW) for rms), averaged over the batch and
smoothed over steps (weight ``SMOOTH``), λ ≤ ``DOMINANCE`` · λ_eq. A budget that the cap keeps from being met is
reported by the logged ``outside_change`` staying above it while λ sits at the cap.
"""
from __future__ import annotations

import math

LAM_FLOOR = 1e-2  # λ_floor: where a multiplier that was 0 starts growing (0 -> 0.2 in 15 violating steps at η = 0.2)
SMOOTH = 0.1  # weight of the newest step in the smoothed λ_eq
DOMINANCE = 10.0  # λ ≤ DOMINANCE · λ_eq: beyond, the constraint outweighs the reward tenfold and more λ adds nothing


class Budget:
    """The multiplier λ for a collateral budget ``budget`` (grey levels), updated by :meth:`update`."""

    def __init__(self, budget: float, rate: float):
        if not budget > 0 or not rate > 0:
            raise ValueError(f"budget and rate must be > 0, got {budget}, {rate}")
        self.budget, self.rate = float(budget), float(rate)
        self.lam = 0.0
        self.lam_eq: float | None = None  # smoothed λ_eq, the anti-windup scale

    def update(self, change: float, lam_eq: float | None = None) -> float:
        """One dual step from the step's mean outside change ``change`` (grey levels) and its mean λ_eq (None: no
        cap); returns the new λ. A non-finite measurement leaves everything as it is."""
        if not math.isfinite(change):
            return self.lam
        if lam_eq is not None and math.isfinite(lam_eq):
            self.lam_eq = lam_eq if self.lam_eq is None else (1 - SMOOTH) * self.lam_eq + SMOOTH * lam_eq
        violation = min(1.0, max(-1.0, (change - self.budget) / self.budget))
        lam = max(0.0, (self.lam + LAM_FLOOR) * math.exp(self.rate * violation) - LAM_FLOOR)
        if self.lam_eq is not None and lam > self.lam:  # anti-windup: growth stops at the cap (never pushes down)
            lam = max(self.lam, min(lam, DOMINANCE * self.lam_eq))
        self.lam = lam
        return self.lam

    def state_dict(self) -> dict[str, float | None]:
        return {"lam": self.lam, "lam_eq": self.lam_eq}

    def load_state_dict(self, state: dict) -> None:
        self.lam = float(state["lam"])
        self.lam_eq = None if state.get("lam_eq") is None else float(state["lam_eq"])
