"""A fork server for crash trials: one process imports bench (and torch/transformers) once, then
forks a child per ``bench`` command, so that killing and rerunning a command many times does not
pay the interpreter's and torch's start-up each time. A child is a complete ``bench`` CLI process
(``bench.cli.main(argv)`` in its own session and process group, stdout/stderr to a file); the test
kills it — or its whole group, with the workers it spawned — with SIGKILL and asks the server to
reap it.

Fault injection (tests only, never in the package): with ``BENCH_CRASH_AT=<where>:<n>:<phase>``
in a child's environment the child SIGKILLs itself inside its n-th write of that kind (see
:func:`install_faults`): the exact instants that random kill times almost never hit.

Protocol (one JSON object per line on stdin/stdout):
``{"op": "start", "argv": [...], "out": path, "env": {...}}`` → ``{"pid": pid}``;
``{"op": "wait", "pid": pid}`` → ``{"status": exit code, or -signal}``; ``{"op": "quit"}``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install_faults() -> None:
    """Patch bench's writers so that this process SIGKILLs itself at ``BENCH_CRASH_AT``.

    ``cell:N:half``            the N-th result cell: half of its temporary file written
    ``cell:N:before-rename``   the N-th cell's temporary file complete, not yet renamed
    ``cell:N:after-rename``    the N-th cell in place, its failure record and claim not yet cleaned
    ``chunk:N:half``           the N-th feature chunk's ``.npy`` half written (no index yet)
    ``chunk:N:between``        the N-th chunk's ``.npy`` in place, its index not yet written
    ``features:1:half``        assembling: ``features.npy``'s temporary file half written
    ``index:1:before``         assembling: ``features.npy`` in place, ``index.parquet`` not written
    ``manifest:1:before``      assembling: every array in place, the manifest not written
    ``cleanup:1:before``       the manifest written, the partial chunks not yet deleted
    """
    spec = os.environ.get("BENCH_CRASH_AT")
    if not spec:
        return
    where, n, phase = (spec.split(":") + ["", ""])[:3]
    n = int(n)
    count = {"k": 0}

    def hit() -> bool:
        count["k"] += 1
        return count["k"] == n

    if where == "cell":
        import bench.store as store

        real = store.atomic_write_table

        def write_table(table, path):
            # the split file goes through the same function: count result cells only
            if Path(path).parent.name != "cells" or not hit():
                return real(table, path)
            if phase == "after-rename":
                real(table, path)
                _die()
            import pyarrow.parquet as pq

            tmp = store._tmp_name(Path(path))
            pq.write_table(table, tmp, compression="zstd")
            if phase == "half":
                data = tmp.read_bytes()
                tmp.write_bytes(data[: len(data) // 2])
            _die()

        store.atomic_write_table = write_table
        return

    import bench.features.cache as cache

    if where == "chunk":
        real_write = cache.ChunkStore.write

        def chunk_write(self, k, feats, logits, n_tokens):
            if not hit():
                return real_write(self, k, feats, logits, n_tokens)
            npy, _idx = self._paths(k)
            f16 = feats.astype("float16")
            if phase == "half":
                tmp = npy.with_name(f".{npy.name}.{os.getpid()}.deadbeef.tmp")
                cache._save_npy(tmp, f16)
                data = tmp.read_bytes()
                tmp.write_bytes(data[: len(data) // 2])
            else:  # between: the .npy in place, its index (the mark of completion) missing
                cache._atomic_write_bytes(npy, lambda p: cache._save_npy(p, f16))
            _die()

        cache.ChunkStore.write = chunk_write
        return

    if where in ("features", "index", "manifest", "cleanup"):
        # finalize() is one function: interpose on the file operations it performs, in order.
        import numpy as np

        real_open_memmap = np.lib.format.open_memmap
        real_replace = os.replace
        real_write_json = cache._write_json
        real_rmtree = cache.shutil.rmtree

        if where == "features":

            class Half:
                def __init__(self, arr, path):
                    self.arr, self.path = arr, path

                def __getattr__(self, name):
                    return getattr(self.arr, name)

                def __setitem__(self, key, value):
                    self.arr[key] = value

                def flush(self):
                    self.arr.flush()
                    data = Path(self.path).read_bytes()
                    Path(self.path).write_bytes(data[: len(data) // 2])
                    _die()

            def open_memmap(path, *a, **k):
                arr = real_open_memmap(path, *a, **k)
                return Half(arr, path) if str(path).endswith(".tmp") else arr

            np.lib.format.open_memmap = open_memmap
        elif where == "index":

            def replace(src, dst):
                real_replace(src, dst)
                if Path(dst).name in ("features.npy", "prompt_features.npy"):
                    _die()

            cache.os.replace = replace
        elif where == "manifest":

            def write_json(path, obj):
                if Path(path).name in ("manifest.json", "prompt_manifest.json"):
                    _die()
                return real_write_json(path, obj)

            cache._write_json = write_json
        else:

            def rmtree(path, *a, **k):
                if Path(path).name.startswith("partial-"):
                    _die()
                return real_rmtree(path, *a, **k)

            cache.shutil.rmtree = rmtree
        return
    raise ValueError(f"unknown BENCH_CRASH_AT {spec!r}")


def _child(argv: list[str], out: str, env: dict[str, str]) -> None:  # pragma: no cover - runs in the forked child
    os.setsid()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    os.environ.update(env)
    code = 1
    try:
        install_faults()
        from bench.cli import main

        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(code or 0))


def serve(preload: list[str]) -> None:  # pragma: no cover - runs in the server process
    import importlib

    for m in preload:
        importlib.import_module(m)
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "quit":
            break
        if req["op"] == "start":
            pid = os.fork()
            if pid == 0:
                _child(req["argv"], req["out"], req.get("env", {}))
            out.write(json.dumps({"pid": pid}) + "\n")
        elif req["op"] == "wait":
            _, status = os.waitpid(req["pid"], 0)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            out.write(json.dumps({"status": code}) + "\n")
        out.flush()


if __name__ == "__main__":  # pragma: no cover
    serve(sys.argv[1:])


class ForkServer:
    """Client side: start the server, start/kill/wait children."""

    def __init__(self, preload: list[str], env: dict[str, str] | None = None):
        import subprocess

        root = Path(__file__).resolve().parent.parent
        penv = {**os.environ, **(env or {})}
        penv["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in penv.get("PYTHONPATH", "").split(os.pathsep) if p])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.forkserver", *preload],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root, env=penv,
        )
        assert self._read().get("ready")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fork server exited ({self.proc.poll()})")
        return json.loads(line)

    def _ask(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def start(self, argv: list[str], out: Path, env: dict[str, str] | None = None) -> int:
        return self._ask({"op": "start", "argv": [str(a) for a in argv], "out": str(out), "env": env or {}})["pid"]

    def wait(self, pid: int) -> int:
        return self._ask({"op": "wait", "pid": pid})["status"]

    @staticmethod
    def alive(pid: int) -> bool:
        """Whether the child still runs (a zombie, killed or exited but not yet reaped, does not)."""
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    @staticmethod
    def kill_group(pid: int) -> None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
