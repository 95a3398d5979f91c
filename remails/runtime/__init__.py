"""The composition root: wires the kernel, the functions, the edge and the sender together.

`remails up` runs every role in one process (`all_in_one`, with `supervisor` for workers);
`remails serve ROLE` runs one (`roles`). With the CLI, this package is the only place that
imports the deployable units.
"""

from remails.runtime.all_in_one import Runtime, run_all_in_one
from remails.runtime.roles import serve_role

__all__ = ["Runtime", "run_all_in_one", "serve_role"]
