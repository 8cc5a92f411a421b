"""The agent's version, baked in at build time.

The artifact builder (``packaging/build_agent.py``) writes ``agent/_build.py`` holding
``VERSION = "X"`` into the staged archive. Run from source, that module is absent and the
agent reports :data:`DEV_VERSION`.
"""

import importlib

DEV_VERSION = "0.0.0.dev0"


def _load_version() -> str:
    try:
        build = importlib.import_module("agent._build")
    except ImportError:
        return DEV_VERSION
    baked = getattr(build, "VERSION", None)
    return baked if isinstance(baked, str) and baked else DEV_VERSION


VERSION: str = _load_version()
