"""Command-line interface: thin wrappers over the library. ``main(argv) -> int``.

One module per subcommand (:mod:`.train`, :mod:`.sample`, :mod:`.eval`, :mod:`.push`; ``report``, ``rate``
and ``world`` register from their own packages), the parser and the error contract in :mod:`.main`, and
:mod:`.demo` (``make demo``). ``focusnfix.cli:entry`` is the console script.
"""
from __future__ import annotations

from .common import check_out_folder
from .main import PREFIX, _parser, describe_error, entry, main
from .sample import SAMPLE_DEFAULTS

__all__ = ["main", "entry", "describe_error", "check_out_folder", "PREFIX", "SAMPLE_DEFAULTS", "_parser"]
