"""Everything that reads or writes a run folder: checkpoints, resume, locks, metrics log, model card, hub."""
