"""Preflight runs the staged binary's ``--version`` for real, with fake agents as scripts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from launcher.errors import PreflightError
from launcher.preflight import preflight


def fake_agent(tmp_path: Path, body: str, mode: int = 0o755) -> Path:
    path = tmp_path / "agent"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(mode)
    return path


def refusal(path: Path, expected: str = "0.1.2", **options: float) -> str:
    with pytest.raises(PreflightError) as caught:
        preflight(path, expected, **options)  # type: ignore[arg-type]
    assert caught.value.kind == "preflight"
    return str(caught.value)


def test_good_version(tmp_path: Path) -> None:
    preflight(fake_agent(tmp_path, 'echo "  0.1.2  "'), "0.1.2")


def test_wrong_version(tmp_path: Path) -> None:
    agent = fake_agent(tmp_path, "echo 0.1.1")
    assert refusal(agent) == f"preflight: {agent} --version printed '0.1.1', expected '0.1.2'"


def test_version_must_be_a_word_of_the_first_line(tmp_path: Path) -> None:
    assert "printed 'agent 0.1.20'" in refusal(fake_agent(tmp_path, "echo agent 0.1.20"))
    assert "printed 'agent\\n0.1.2'" in refusal(fake_agent(tmp_path, "printf 'agent\\n0.1.2'"))
    assert "printed 'agent-0.1.2'" in refusal(fake_agent(tmp_path, "echo agent-0.1.2"))


def test_not_executable(tmp_path: Path) -> None:
    agent = fake_agent(tmp_path, "echo 0.1.2", mode=0o644)
    assert refusal(agent) == f"preflight: {agent} is not executable"


def test_missing(tmp_path: Path) -> None:
    assert "does not exist" in refusal(tmp_path / "nothing")


def test_not_a_program(tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    agent.write_bytes(b"\x7fELF garbage")
    agent.chmod(0o755)
    assert refusal(agent) == f"preflight: cannot run {agent}: Exec format error"


def test_non_zero_exit_names_code_and_stderr(tmp_path: Path) -> None:
    agent = fake_agent(tmp_path, "echo 0.1.2; echo 'bad flag' >&2; exit 3")
    assert refusal(agent) == f"preflight: {agent} --version exited 3: bad flag"


def test_killed_by_a_signal(tmp_path: Path) -> None:
    agent = fake_agent(tmp_path, "kill -SEGV $$")
    assert refusal(agent) == f"preflight: {agent} --version was killed by SIGSEGV"


def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    agent = fake_agent(tmp_path, "sleep 30 & sleep 30")
    started = time.monotonic()
    assert refusal(agent, timeout_s=0.3) == f"preflight: {agent} --version timed out after 0.3s"
    assert time.monotonic() - started < 3


def test_background_child_holding_stdout_does_not_hang(tmp_path: Path) -> None:
    agent = fake_agent(tmp_path, "echo 0.1.2; sleep 30 &")
    started = time.monotonic()
    assert "timed out" in refusal(agent, timeout_s=0.3)
    assert time.monotonic() - started < 3


def test_output_is_capped(tmp_path: Path) -> None:
    agent = fake_agent(tmp_path, "yes 0.1.2")
    assert refusal(agent, max_output_bytes=1000) == (
        f"preflight: {agent} --version printed more than 1000 bytes"
    )


def test_environment_is_minimal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/x")
    monkeypatch.setenv("SECRET_TOKEN", "x")
    agent = fake_agent(
        tmp_path, 'test -z "$NOTIFY_SOCKET$SECRET_TOKEN" && test -n "$PATH" && echo 0.1.2'
    )
    preflight(agent, "0.1.2")
