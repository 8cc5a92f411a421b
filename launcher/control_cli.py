"""``hold``, ``resume``, ``pin``, ``unpin`` and ``install``: the CLI side of ``launcher.controls``.

A running launcher is asked over ``control.sock`` and answers once it has journaled the
request; with none running, the request is applied to the journal under the lock (a state
dir with no journal yet gets a fresh one, so a host can be held or pinned before its first
start). Exit 0 once recorded, 2 for a bad argument, 1 when refused or on failure. Every
request names who asked (the user, and the user behind ``sudo``); the journal keeps it
with the time.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys

from launcher import controls, layout, status
from launcher.errors import ConfigError
from launcher.journal import Journal, new_state, utc_iso
from launcher.lock import StateLock

HELP = {
    "hold": "stop applying updates on this host until `resume` (checks go on)",
    "resume": "lift this host's hold",
    "pin": "never update above VERSION (until `unpin`)",
    "unpin": "lift this host's pin",
    "install": "install the named release now (an explicit, signed downgrade or reinstall); "
               "the host is then pinned at it",
}


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                state_dir_option: object) -> None:
    for name, text in HELP.items():
        p = sub.add_parser(name, help=text, description=text)
        if name in ("pin", "install"):
            p.add_argument("version", metavar="VERSION")
        if name == "hold":
            p.add_argument("--reason", help="why, shown by status (one line)")
        assert callable(state_dir_option)
        state_dir_option(p)


def who() -> str:
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = f"uid {os.geteuid()}"
    sudo = os.environ.get("SUDO_USER")
    return f"{user} (sudo by {sudo})" if sudo and sudo != user else user


def request_of(args: argparse.Namespace) -> dict[str, object]:
    request: dict[str, object] = {"cmd": args.command, "by": who()}
    if args.command in ("pin", "install"):
        from packaging.version import InvalidVersion, Version  # the CLI only

        try:
            Version(args.version)
        except InvalidVersion:
            raise ConfigError(f"{args.version!r} is not a version (e.g. 1.4.2)") from None
        if not layout.safe_name(args.version):
            raise ConfigError(f"{args.version!r} cannot name a release")
        request["version"] = args.version
    if args.command == "hold":
        request["reason"] = args.reason
    return request


def cmd_control(args: argparse.Namespace) -> int:
    from launcher import cli

    request = request_of(args)
    state_dir = status.state_dir_of(args)
    code = cli._ask_launcher(state_dir, request)
    if code is not None:
        return code
    lock = StateLock(state_dir)
    lock.acquire()
    try:
        journal = Journal(state_dir)
        old = journal.load() or new_state()
        state, answer = controls.command(old, request, utc_iso())
        if state is not old:
            journal.save(state)
    finally:
        cli._release(lock)
    if answer.get("ok"):
        print(f"{answer.get('message')} (recorded; no launcher is running)")
        return 0
    print(f"error: {answer.get('error')}", file=sys.stderr)
    return cli.EXIT_CONFIG if answer.get("bad_argument") else 1
