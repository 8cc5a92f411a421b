"""The journal and recovery, as units: atomic writes, the kept previous copy, recover()."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from launcher import install
from launcher.journal import Build, Journal, Staged, Trial, new_state


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_torn_journal_falls_back_to_the_previous_write_with_its_bad_list(tmp_path: Path) -> None:
    """A state.json torn below the filesystem loses one step at most, never the bad list."""
    journal = Journal(tmp_path)
    bad = new_state().with_bad(Build("0.1.2", "a" * 64), "crashed", "2026-11-28T00:00:00Z")
    journal.save(bad)
    journal.save(dataclasses.replace(bad, last_error="transport: down"))
    (tmp_path / "state.json").write_bytes(b'{"schema": 1, "pha')
    loaded = journal.load()
    assert loaded is not None and [b.version for b in loaded.bad] == ["0.1.2"]
    assert loaded.last_error is None  # one write older
    assert len(list(tmp_path.glob("state.json.corrupt-*"))) == 1
    assert not list(tmp_path.glob(".state.json*")), "no temp file left"


def test_save_round_trips_every_field(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    build = Build("0.1.1", "b" * 64)
    state = dataclasses.replace(
        new_state(), phase="trial", current=build, previous=Build("0.1.0", "c" * 64),
        trial=Trial(build, "2026-11-28T00:00:00Z", run_time_s=12.5, healthy_seen=True,
                    container_restarts=2),
        staged=Staged(build, ".agent.download-x"), etag='"e"', consecutive_failures=3)
    saved = journal.save(state)
    assert journal.load() == saved


def _bin(tmp_path: Path, agent: bytes | None, old: bytes | None) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if agent is not None:
        (bin_dir / "agent").write_bytes(agent)
    if old is not None:
        (bin_dir / "agent.old").write_bytes(old)
    return bin_dir


def test_recover_completes_a_swap_whose_rename_happened(tmp_path: Path) -> None:
    old, new = Build("0.1.0", sha(b"v0")), Build("0.1.1", sha(b"v1"))
    bin_dir = _bin(tmp_path, b"v1", b"v0")
    state = dataclasses.replace(new_state(), phase="swapping", current=old,
                                staged=Staged(new, ".agent.download-1"))
    out = install.recover(state, bin_dir)
    assert out.phase == "trial" and out.current == new and out.previous == old
    assert out.trial is not None and out.trial.run_time_s == 0


def test_recover_abandons_a_swap_before_its_rename(tmp_path: Path) -> None:
    old, new = Build("0.1.0", sha(b"v0")), Build("0.1.1", sha(b"v1"))
    bin_dir = _bin(tmp_path, b"v0", b"v0")  # agent.old already linked, agent not yet renamed
    (bin_dir / ".agent.download-1").write_bytes(b"v1")
    state = dataclasses.replace(new_state(), phase="swapping", current=old,
                                staged=Staged(new, ".agent.download-1"))
    out = install.recover(state, bin_dir)
    assert out.phase == "committed" and out.current == old and out.staged is None
    assert sorted(p.name for p in bin_dir.iterdir()) == ["agent", "agent.old"]


def test_recover_finishes_an_interrupted_rollback(tmp_path: Path) -> None:
    good, failed = Build("0.1.1", sha(b"good")), Build("0.1.2", sha(b"bad"))
    bin_dir = _bin(tmp_path, b"bad", b"good")
    state = dataclasses.replace(new_state(), phase="rolling_back", current=failed,
                                previous=good, rollback_to=good).with_bad(failed, "x", "t")
    out = install.recover(state, bin_dir)
    assert out.phase == "committed" and out.current == good and out.previous is None
    assert (bin_dir / "agent").read_bytes() == b"good" and not (bin_dir / "agent.old").exists()
    assert [b.version for b in out.bad] == ["0.1.2"]


def test_recover_restores_agent_old_when_agent_is_missing(tmp_path: Path) -> None:
    prev = Build("0.1.0", sha(b"v0"))
    bin_dir = _bin(tmp_path, None, b"v0")
    state = dataclasses.replace(new_state(), phase="committed",
                                current=Build("0.1.1", sha(b"v1")), previous=prev)
    out = install.recover(state, bin_dir)
    assert out.current == prev and (bin_dir / "agent").read_bytes() == b"v0"


def test_recover_names_an_unknown_build_unknown(tmp_path: Path) -> None:
    bin_dir = _bin(tmp_path, b"someone else's", None)
    state = dataclasses.replace(new_state(), phase="committed",
                                current=Build("0.1.1", sha(b"v1")))
    out = install.recover(state, bin_dir)
    assert out.current == Build("unknown", sha(b"someone else's"))
