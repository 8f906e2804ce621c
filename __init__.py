"""Not part of the package. Python runs this file only when a checkout of headreg that is *named*
``headreg`` sits in the current directory (or on sys.path) while a script runs from its parent: the
checkout then shadows the installed package, and without this file every import from it would fail with
a puzzling "cannot import name ... from 'headreg' (unknown location)". See README, Troubleshooting.
"""

import os as _os

_checkout = _os.path.dirname(_os.path.abspath(__file__))
raise ImportError(
    f"'import headreg' found the headreg checkout {_checkout} instead of the installed package: a folder "
    f"named headreg in the directory you run from ({_os.path.dirname(_checkout)}) shadows it. Run the script "
    "from another directory (for example from inside the checkout), or rename the checkout folder."
)
