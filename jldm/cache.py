"""The user's cache folder of jldm: converted pretrained models, the evaluation classifiers.

$JLDM_CACHE_DIR when set, else $XDG_CACHE_HOME/jldm, else ~/.cache/jldm; read at each call, so a
process may set the variable at any time.
"""

import os

CACHE_DIR_ENV = "JLDM_CACHE_DIR"


def cache_root() -> str:
    """The cache folder (not created here)."""
    if os.environ.get(CACHE_DIR_ENV):
        return os.path.expanduser(os.environ[CACHE_DIR_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return os.path.expanduser(os.path.join(xdg, "jldm") if xdg else "~/.cache/jldm")
