"""A fork server whose children are the victims of the crash and concurrency tests.

It imports evalkit, torch and the CLI's lazy imports once and warms them up; then each job is a
forked child that runs ``evalkit.cli.main(argv)`` (the real ``evalkit run`` / ``evalkit train``
code path) and is killed with SIGKILL when the job says so. Forking makes a trial cost
milliseconds of start-up instead of seconds of imports.

Protocol: one JSON object per line on stdin, one JSON reply per line on stdout.

    {"jobs": [JOB, ...]}   → {"results": [RESULT, ...]}   (jobs start together, past a barrier)

    JOB    = {"argv": [...], "log": PATH,                  # the child's stdout goes to PATH, stderr to PATH.err
              "kill_after": SECONDS | null,                # SIGKILL this long after the start
              "kill_at_stmt": N | null,                    # SIGKILL itself at its N-th SQL statement
              "kill_in_save": {"call": K, "phase": "write" | "replace"} | null,
                                                           # SIGKILL itself in the K-th trainer_state
                                                           # save: half-way through writing the file,
                                                           # or just before its os.replace
              "count_file": PATH | null,                   # write the number of SQL statements here
              "memory_limit_mb": MB | null}                # cap the child's address space at its
                                                           # size after the fork + MB (RLIMIT_AS)
    RESULT = {"killed": bool, "code": exit code | null, "seconds": wall time}
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import time
from typing import Any


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm_statement_kill(n: int | None) -> list[int]:
    """Count SQL statements of every connection this child opens; die at the n-th (1-based).
    Returns the counter (a one-element list)."""
    seen = [0]
    real_connect = sqlite3.connect

    def trace(_sql: str) -> None:
        seen[0] += 1
        if n is not None and seen[0] >= n:
            _die()

    def connect(*a: Any, **k: Any) -> sqlite3.Connection:
        conn = real_connect(*a, **k)
        conn.set_trace_callback(trace)
        return conn

    sqlite3.connect = connect  # type: ignore[assignment]
    return seen


def _arm_save_kill(call: int, phase: str) -> None:
    """Die inside the ``call``-th trainer_state save: half-way through writing the file
    (whatever path the trainer writes to), or just before it is renamed into place."""
    import io

    import torch

    import evalkit.train as train_mod

    calls = [0]
    real_save = torch.save

    def save(obj: Any, f: Any, *a: Any, **k: Any) -> None:
        calls[0] += 1
        if calls[0] != call or phase != "write":
            return real_save(obj, f, *a, **k)
        buf = io.BytesIO()
        real_save(obj, buf, *a, **k)
        data = buf.getvalue()
        with open(f, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
        _die()

    torch.save = save
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        if phase == "replace" and calls[0] == call:
            _die()
        real_replace(src, dst)

    train_mod.os = _OsProxy(replace)  # only the trainer's os.replace is intercepted


class _OsProxy:
    """``os`` with ``replace`` swapped (so the child's other os use is untouched)."""

    def __init__(self, replace: Any) -> None:
        self.replace = replace

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def _child(job: dict[str, Any], gate: int) -> None:
    os.read(gate, 1)  # wait for the barrier
    for target, path in ((1, job["log"]), (2, job["log"] + ".err")):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, target)
        os.close(fd)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    seen = _arm_statement_kill(job.get("kill_at_stmt"))
    if job.get("kill_in_save"):
        _arm_save_kill(job["kill_in_save"]["call"], job["kill_in_save"]["phase"])
    if job.get("memory_limit_mb"):
        import resource

        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        limit = vm + job["memory_limit_mb"] * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from evalkit.cli import main

    code = 0
    try:
        main(job["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 (a traceback: the test sees exit code 3 and the log)
        import traceback

        traceback.print_exc()
        code = 3
    sys.stdout.flush()
    sys.stderr.flush()
    if job.get("count_file"):
        with open(job["count_file"], "w") as f:
            f.write(str(seen[0]))
    os._exit(code)


def _run_jobs(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r, w = os.pipe()
    pids = []
    for job in jobs:
        pid = os.fork()
        if pid == 0:
            os.close(w)
            try:
                _child(job, r)
            finally:
                os._exit(4)
        pids.append(pid)
    os.close(r)
    t0 = time.perf_counter()
    os.write(w, b"x" * len(jobs))  # release every child at once
    os.close(w)
    deadlines = {pid: job.get("kill_after") for pid, job in zip(pids, jobs)}
    results: dict[int, dict[str, Any]] = {}
    while len(results) < len(pids):
        for pid in pids:
            if pid in results:
                continue
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                results[pid] = _result(status, time.perf_counter() - t0)
            elif deadlines[pid] is not None and time.perf_counter() - t0 >= deadlines[pid]:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                results[pid] = _result(status, time.perf_counter() - t0)
        time.sleep(0.0005)
    return [results[pid] for pid in pids]


def _result(status: int, seconds: float) -> dict[str, Any]:
    if os.WIFSIGNALED(status):
        return {"killed": os.WTERMSIG(status) == signal.SIGKILL, "code": None, "seconds": seconds}
    return {"killed": False, "code": os.WEXITSTATUS(status), "seconds": seconds}


def _warm_up(argv: list[str]) -> None:
    """Import and run once in the server, so forked children start warm."""
    import torch

    torch.set_num_threads(1)
    import rich.progress
    import rich.table  # noqa: F401

    import evalkit.cli
    import evalkit.report.table
    import evalkit.runner
    import evalkit.scoring
    import evalkit.train  # noqa: F401

    if argv:
        import contextlib
        import io

        from evalkit.cli import main

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                main(argv)
            except SystemExit:
                pass


def serve() -> None:
    _warm_up(json.loads(sys.argv[1]) if len(sys.argv) > 1 else [])
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        print(json.dumps({"results": _run_jobs(req["jobs"])}), flush=True)


if __name__ == "__main__":
    serve()
