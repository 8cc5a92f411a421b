"""sd_notify against a real datagram socket standing in for systemd's notification socket."""

from __future__ import annotations

import array
import os
import socket
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.sdnotify import Notifier

CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


class FakeManager:
    """The manager's end: SO_PASSCRED on, so every datagram carries the sender's pid."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.sock.settimeout(5)

    def receive(self) -> tuple[str, int]:
        """One datagram's text and the pid from its SCM_CREDENTIALS."""
        data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(CREDS.size))
        pids = [CREDS.unpack(bytes(cdata[: CREDS.size]))[0]
                for level, kind, cdata in ancdata
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
        assert len(pids) == 1, ancdata
        return data.decode(), pids[0]

    def pending(self) -> bool:
        self.sock.settimeout(0.05)
        try:
            self.sock.recv(4096, socket.MSG_PEEK)
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(5)
        return True


@pytest.fixture(params=["path", "abstract"])
def manager(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[FakeManager, str]]:
    """A manager bound at a filesystem path or an abstract name, and its NOTIFY_SOCKET value."""
    if request.param == "path":
        path = str(tmp_path / "notify")
        fake, value = FakeManager(path), path
    else:
        name = f"nginx-manager-test-{uuid.uuid4().hex}"
        fake, value = FakeManager("\0" + name), "@" + name
    with fake.sock:
        yield fake, value


def test_messages_reach_the_manager_with_our_credentials(
    manager: tuple[FakeManager, str],
) -> None:
    """READY, STATUS, WATCHDOG and STOPPING arrive one datagram each, sent by this process."""
    fake, address = manager
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert notifier.enabled

    assert notifier.ready("agent 0.1.0 running")
    assert fake.receive() == ("READY=1\nSTATUS=agent 0.1.0 running", os.getpid())
    assert notifier.ready()
    assert fake.receive() == ("READY=1", os.getpid())
    assert notifier.status("checking for updates")
    assert fake.receive() == ("STATUS=checking for updates", os.getpid())
    assert notifier.watchdog()
    assert fake.receive() == ("WATCHDOG=1", os.getpid())
    assert notifier.stopping()
    assert fake.receive() == ("STOPPING=1", os.getpid())
    assert notifier.send("EXTEND_TIMEOUT_USEC=5000000", STATUS="stopping the agent")
    assert fake.receive() == ("EXTEND_TIMEOUT_USEC=5000000\nSTATUS=stopping the agent",
                              os.getpid())
    assert not fake.pending()


def test_notifier_opens_no_inheritable_descriptor(manager: tuple[FakeManager, str]) -> None:
    """Sending leaves no descriptor behind for the agent to inherit."""
    _fake, address = manager
    before = set(os.listdir("/proc/self/fd"))
    assert Notifier({"NOTIFY_SOCKET": address}).status("x")
    assert set(os.listdir("/proc/self/fd")) <= before


def test_disabled_without_notify_socket() -> None:
    """Without NOTIFY_SOCKET nothing is sent and every call says so."""
    notifier = Notifier({"WATCHDOG_USEC": "2000000"})
    assert not notifier.enabled
    assert notifier.send("READY=1") is False
    assert notifier.ready("up") is False
    assert notifier.stopping() is False
    assert notifier.watchdog_interval_s() is None


def test_default_environment_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Built without a mapping, the notifier reads the process environment."""
    monkeypatch.setenv("NOTIFY_SOCKET", "@from-environ")
    assert Notifier().address == "\0from-environ"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not Notifier().enabled


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "2000000"}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "<self>"}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "<other>"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "not-a-pid"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    """Half of WATCHDOG_USEC, and only when the watchdog is meant for this process."""
    pids = {"<self>": str(os.getpid()), "<other>": str(os.getpid() + 1)}
    env = {k: pids.get(v, v) for k, v in env.items()} | {"NOTIFY_SOCKET": "/run/notify"}
    assert Notifier(env).watchdog_interval_s() == expected


def test_dead_socket_does_not_raise(tmp_path: Path) -> None:
    """A manager that has gone away costs a False, never an exception."""
    missing = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert missing.enabled
    assert missing.ready("up") is False

    path = tmp_path / "closed"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
    closed = Notifier({"NOTIFY_SOCKET": str(path)})  # the file exists, nobody listens
    assert closed.watchdog() is False
    assert Notifier({"NOTIFY_SOCKET": f"@gone-{uuid.uuid4().hex}"}).stopping() is False


def test_credentials_are_parsed_from_a_real_ancillary_buffer() -> None:
    """The double's credential parsing reads the layout the kernel writes (pid, uid, gid)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        a.send(b"x")
        _data, ancdata, _flags, _addr = b.recvmsg(16, socket.CMSG_SPACE(CREDS.size))
        (_level, _kind, cdata), = ancdata
        pid, uid, gid = array.array("i", cdata[: CREDS.size])
        assert (pid, uid, gid) == (os.getpid(), os.getuid(), os.getgid())
