"""``python -m vggflow.forkserver ARGS``: ``python -m vggflow ARGS`` without importing torch again.

A job of the CPU benchmark spends 2.5 s importing torch, and a VGG-Flow job 2.5 s more importing
``torch._dynamo`` (which ``torch.func`` pulls in). This module runs each command in a process
forked from a server that has imported them once:

* the first call finds no server, starts one in the background and runs the command itself
  (``exec`` of ``python -m vggflow ARGS``); later calls on this machine are served;
* a served command runs in a fresh fork with the caller's arguments, working directory,
  environment, umask and standard streams; the caller forwards its signals (SIGINT, SIGTERM,
  SIGUSR1, ...) to it, exits with its exit status, and if the caller is killed the command gets
  SIGTERM (the trainer then saves its state);
* a server only serves callers with its interpreter, working directory, interpreter flags,
  CPU affinity, installed torch (its files' size and time) and the environment variables read
  while torch is imported (threads, CUDA, ``PYTHON*``...): any other caller starts its own
  server. The package's modules are imported afresh in every fork, so edited code is used at
  once;
* a server exits after ``VGGFLOW_FORKSERVER_IDLE_S`` seconds (default 120) without a command.
  Its socket lives in ``VGGFLOW_FORKSERVER_DIR`` (default: ``$XDG_RUNTIME_DIR/vggflow`` or
  ``/tmp/vggflow-<uid>``, mode 0700).

Whatever goes wrong with the server, the command runs in the caller's own process instead, so
results never depend on it; ``tests/test_forkserver.py`` checks that served and unserved runs
write the same bytes. It is for one Linux machine (the default CPU benchmark): inside a SLURM
job (``SLURM_JOB_ID`` set) the command always runs in the job's own process, which SLURM confines
to the job's allocation and ends with it, and so it does on other systems (on macOS a fork of a
process that has imported torch is not safe).

``python -m vggflow.forkserver --ping`` prints the server of this environment (pid and commands
served) and exits 0, or exits 1 when there is none.
"""

from __future__ import annotations

import array
import atexit
import fcntl
import hashlib
import importlib
import importlib.util
import io
import json
import os
import runpy
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

# what torch.func's transforms import at their first call (VGG-Flow imports them when built)
TORCH_FUNC_IMPORTS = ("torch._dynamo", "torch._decomp.decompositions_for_jvp")
PRELOAD = ("torch", *TORCH_FUNC_IMPORTS)
# environment variables that may be read while the preloaded modules are imported
KEY_ENV_PREFIXES = ("OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "GOTO_", "VECLIB_", "NUMEXPR_",
                    "TORCH", "PYTORCH", "CUDA", "NVIDIA_", "LD_", "PYTHON")
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2)
DEFAULT_IDLE_S = 120.0
START_TIMEOUT_S = 30.0  # the longest a caller waits for its fork to report its pid
HEADER_FORMAT = "!I"  # a request's size in bytes (0: a ping), sent with its three descriptors
PID_FORMAT = "!i"  # the fork's reply: its pid
EXIT_FORMAT = "!i"  # the exit status, or minus the signal that ended the command
GO = b"g"  # the caller's go-ahead: it will forward signals and wait
MAX_SOCKET_PATH = 107  # bytes of a Unix socket's path on Linux


def _server_key() -> str:
    """What a served command must share with the server (see the module docstring)."""
    environment = {k: v for k, v in os.environ.items() if k.startswith(KEY_ENV_PREFIXES)}
    identity = {"executable": os.path.realpath(sys.executable), "prefix": sys.prefix,
                "cwd": os.getcwd(), "flags": repr(sys.flags), "xoptions": sys._xoptions,
                "environment": sorted(environment.items()),
                "cpus": sorted(os.sched_getaffinity(0)) if sys.platform == "linux" else None,
                "installed": _installed_files(),
                "server": Path(__file__).stat().st_mtime_ns}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def _installed_files() -> list[list]:
    """Path, size and modification time of each preloaded package's ``__init__``: a reinstall
    (another torch in the same environment) changes them, and so the server."""
    files = []
    for name in sorted({module.split(".")[0] for module in PRELOAD}):
        spec = importlib.util.find_spec(name)  # a top-level name: found, not imported
        origin = Path(spec.origin) if spec and spec.origin else None
        stat = origin.stat() if origin and origin.is_file() else None
        files.append([name, str(origin), stat and stat.st_size, stat and stat.st_mtime_ns])
    return files


