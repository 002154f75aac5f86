"""Training: the loop and its wiring, distributed helpers, the reference cache, trackers."""
