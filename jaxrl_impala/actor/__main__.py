"""The actor CLI: ``python -m jaxrl_impala.actor``.

Started by the trainer as ``python -m jaxrl_impala.actor --config-json ... --actor-id I
--address -`` (never forked from a JAX process; ``JAX_PLATFORMS=cpu`` is set before JAX is
imported). It starts before the learner's transport exists: it builds its envs and
compiles its policy, then reads the transport's address as one JSON line on stdin. Or by
hand on any host to join a running learner over Redis: ``python -m jaxrl_impala.actor
--config C --set transport.kind=redis transport.url=URL --actor-id N`` (the address comes
from ``transport.url`` / ``transport.prefix``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable

from jaxrl_impala.runtime.cpus import LEARNER_PID_ENV, pin_actor_from_env  # no JAX in there
from jaxrl_impala.runtime.supervisor import die_with_parent

if __name__ == "__main__":  # before JAX is imported anywhere in this process
    os.environ["JAX_PLATFORMS"] = "cpu"
    pin_actor_from_env()
    if os.environ.get(LEARNER_PID_ENV):
        # Started by a trainer, which decides when we stop: Ctrl-C in the terminal reaches
        # the whole process group, and it must not kill us mid-import.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Ask for the parent-death signal first thing (importing JAX takes seconds), then
        # check the learner did not die before we asked: it would never be sent.
        die_with_parent()
        if os.getppid() != int(os.environ[LEARNER_PID_ENV]):
            sys.exit(0)


from jaxrl_impala.actor.process import address_from_stdin, run  # noqa: E402  (JAX after the above)
from jaxrl_impala.cli import add_config_options, command_parser  # noqa: E402
from jaxrl_impala.config import ConfigError, from_dict, load_config  # noqa: E402
from jaxrl_impala.transport import RedisTransportError, redis_address, resolve_url  # noqa: E402
from jaxrl_impala.unroll import MAX_ACTOR_ID  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "actor",
        "One actor process: steps its envs with the newest published params and "
        "sends unrolls to the learner. The trainer starts one per actors.num with "
        "--config-json, --actor-id and --address - (the actor builds its envs and compiles "
        "its policy, then reads the transport's address as one JSON line on stdin). Or start "
        "one by hand on any host to join a running learner over Redis: --config C --set "
        "transport.kind=redis transport.url=URL --actor-id N (the address comes from "
        "transport.url and transport.prefix). Exit status 2: a bad config; 1: the Redis "
        "transport failed.",
    )
    parser.add_argument(
        "--config-json",
        metavar="JSON",
        help="the resolved config as JSON, set by the trainer, with the Redis password masked "
        "(the address on stdin carries it); replaces --config and --set (default: none)",
    )
    add_config_options(parser, "transport.kind=redis")
    parser.add_argument(
        "--actor-id",
        type=_actor_id,
        required=True,
        metavar="N",
        help="this actor's id, unique in the run; it picks the actor's env seeds and action "
        "noise (required)",
    )
    parser.add_argument(
        "--incarnation",
        type=int,
        default=0,
        metavar="K",
        help="which start of this actor in the run (set by the trainer); a restarted or "
        "resumed actor draws fresh env seeds and action noise (default: %(default)s)",
    )
    parser.add_argument(
        "--address",
        metavar="JSON",
        help="transport address as JSON, or '-' to read it as one JSON line from stdin once "
        "the actor is ready (set by the trainer) (default: none: a standalone actor, e.g. on "
        "another host, joins the Redis transport.url and transport.prefix of the config)",
    )
    return parser


def _actor_id(text: str) -> int:
    """An id the learner accepts (`unroll.META_RANGES`): a standalone actor with any other id
    would have every unroll it sends rejected."""
    n = int(text)
    if not 0 <= n <= MAX_ACTOR_ID:
        raise argparse.ArgumentTypeError(f"must be in 0..{MAX_ACTOR_ID}, got {n}")
    return n


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.address is not None:  # started by the trainer: the learner decides when we stop
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        die_with_parent()
    try:
        if args.config_json:
            config = from_dict(json.loads(args.config_json))
        else:
            config = load_config(args.config, args.set)
        if args.address is None and config.transport.kind != "redis":
            raise ConfigError(
                "a standalone actor (no --address) needs transport.kind=redis and transport.url"
            )
    except ConfigError as e:
        print(f"actor {args.actor_id}: config error: {e}", file=sys.stderr)
        return 2
    address: dict | Callable[[], dict | None]
    if args.address == "-":
        address = address_from_stdin  # with the trainer's URL, password included
    elif args.address is not None:
        address = json.loads(args.address)
    else:
        try:
            url = resolve_url(config.transport.url, config.transport.password_file)
        except ConfigError as e:
            print(f"actor {args.actor_id}: config error: {e}", file=sys.stderr)
            return 2
        address = redis_address(url, config.transport.prefix)
    try:
        return run(config, args.actor_id, address, args.incarnation)
    except RedisTransportError as e:
        print(f"actor {args.actor_id}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
