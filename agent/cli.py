"""``nginx-manager-agent``: argument parsing, logging, signals and the main loop.

The only module that decides exit codes (see :mod:`agent.exit_codes`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from agent import exit_codes
from agent.version import VERSION

if TYPE_CHECKING:
    from agent.nginx import NginxReport

log = logging.getLogger("agent")

PROG = "nginx-manager-agent"
DEFAULT_HEALTH_ADDR = "127.0.0.1:8091"
DEFAULT_HEARTBEAT_INTERVAL_S = 30.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6) to a pair; port 0 asks for any free port."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port_text)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="The NGINX Manager Agent.")
    parser.add_argument("--version", action="version", version=VERSION)
    parser.add_argument("command", nargs="?", choices=["run"], default="run")
    parser.add_argument(
        "--health-addr",
        type=parse_host_port,
        default=DEFAULT_HEALTH_ADDR,
        metavar="HOST:PORT",
        help=f"address of the GET /healthz endpoint (default {DEFAULT_HEALTH_ADDR})",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=_positive_seconds,
        default=DEFAULT_HEARTBEAT_INTERVAL_S,
        metavar="SECONDS",
        help=f"seconds between heartbeat lines (default {DEFAULT_HEARTBEAT_INTERVAL_S:g})",
    )
    return parser


def configure_logging() -> None:
    """One line per event on stderr: ``2026-11-28T00:00:00Z agent INFO message``."""
    formatter = logging.Formatter(
        "%(asctime)s agent %(levelname)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%SZ"
    )
    formatter.converter = time.gmtime
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def install_stop_handlers(received: list[str]) -> int:
    """SIGTERM and SIGINT only record; the main loop acts. Explicit, so PID 1 works too.

    Returns the read end of a wakeup pipe the main loop sleeps on. The handler takes no
    lock: setting a ``threading.Event`` from a handler can deadlock when the signal lands
    while the main thread holds that event's lock inside ``wait()``.
    """

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)

    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    return rfd


NGINX_PROBE_DELAY_S = 1.0


def log_nginx(report: NginxReport) -> None:
    if report.path is None:
        log.info("nginx not found on PATH; carrying on without it")
    elif report.config_ok is None:
        log.warning("nginx at %s could not be probed: %s", report.path, report.detail)
    else:
        log.info("nginx found at %s: %s", report.path, report.version or "version unknown")
        if report.config_ok:
            log.info("nginx config test passed: %s", report.detail)
        else:
            log.warning("nginx config test failed: %s", report.detail)


def _probe_in_background(delay_s: float = NGINX_PROBE_DELAY_S) -> None:
    """Probe nginx from a thread, ``delay_s`` after serving began: ``nginx -t`` costs more
    CPU than the agent's whole start, and right at the start it would compete with the
    connections that queued for this agent during a hand-over."""

    def probe() -> None:
        from agent.nginx import probe_nginx

        time.sleep(delay_s)
        try:
            log_nginx(probe_nginx())
        except Exception:
            log.exception("nginx probe failed")

    threading.Thread(target=probe, name="nginx-probe", daemon=True).start()


def run(health_addr: tuple[str, int], heartbeat_interval_s: float) -> int:
    # Imported here so that `--version` (the launcher's preflight) starts without http.server.
    from agent.health import DRAIN_S, HealthServer
    from agent.listen import Notifier, inherited

    received: list[str] = []
    wakeup = install_stop_handlers(received)
    started = time.monotonic()
    log.info("%s %s starting (pid %d)", PROG, VERSION, os.getpid())
    given = inherited(os.environ)
    notifier = Notifier(os.environ)
    host, port = health_addr
    if given:
        log.info("serving on %d inherited socket(s) (LISTEN_FDS: %s); --health-addr %s:%d "
                 "is ignored", len(given), ", ".join(name for _, name in given), host, port)
        servers = [HealthServer(host, port, VERSION, sock=sock) for sock, _ in given]
    else:
        try:
            servers = [HealthServer(host, port, VERSION)]
        except OSError as exc:
            log.error("cannot bind health address %s:%d: %s", host, port, exc)
            return exit_codes.STARTUP_FAILURE
    for server in servers:
        server.start()
        log.info("health endpoint listening on %s", server.url)
    notifier.send(READY=1, STATUS=f"{VERSION} serving on {', '.join(s.url for s in servers)}")
    _probe_in_background()
    ping_s = notifier.ping_every_s()
    next_beat = started + heartbeat_interval_s
    next_ping = time.monotonic() if ping_s else None
    try:
        while not received:
            now = time.monotonic()
            if next_ping is not None and now >= next_ping:
                notifier.send(WATCHDOG=1)
                next_ping = now + (ping_s or 0.0)
            if now >= next_beat:
                log.info("heartbeat: version %s, uptime %.1fs", VERSION, now - started)
                next_beat = now + heartbeat_interval_s
            due = min(next_beat, next_ping if next_ping is not None else next_beat)
            if select.select([wakeup], [], [], max(0.0, due - time.monotonic()))[0]:
                with contextlib.suppress(BlockingIOError):
                    os.read(wakeup, 512)
    finally:
        notifier.send(STOPPING=1)
        for server in servers:
            server.stop_accepting()
        until = time.monotonic() + DRAIN_S  # one drain for all the sockets
        for server in servers:
            server.finish(until)
        notifier.close()
    log.info("stopping on %s", received[0] if received else "request")
    log.info("%s %s stopped", PROG, VERSION)
    return exit_codes.STOPPED


def exit_now(code: int) -> NoReturn:
    """Exit with ``code`` once the logs are flushed, without the interpreter's teardown.

    Every thread that matters has finished by then (the health servers answered their
    requests in ``stop``; only the daemon nginx probe may remain), and the teardown (module
    clean-up, garbage collection) takes longer than the whole stop, about 25 ms: time in
    which, in a ``stop-first`` hand-over, connections wait for the next agent.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        return run(args.health_addr, args.heartbeat_interval)
    except Exception:
        log.exception("unexpected failure")
        return exit_codes.FAILURE
