"""``nginx-manager-launcher``: argument parsing, logging, wiring; the only place that exits.

Exit codes: 0 success (``run``: after a requested stop), 2 bad configuration or another
launcher on the state dir, 3 when ``rollback`` has no other build to go back to (nothing
is changed), 100 after a swap in container mode (``run``), 1 for other errors (``check``:
the source did not answer or the manifest was refused); ``run`` passes on the agent's own
code when it did not stop cleanly. ``hold``, ``resume``, ``pin``, ``unpin`` and ``install``
(``launcher.control_cli``): 0 once recorded, 2 for a bad argument, 1 when refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from launcher import control, control_cli, logformat, permissions, settings, status
from launcher.checks import check_request
from launcher.errors import ConfigError, HostError, LauncherError, LockedError
from launcher.journal import Journal, State, utc_iso
from launcher.lock import StateLock, holder_pid
from launcher.metrics import CountingJournal
from launcher.redact import RedactFilter

log = logging.getLogger("launcher")

EXIT_CONFIG = 2
EXIT_REFUSED = 3  # rollback: there is no other build to roll back to; nothing was changed
DEFAULT_STATE_DIR = status.DEFAULT_STATE_DIR


def setup_logging(verbose: bool = False, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logformat.formatter(log_format, "launcher"))
    handler.addFilter(RedactFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (keys as the long options)")
    for opt in settings.OPTIONS:
        flag = "--" + opt.key.replace("_", "-")
        if opt.key in settings.BOOL_FLAGS:
            p.add_argument(flag, dest=opt.key, action="store_const", const=True, default=None,
                           help=opt.help)
        elif opt.many:
            p.add_argument(flag, dest=opt.key, action="append", default=None, help=opt.help)
        else:
            p.add_argument(flag, dest=opt.key, default=None, help=opt.help)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _state_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", dest="state_dir", default=None,
                   help=f"state directory (default {DEFAULT_STATE_DIR})")


def launcher_version() -> str:
    """The installed distribution's version: the one the Debian package and the image carry."""
    from importlib import metadata  # only for --version: the resident never loads it

    try:
        return metadata.version("nginx-manager-agent")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class _VersionAction(argparse.Action):
    """``--version``: print :func:`launcher_version` and exit, looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, nargs=0, default=argparse.SUPPRESS,
                         help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(launcher_version())
        parser.exit()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nginx-manager-launcher",
                                description="Keeps the NGINX Manager Agent updated and running.")
    p.add_argument("--version", action=_VersionAction, help="print the launcher's version and exit")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="supervise the agent and keep it up to date")
    _add_options(run)
    run.add_argument("agent_args", nargs="*", metavar="-- AGENT_ARGS",
                     help="arguments passed to the agent")
    check = sub.add_parser("check", help="one check now: what would be done (changes nothing)")
    _add_options(check)
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    show = sub.add_parser("status", help="installed, running, bad builds, last/next check")
    _state_dir_option(show)
    show.add_argument("--json", action="store_true", help="one JSON object")
    rb = sub.add_parser("rollback", help="put agent.old back and block the build it replaces")
    _state_dir_option(rb)
    ub = sub.add_parser("unblock", help="allow a build marked bad to be installed again")
    ub.add_argument("version")
    _state_dir_option(ub)
    control_cli.add_parsers(sub, _state_dir_option)
    return p


def load_settings(args: argparse.Namespace) -> settings.Settings:
    flags = {o.key: getattr(args, o.key, None) for o in settings.OPTIONS}
    loaded = settings.load(flags, config_file=args.config,
                           agent_args=tuple(getattr(args, "agent_args", ()) or ()))
    settings.require_signatures(loaded)  # run, check and every config reload
    if loaded.log_format != "text":
        setup_logging(getattr(args, "verbose", False), loaded.log_format)
    return loaded


def cmd_run(args: argparse.Namespace) -> int:
    from launcher.supervisor import Supervisor

    s = load_settings(args)
    return Supervisor(s, config_file=args.config, reload=lambda: load_settings(args)).run()


def cmd_check(args: argparse.Namespace) -> int:
    from launcher import worker

    s = load_settings(args)
    if not s.manifest_url:
        raise ConfigError("check needs --manifest-url or --github-repo")
    try:
        state = Journal(s.state_dir).read_only()
    except (OSError, ValueError, KeyError, TypeError):
        state = None
    # Unconditional: a 304 would say nothing about what a run would do.
    request = check_request(s.for_worker(), state, stage=False, conditional=False)
    result = worker.run_check(request)
    if args.json:
        print(json.dumps(result.__dict__, indent=2))
    elif result.outcome == "error":
        print(f"check failed: {result.error}")
    elif result.outcome == "none":
        print(f"no update: {result.reason}")
    else:
        what = "would install" if result.outcome == "install" else "would update to"
        print(f"{what} {result.version} (sha256 {result.sha256}): {result.reason}")
    return 1 if result.outcome == "error" else 0


def _offline(state_dir: Path) -> tuple[StateLock, Journal, State]:
    lock = StateLock(state_dir)
    lock.acquire()
    journal = CountingJournal(state_dir)  # an operator's rollback counts in the metrics
    state = journal.load()
    if state is None:
        _release(lock)
        raise ConfigError(f"no launcher state in {state_dir}")
    return lock, journal, state


def _release(lock: StateLock) -> None:
    """Unlock; run as root on the service's state dir, hand back what was written, so the
    service can still write it (a root-owned journal would pause its updates for good)."""
    lock.release()
    d = lock.state_dir
    permissions.give_back(d, [d / permissions.RUN_DIR, lock.path, d / "state.json",
                              d / "state.json.prev", d / "bin", d / "bin" / "agent",
                              d / "bin" / "agent.old"])


def _ask_launcher(state_dir: Path, request: dict[str, object],
                  wait_s: float = 10.0) -> int | None:
    """Send ``request`` to the running launcher; None when none runs. A launcher that is
    still starting (its control socket not yet listening) is waited for a little."""
    deadline = time.monotonic() + wait_s
    while True:
        pid = holder_pid(state_dir)
        if pid is None:
            return None
        try:
            answer = control.send(state_dir, request)
            break
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            if time.monotonic() > deadline:
                raise HostError(f"the launcher (pid {pid}) does not answer on "
                                f"{control.socket_path(state_dir)}: {exc.strerror}") from exc
            time.sleep(0.2)
        except (OSError, ValueError) as exc:
            raise HostError(f"the launcher (pid {pid}) gave no answer: {exc}") from exc
    if answer.get("ok"):
        print(answer.get("message"))
        return 0
    print(f"error: {answer.get('error')}", file=sys.stderr)
    if answer.get("bad_argument"):
        return EXIT_CONFIG
    return EXIT_REFUSED if answer.get("refused") else 1


def cmd_rollback(args: argparse.Namespace) -> int:
    state_dir = status.state_dir_of(args)
    code = _ask_launcher(state_dir, {"cmd": "rollback"})
    if code is not None:
        return code
    from launcher import install

    lock, journal, state = _offline(state_dir)
    try:
        state = journal.save(install.recover(state, state_dir / "bin"))
        failed = state.current
        refusal = install.rollback_refusal(state, state_dir / "bin")
        if refusal is not None or failed is None:
            print(f"error: {refusal}; nothing was changed", file=sys.stderr)
            return EXIT_REFUSED
        state, ok = control.rollback(state, state_dir / "bin", journal,
                                     "rolled back by the operator", utc_iso())
        if not ok:
            print("error: the rollback could not be done", file=sys.stderr)
            return 1
        restored = state.current.version if state.current else "?"
        print(f"rolled back from {failed.version} to {restored}; {failed.version} is blocked "
              "until unblocked")
        return 0
    finally:
        _release(lock)


def cmd_unblock(args: argparse.Namespace) -> int:
    state_dir = status.state_dir_of(args)
    code = _ask_launcher(state_dir, {"cmd": "unblock", "version": args.version})
    if code is not None:
        return code
    lock, journal, state = _offline(state_dir)
    try:
        state, n = control.unblock(state, args.version)
        journal.save(state)
        print(f"unblocked {n} build(s) of {args.version}")
        return 0
    finally:
        _release(lock)


COMMANDS = {"run": cmd_run, "check": cmd_check, "status": status.cmd_status,
            "rollback": cmd_rollback, "unblock": cmd_unblock,
            **dict.fromkeys(control_cli.HELP, control_cli.cmd_control)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, LockedError) as exc:
        _fatal(str(exc))
        return EXIT_CONFIG
    except LauncherError as exc:
        _fatal(exc.describe())
        return 1


def _fatal(words: str) -> None:
    """The last words of a failed command: a line of text, or a JSON log line once
    ``--log-format json`` is in force."""
    handler = logging.getLogger().handlers[0] if logging.getLogger().handlers else None
    if handler is not None and isinstance(handler.formatter, logformat.JsonFormatter):
        log.error("nginx-manager-launcher: %s", words)
    else:
        print(f"nginx-manager-launcher: {words}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
