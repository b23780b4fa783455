"""`orders retry ORDER_ID`: bring back a failed, terminated or timed-out order (see workers/retry.py)."""

from __future__ import annotations

import argparse
import uuid


def register(sub: argparse._SubParsersAction) -> None:
    retry = sub.add_parser("retry", help="reset a failed/terminated order's workflow to its last good step")
    retry.add_argument("order_id", metavar="ORDER_ID", help="the order's id (a UUID; order-<id> is accepted too)")
    retry.add_argument("--reason", default="orders retry", help="recorded with the reset")
    retry.set_defaults(func=cmd_retry)


def cmd_retry(args: argparse.Namespace) -> int:
    from cli.main import CliError, _settings
    from cli.replay import _client, _run
    from workers.retry import RetryRefused, retry_order

    try:
        order_id = uuid.UUID(args.order_id.removeprefix("order-"))
    except ValueError:
        raise CliError(f"not an order id: {args.order_id!r}") from None
    settings = _settings()

    async def run() -> str:
        client = await _client(settings)
        try:
            return await retry_order(client, settings, order_id, reason=args.reason)
        except RetryRefused as refused:
            raise CliError(str(refused)) from None

    run_id = _run(run())
    print(f"order {order_id}: workflow reset to its last completed workflow task; new run {run_id}")
    return 0
