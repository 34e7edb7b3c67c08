"""Where a workspace is: the directory of its graph file, as the user named it.

A symlinked `graph.json` (a checkout sharing another's graph) belongs to the directory the link is in, not
to the one it points to: inputs, outputs and `.gaffer/` are found there. Every command derives the root with
this one function, so the no-op fast path reads the record the build wrote, and settings come from the same
`gaffer.toml`. Kept free of imports: the no-op path uses it.
"""

from __future__ import annotations

import os


def workspace_root(graph_path: str | os.PathLike[str]) -> str:
    """The absolute, symlink-free workspace directory of the graph file at `graph_path`."""
    return os.path.realpath(os.path.dirname(os.path.abspath(graph_path)))
