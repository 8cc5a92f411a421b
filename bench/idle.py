"""Idle footprint: the resident launcher vs supervisord, both supervising the same agent.

Both run at once, so one idle interval is measured for both under the same machine load.
The launcher runs with its default config (poll 300 s, health window 60 s, stop grace 10 s)
except ``--jitter 0``: the first poll then comes at once (with jitter it could land inside
the idle interval); after it the next one is 300 s away. RSS is VmRSS; wake-ups are context switches
(voluntary + involuntary, every thread) over the interval; CPU is schedstat run time.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from common import (
    VENV_PY,
    Figure,
    build,
    env_with_python3,
    free_port,
    health_version,
    nginx,
    publish,
    rss_kib,
    sched_ns,
    scratch,
    stop_proc,
    wait_for,
    wakeups,
)

IDLE_S = 20.0


def supervisord_conf(work: Path, agent: Path, port: int) -> Path:
    conf = work / "supervisord.conf"
    conf.write_text(f"""[supervisord]
nodaemon=true
logfile={work}/supervisord.log
pidfile={work}/supervisord.pid
childlogdir={work}

[unix_http_server]
file={work}/supervisor.sock

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{work}/supervisor.sock

[program:agent]
command={agent} run --health-addr 127.0.0.1:{port}
stopsignal=TERM
""")
    return conf


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()]


def run(idle_s: float = IDLE_S) -> list[Figure]:
    work = scratch("idle")
    release = work / "release"
    agent = build("0.1.0", work)
    env = env_with_python3()
    with nginx(work / "nginx", release, {"rel": ""}) as srv:
        publish("0.1.0", release, srv.url("rel", ""), agent)
        lport, sport = free_port(), free_port()
        llog = (work / "launcher.log").open("wb")
        launcher = subprocess.Popen(
            [str(VENV_PY.parent / "nginx-manager-launcher"), "run", "--state-dir",
             str(work / "state"), "--seed-binary", str(agent), "--allow-unsigned", "--manifest-url",
             srv.url("rel", "version.json"), "--allow-http", "--jitter", "0", "--",
             "run", "--health-addr", f"127.0.0.1:{lport}"],
            stdout=llog, stderr=llog, env=env)
        sup = subprocess.Popen(
            [str(VENV_PY.parent / "supervisord"), "-n", "-c",
             str(supervisord_conf(work, agent, sport))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            for port in (lport, sport):
                wait_for(lambda p=port: health_version(f"http://127.0.0.1:{p}/healthz"), 20,
                         "agent health")
            log = work / "launcher.log"
            wait_for(lambda: log.read_text().count("next check in") >= 2, 20,
                     "the launcher's first check")
            time.sleep(2.0)  # let the worker's exit and the agents' start-up settle
            (lagent,) = children(launcher.pid)
            (sagent,) = children(sup.pid)
            pids = {"launcher": launcher.pid, "l_agent": lagent, "supervisord": sup.pid,
                    "s_agent": sagent}
            w0 = {k: wakeups(p) for k, p in pids.items()}
            c0 = {k: sched_ns(p) for k, p in pids.items()}
            rss: dict[str, list[float]] = {k: [] for k in pids}
            t0 = time.monotonic()
            for _ in range(4):
                time.sleep(idle_s / 4)
                for k, p in pids.items():
                    rss[k].append(rss_kib(p) / 1024)
            dt = time.monotonic() - t0
            w = {k: (wakeups(p) - w0[k]) / dt for k, p in pids.items()}
            cpu = {k: (sched_ns(p) - c0[k]) / 1e6 / dt * 60 for k, p in pids.items()}
        finally:
            stop_proc(launcher)
            stop_proc(sup)
            llog.close()
    r = {k: max(v) for k, v in rss.items()}
    return [
        Figure("idle RSS: resident launcher alone", f"{r['launcher']:.1f} MiB",
               f"supervisord alone {r['supervisord']:.1f} MiB",
               "<= supervisord's", r["launcher"] <= r["supervisord"],
               data={"rss_mib": r}),
        Figure("idle RSS: launcher + agent", f"{r['launcher'] + r['l_agent']:.1f} MiB",
               f"supervisord + agent {r['supervisord'] + r['s_agent']:.1f} MiB", "(info)"),
        Figure("idle wake-ups of the resident", f"{w['launcher']:.2f} /s over {dt:.0f} s",
               f"supervisord {w['supervisord']:.2f} /s", "no periodic wake-ups (0 /s)",
               w["launcher"] * dt < 1.0, data={"wakeups_per_s": w}),
        Figure("idle CPU of the resident", f"{cpu['launcher']:.2f} ms/min",
               f"supervisord {cpu['supervisord']:.2f} ms/min", "<= supervisord's",
               cpu["launcher"] <= cpu["supervisord"], data={"cpu_ms_per_min": cpu}),
        Figure("idle wake-ups of the agent itself (info)", f"{w['l_agent']:.2f} /s",
               f"same agent under supervisord {w['s_agent']:.2f} /s", "(info)",
               note=f"agent CPU {cpu['l_agent']:.1f} ms/min"),
    ]


if __name__ == "__main__":
    for f in run():
        print(f)

