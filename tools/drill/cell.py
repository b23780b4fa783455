"""One region's cell for `orders regions drill`, run inside the region's network namespace:
``ip netns exec <ns> python -m drill.cell SPEC``.

The cell is the bench's stack (tools/bench/stack.py: embedded PostgreSQL, Temporal dev server,
sandbox providers, a worker and the gateway) with every server on the namespace's address, and
PostgreSQL ready for logical replication to and from the other region (``wal_level=logical``,
the drill's network trusted), on the same ports in every namespace. SPEC is a JSON file: ``region``, ``address``, ``subnet``,
``data_dir``, ``settings`` (Settings overrides) and ``ready_file``, to which the cell writes the
addresses of its servers once every one of them is ready. It runs until SIGTERM or Ctrl-C, then
stops its servers.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from bench.stack import BenchStack, StackOptions
from cli.main import stop_on_sigterm
from devstack.postgres import LOGICAL_REPLICATION

# Logical replication in both directions (docs/regions.md), and a subscriber that notices a cut-off
# publisher within seconds rather than after TCP's retransmissions.
REPLICATION_SETTINGS = {
    **LOGICAL_REPLICATION,
    "wal_receiver_timeout": "5s",
    "wal_sender_timeout": "5s",
    # After the heal the apply worker reconnects within a second instead of the default five.
    "wal_retrieve_retry_interval": "1s",
}
#: The same ports in every cell: each has a network namespace of its own, and its peers must know
#: its addresses before it starts.
PORTS = {"postgres": 15432, "temporal": 17233, "sandbox": 18100, "api": 18000}


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    stop_on_sigterm()

    def say(message: str) -> None:
        print(f"cell {spec['region']}: {message}", flush=True)

    stack = BenchStack(
        StackOptions(
            workers=1,
            host=spec["address"],
            settings=spec.get("settings", {}),
            data_dir=Path(spec["data_dir"]),
            keep_data=True,  # the drill removes its folder (or keeps it with --keep-data)
            postgres_settings=REPLICATION_SETTINGS,
            postgres_trusted_networks=[spec["subnet"]],
            ports=PORTS,
        ),
        log=say,
    )
    try:
        stack.start()
        assert stack.settings is not None and stack.temporal is not None
        ready = {
            "region": spec["region"],
            "pid": os.getpid(),
            "api_url": stack.api_url,
            "sandbox_url": stack.sandbox_url,
            "database_url": stack.settings.database_url,
            "temporal_address": stack.settings.temporal_address,
            "payment_base_url": stack.settings.payment_base_url,
            "data_dir": str(stack.data_dir),
        }
        partial = Path(spec["ready_file"] + ".partial")
        partial.write_text(json.dumps(ready))
        partial.rename(spec["ready_file"])
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        say("stopping")
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
