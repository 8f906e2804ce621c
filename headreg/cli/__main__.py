"""``python -m headreg.cli``: the ``headreg`` command."""

from . import main

main()
