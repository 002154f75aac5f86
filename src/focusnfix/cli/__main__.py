"""``python -m focusnfix.cli`` (as before the CLI was a package): the ``focusnfix`` command."""
from .main import entry

entry()
