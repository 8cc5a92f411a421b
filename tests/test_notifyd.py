"""The agent's notify socket, with real senders: who sent a message is the kernel's word.

And the agent side (``agent.listen``) against the launcher side: what the project's agent
sends is what the launcher reads; sockets it inherits are taken only when LISTEN_PID is its
own pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until

from agent.listen import Notifier as AgentNotifier
from agent.listen import inherited
from launcher.loop import Loop
from launcher.notifyd import NotifyServer, belongs_to, parse
from launcher.reaper import Reaper

SEND = ("import os, socket, sys; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
        "s.sendto(sys.argv[2].encode(), sys.argv[1]); print(os.getpid())")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[NotifyServer, Loop, list[tuple[int, dict[str, str]]]]]:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    loop = Loop(Reaper())
    got: list[tuple[int, dict[str, str]]] = []
    srv = NotifyServer(run, loop, lambda pid, fields: got.append((pid, fields)))
    yield srv, loop, got
    srv.close()
    loop.close()


def pump(loop: Loop, got: list[object], n: int) -> None:
    def turn() -> bool:
        for key, _ in loop.sel.select(0.05):
            key.data()
        return len(got) >= n
    wait_until(turn, 10, f"{n} notify message(s)")


def test_the_sender_pid_is_the_kernels_not_the_messages(server: tuple) -> None:
    """A process that claims MAINPID= of another is still known by its own pid."""
    srv, loop, got = server
    out = subprocess.run([sys.executable, "-c", SEND, srv.address, "READY=1\nMAINPID=1"],
                         capture_output=True, text=True, check=True)
    pump(loop, got, 1)
    assert got == [(int(out.stdout), {"READY": "1", "MAINPID": "1"})]


def test_the_project_agents_notifier_reaches_the_launcher(server: tuple) -> None:
    srv, loop, got = server
    env = {"NOTIFY_SOCKET": srv.address, "WATCHDOG_USEC": "2000000",
           "WATCHDOG_PID": str(os.getpid())}
    notifier = AgentNotifier(env)
    assert env == {}  # taken out of the environment, as sd_notify's unset_environment does
    assert notifier.ping_every_s() == 1.0
    assert notifier.send(READY=1, STATUS="serving")
    assert notifier.send(WATCHDOG=1)
    notifier.close()
    pump(loop, got, 2)
    assert got == [(os.getpid(), {"READY": "1", "STATUS": "serving"}),
                   (os.getpid(), {"WATCHDOG": "1"})]


def test_only_the_agents_process_group_counts() -> None:
    """The agent leads its own group: its children count, an unrelated process does not."""
    agent = subprocess.Popen(["sh", "-c", "sleep 30 & wait"], start_new_session=True)
    other = subprocess.Popen(["sleep", "30"])
    try:
        kids = wait_until(lambda: __import__("psutil").Process(agent.pid).children(), 10,
                          "the agent's child")
        assert belongs_to(agent.pid, agent.pid)
        assert belongs_to(kids[0].pid, agent.pid)
        assert not belongs_to(other.pid, agent.pid)
        assert not belongs_to(os.getpid(), agent.pid)
        assert not belongs_to(2 ** 22 + 12345, agent.pid)  # no such process
    finally:
        os.killpg(agent.pid, signal.SIGKILL)  # the group: the agent's own sleep too
        for p in (agent, other):
            p.kill()
            p.wait()


def test_parse_takes_key_value_lines_only() -> None:
    assert parse(b"READY=1\nnonsense\n=x\nSTATUS=a=b\n\xff") == {"READY": "1", "STATUS": "a=b"}


def test_inherited_sockets_need_our_own_listen_pid() -> None:
    env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDNAMES": "x"}
    assert inherited(env) == []
    assert env == {}  # removed either way


def test_inherited_sockets_are_served_from_fd_3(tmp_path: Path) -> None:
    """A real child given a listening socket at fd 3 with its own LISTEN_PID takes it."""
    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); "
            "os.environ['LISTEN_PID'] = str(os.getpid()); "
            "from agent.listen import inherited; "
            "socks = inherited(os.environ); "
            "print(len(socks), socks[0][1], socks[0][0].getsockname()[1], "
            "'LISTEN_FDS' in os.environ)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        fd = sock.fileno()
        out = subprocess.run(
            [sys.executable, "-c", f"import os; os.dup2({fd}, 3); os.execv(sys.executable, "
             f"[sys.executable, '-c', {code!r}, {str(Path(__file__).parent.parent)!r}])"
             .replace("import os;", "import os, sys;")],
            env={**os.environ, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"},
            pass_fds=(fd,), capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "web", str(port), "False"]
