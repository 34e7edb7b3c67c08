"""What a worker tells the server about itself when it opens a bot session: the Remote Workers API `Worker`.

Device 0 carries the platform properties an action's platform must all find there: OSFamily and ISA as gaffer's
own actions name this machine (`actions.host_properties`), each `--platform key=value`, and `linking=true` unless
`--no-link` (with `gaffer-syslibs` for the system libraries a link reads, cc/syslibs.py), and `gaffer-toolchain` for
each C/C++ compiler on its PATH (cc/toolchain.py). The worker's own properties say how many actions it runs at once and which common tools its PATH has
(and BuildGrid reads the number of actions from a `capacity` config).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence

from gaffer.actions import host_properties
from gaffer.cc import syslibs, toolchain
from gaffer.protos import worker_pb2

TOOLS = ("go", "gcc", "g++", "cc", "clang", "python3")
MAX_JOBS_KEY = "_gaffer_max_jobs"
CAPACITY_CONFIG = "capacity"  # the same number where BuildGrid reads it: a Worker config
TOOLS_KEY = "_gaffer_tools"


def describe(bot_id: str, max_jobs: int, platform: Sequence[str], link: bool) -> worker_pb2.Worker:
    """The Worker message of a bot session; `platform` holds KEY=VALUE strings."""
    pairs = list(host_properties().items())
    pairs += [(key.strip(), value.strip()) for key, _, value in (p.partition("=") for p in platform)]
    if link:
        pairs.append(("linking", "true"))
        pairs += [(syslibs.KEY, v) for v in syslibs.local_syslibs()]
    pairs += [(toolchain.KEY, t) for t in toolchain.local_toolchains()]
    device = worker_pb2.Device(handle=bot_id, properties=[
        worker_pb2.Device.Property(key=k, value=v) for k, v in dict.fromkeys(pairs)])
    tools = ",".join(t for t in TOOLS if shutil.which(t))
    return worker_pb2.Worker(devices=[device], properties=[
        worker_pb2.Worker.Property(key=MAX_JOBS_KEY, value=str(max_jobs)),
        worker_pb2.Worker.Property(key=TOOLS_KEY, value=tools),
    ], configs=[worker_pb2.Worker.Config(key=CAPACITY_CONFIG, value=str(max_jobs))])