def socket_dir() -> Path:
    if "VGGFLOW_FORKSERVER_DIR" in os.environ:
        return Path(os.environ["VGGFLOW_FORKSERVER_DIR"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "vggflow"
    return Path("/tmp") / f"vggflow-{os.getuid()}"


def socket_path() -> Path:
    directory = socket_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.stat().st_uid != os.getuid():
        raise PermissionError(f"{directory} belongs to another user")
    path = directory / f"{_server_key()}.sock"
    if len(os.fsencode(path)) > MAX_SOCKET_PATH - 8:  # room for the server's staging suffix
        raise OSError(f"socket path {path} too long; set VGGFLOW_FORKSERVER_DIR to a short folder")
    return path


# ------------------------------------------------------------------------------------ caller


def _run_here(argv: list[str]) -> None:
    """Replace this process with ``python -m vggflow ARGV`` (no server)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *_interpreter_options(), "-m", "vggflow", *argv])


def _interpreter_options() -> list[str]:
    return [f"-X{k}" if v is True else f"-X{k}={v}" for k, v in sys._xoptions.items()]


def _start_server(path: Path) -> None:
    """Start a detached server for ``path`` (it double-forks; this returns at once)."""
    subprocess.run([sys.executable, *_interpreter_options(), "-m", "vggflow.forkserver",
                    "--serve", str(path)],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   start_new_session=True, check=False)


def _connect(path: Path) -> socket.socket | None:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(path))
    except OSError:
        client.close()
        return None
    return client


def _receive_exactly(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def run(argv: list[str]) -> int:
    """Run ``python -m vggflow ARGV`` through this environment's server; its exit status.

    Without a usable server this process becomes the command (``exec``) and never returns; so
    it does in a SLURM job, whose processes must stay in the job's own allocation, and on any
    system but Linux.
    """
    if "SLURM_JOB_ID" in os.environ or sys.platform != "linux":
        _run_here(argv)
    try:
        path = socket_path()
    except OSError as error:
        print(f"forkserver: {error}; running without it", file=sys.stderr)
        _run_here(argv)
    client = _connect(path)
    if client is None:
        _start_server(path)
        _run_here(argv)
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "environ": dict(os.environ),
                          "path": sys.path, "umask": _umask()}).encode()
    streams = [fd if _is_open(fd) else os.open(os.devnull, os.O_RDWR) for fd in (0, 1, 2)]
    try:
        client.sendmsg([struct.pack(HEADER_FORMAT, len(request)), request],
                       [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", streams))])
        client.settimeout(START_TIMEOUT_S)
        reply = _receive_exactly(client, struct.calcsize(PID_FORMAT))
    except OSError:
        reply = None
    if reply is None:  # the server went away (idle exit) or is stuck: nothing has run yet
        client.close()
        _run_here(argv)
    pid = struct.unpack(PID_FORMAT, reply)[0]

    def forward(signum, frame) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:  # it has just ended; its status is on the way
            pass

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    client.settimeout(None)
    try:
        client.sendall(GO)
        status = _receive_exactly(client, struct.calcsize(EXIT_FORMAT))
    except OSError:
        status = None
    if status is None:
        print(f"forkserver: the command's process ({pid}) ended without an exit status "
              "(killed?)", file=sys.stderr)
        return 1
    code = struct.unpack(EXIT_FORMAT, status)[0]
    if code < 0:  # ended by a signal: end the same way, as the shell expects
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def ping() -> int:
    try:
        path = socket_path()
    except OSError as error:
        print(f"forkserver: {error}")
        return 1
    client = _connect(path)
    if client is None:
        print(f"no server for this environment ({path})")
        return 1
    with client:
        client.sendall(struct.pack(HEADER_FORMAT, 0))
        reply = client.makefile().readline().strip()
    print(reply)
    return 0 if reply else 1


# ------------------------------------------------------------------------------------ server


def serve(path: Path) -> None:
    """Import torch, listen on ``path`` and fork one process per request until idle."""
    if os.fork():  # detach: the caller that started us waits only for this first process
        os._exit(0)
    with open(f"{path}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another server is starting or serving this environment
        for name in PRELOAD:
            importlib.import_module(name)
        idle = float(os.environ.get("VGGFLOW_FORKSERVER_IDLE_S", DEFAULT_IDLE_S))
        staging = path.with_name(f"{path.name}.{os.getpid()}")  # pids have at most 7 digits
        staging.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(staging))
        listener.listen(64)
        os.replace(staging, path)  # callers see the socket only now that torch is imported
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forks are reaped automatically
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        served, last_request = 0, time.monotonic()
        try:
            while (wait := idle - (time.monotonic() - last_request)) > 0:
                if not select.select([listener], [], [], wait)[0]:
                    break
                conn, _ = listener.accept()
                fds: list[int] = []
                try:
                    conn.settimeout(START_TIMEOUT_S)
                    size, fds = _receive_header(conn)
                    if size == 0:  # a ping
                        conn.sendall(f"pid {os.getpid()} served {served} {path}\n".encode())
                        continue
                    served, last_request = served + 1, time.monotonic()
                    if os.fork() == 0:
                        listener.close()
                        lock.close()  # the lock is the server's, not its forks'
                        _serve_request(conn, size, fds)  # never returns
                except OSError:
                    pass
                finally:
                    for fd in fds:
                        os.close(fd)
                    conn.close()
        finally:
            path.unlink(missing_ok=True)


def _serve_request(conn: socket.socket, size: int, fds: list[int]) -> None:
    """In a fresh fork: become the caller's command, run it and report its exit status."""
    code = 1
    try:
        for sig in (*FORWARDED_SIGNALS, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh interpreter
        conn.settimeout(START_TIMEOUT_S)
        data = _receive_exactly(conn, size)
        if data is None:
            raise ConnectionError("the caller closed the connection")
        request = json.loads(data)
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        _become(request)
        conn.sendall(struct.pack(PID_FORMAT, os.getpid()))
        if _receive_exactly(conn, len(GO)) != GO:
            os._exit(1)
        conn.settimeout(None)
        finished = threading.Event()
        threading.Thread(target=_stop_when_caller_dies, args=(conn, finished), daemon=True).start()
        code = _run_command(request["argv"])
        finished.set()
        conn.sendall(struct.pack(EXIT_FORMAT, code))
    except BaseException:  # noqa: BLE001 - a failure of the fork itself, on the caller's stderr
        traceback.print_exc()
    finally:
        os._exit(code if code >= 0 else 128 - code)


def _receive_header(conn: socket.socket) -> tuple[int, list[int]]:
    """The request's size and the caller's three standard streams (none for a ping).

    The descriptors travel with the header's bytes, so they are read with it.
    """
    header, fds, size = b"", array.array("i"), struct.calcsize(HEADER_FORMAT)
    while len(header) < size:
        data, ancillary, _, _ = conn.recvmsg(size - len(header),
                                             socket.CMSG_SPACE(3 * fds.itemsize))
        if not data:
            raise ConnectionError("the caller closed the connection")
        header += data
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    size = struct.unpack(HEADER_FORMAT, header)[0]
    if size and len(fds) != 3:
        raise ConnectionError(f"a request with {len(fds)} descriptors instead of 3")
    return size, list(fds)


def _become(request: dict) -> None:
    """Take the caller's working directory, environment, umask, module path and streams."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["environ"])
    os.umask(request["umask"])
    sys.path[:] = request["path"]
    for name in [name for name in sys.modules if name.split(".")[0] == "vggflow"]:
        del sys.modules[name]  # the package afresh from the caller's path
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        old = getattr(sys, name)
        stream = io.TextIOWrapper(
            open(fd, "rb" if fd == 0 else "wb", closefd=False), encoding=old.encoding,
            errors=old.errors, line_buffering=old.line_buffering or (fd == 1 and os.isatty(fd)),
            write_through=old.write_through)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    tempfile.tempdir = None  # found again from the caller's TMPDIR
    import random

    random.seed()  # a fresh interpreter seeds it from the OS; forks would share the server's
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()


def _stop_when_caller_dies(conn: socket.socket, finished: threading.Event) -> None:
    """SIGTERM to this process when the caller's end of the connection closes early."""
    try:
        while conn.recv(1):
            pass
    except OSError:
        pass
    if not finished.is_set():
        os.kill(os.getpid(), signal.SIGTERM)


def _run_command(argv: list[str]) -> int:
    """``python -m vggflow ARGV`` in this process; its exit status (minus a fatal signal)."""
    sys.argv = ["vggflow", *argv]  # run_module sets argv[0] to the module's file
    try:
        runpy.run_module("vggflow", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = _exit_status(stop.code)
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        code = -signal.SIGINT  # how an interpreter ends on an uncaught KeyboardInterrupt
    except BaseException:  # noqa: BLE001 - reported as the interpreter would
        sys.excepthook(*sys.exc_info())
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            pass
    return code


def _exit_status(code) -> int:
    """The exit status of ``raise SystemExit(code)``, printing a message as Python does."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["--serve"] and len(argv) == 2:
        serve(Path(argv[1]))
        return 0
    if argv == ["--ping"]:
        return ping()
    return run(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
