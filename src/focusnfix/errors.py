"""User-facing errors: the CLI prints them as one line and exits with status 2."""


class FocusNFixError(ValueError):
    """Bad input from the user (config, paths, prompts, models). The message says how to fix it."""


class ConfigError(FocusNFixError):
    """An invalid configuration file or override."""


class TrainingDiverged(RuntimeError):
    """Training stopped after too many consecutive non-finite steps; the CLI exits with status 1."""
