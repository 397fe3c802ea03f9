"""A default ``align serve`` listens on loopback only, and Ctrl-C stops all of it.

The stack runs as users run it (``python -m align_services.stack --port P --tokens-file
F``, Ray with token auth, the real Serve config); the test then lists every TCP socket
in LISTEN state and every bound UDP socket of the stack's own processes (the stack,
Redis, Ray's GCS/raylet/agents/workers, the Serve proxies and replicas, the evaluation
service), read from /proc: the processes are the ones that carry a marker in their
environment (Ray passes the environment down) or descend from the stack.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ports import free_port

pytestmark = [pytest.mark.services, pytest.mark.timeout(600)]

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


# -- /proc ---------------------------------------------------------------------------------


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def stack_pids(root: int, marker: str) -> set[int]:
    """The root, its descendants, and every process whose environment holds ``marker``."""
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    parent = {p: _ppid(p) for p in pids}
    found = {root} | {p for p in pids if _has_marker(p, marker.encode())}
    grew = True
    while grew:
        new = {p for p, pp in parent.items() if pp in found and p not in found}
        found |= new
        grew = bool(new)
    return found


def _socket_inodes(pid: int) -> set[int]:
    out: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def _address(hex_addr: str) -> tuple[str, int]:
    ip_hex, port_hex = hex_addr.split(":")
    raw = bytes.fromhex(ip_hex)
    if len(raw) == 4:
        ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:  # four little-endian 32-bit words
        words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        ip = socket.inet_ntop(socket.AF_INET6, words)
    return ip, int(port_hex, 16)


def listening(pids: set[int]) -> list[tuple[str, str, int, int]]:
    """(protocol, ip, port, pid) of every listening TCP / bound UDP socket of ``pids``."""
    owner = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    out = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if inode not in owner:
                continue
            if proto.startswith("tcp") and state != "0A":  # LISTEN
                continue
            ip, port = _address(local)
            out.append((proto, ip, port, owner[inode]))
    return sorted(set(out))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"


# -- the stack -----------------------------------------------------------------------------


class ServeProcess:
    def __init__(self, proc: subprocess.Popen[str], marker: str) -> None:
        self.proc = proc
        self.marker = marker
        self.lines: list[str] = []
        self.running = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "align serve: running" in line:
                self.running.set()
        self.running.set()  # exited: wake the waiter

    def endpoint(self, name: str) -> str:
        for line in self.lines:
            if line.strip().startswith(name + "  "):
                return line.strip()[len(name) :].split()[0]
        raise AssertionError(f"no line {name!r} in {self.lines}")


@pytest.fixture(scope="module")
def align_serve(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[ServeProcess]:
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (extra 'serve')")
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make system-deps installs it)")
    tmp = tmp_path_factory.mktemp("serve")
    tokens = tmp / "tokens"
    tokens.write_text("alice:alice-token-0123\n")
    marker = f"ALIGN_TEST_STACK_MARKER={uuid.uuid4().hex}"
    env = dict(os.environ, ALIGN_DATA_DIR=str(data_dir), OMP_NUM_THREADS="1")
    env.pop("RAY_AUTH_MODE", None)  # as users run it: the stack turns Ray's token auth on
    key, value = marker.split("=")
    env[key] = value
    cmd = [
        sys.executable, "-m", "align_services.stack",
        "--port", str(free_port()),
        "--tokens-file", str(tokens),
        "--state-dir", str(tmp / "state"),
        "--grpc-port", str(free_port()),
        "--http-port", str(free_port()),
        "--eval-metrics-port", str(free_port()),
        "--ray-metrics-port", str(free_port()),
        "--num-cpus", "2",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    serve = ServeProcess(proc, marker)
    try:
        serve.running.wait(420)
        started = any("align serve: running" in line for line in serve.lines)
        assert started and proc.poll() is None, "\n".join(serve.lines[-40:])
        yield serve
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_default_align_serve_listens_on_loopback_only(align_serve: ServeProcess):
    pids = stack_pids(align_serve.proc.pid, align_serve.marker)
    sockets = listening(pids)
    listing = "\n".join(f"{p:5} {ip}:{port}  {_cmdline(pid)}" for p, ip, port, pid in sockets)
    print(f"listening sockets of the stack ({len(pids)} processes):\n{listing}")
    assert sockets, "found no listening sockets at all: the /proc scan is broken"
    ports = {port for _, _, port, _ in sockets}
    # the contract lines, and those ports are among the ones found
    _, _, eval_port = align_serve.endpoint("evaluation gRPC").rpartition(":")
    emb_host, _, emb_port = align_serve.endpoint("embedding gRPC").rpartition(":")
    assert int(eval_port) in ports and int(emb_port) in ports
    assert emb_host == "127.0.0.1"
    exposed = [s for s in sockets if s[1] not in LOOPBACK]
    assert not exposed, "listening beyond loopback:\n" + "\n".join(
        f"{p} {ip}:{port} {_cmdline(pid)}" for p, ip, port, pid in exposed
    )


def test_embedding_service_refuses_calls_without_the_internal_credential(
    align_serve: ServeProcess,
):
    import grpc
    from align.v1 import align_pb2, align_pb2_grpc

    target = align_serve.endpoint("embedding gRPC")
    with grpc.insecure_channel(target) as channel:
        stub = align_pb2_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListModels(
                align_pb2.ListModelsRequest(pattern="*"),
                metadata=(("application", "embedding"),),
                timeout=60,
            )
    assert info.value.code() in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    ), info.value.details()


def test_ctrl_c_stops_everything_within_15_seconds(align_serve: ServeProcess):
    pids = stack_pids(align_serve.proc.pid, align_serve.marker)
    os.kill(align_serve.proc.pid, signal.SIGINT)
    # The 15 s are the contract of `align serve` (issue 10), not a speed measurement.
    assert align_serve.proc.wait(timeout=15) == 0, "\n".join(align_serve.lines[-30:])
    left = {p for p in pids if Path(f"/proc/{p}").exists() and _ppid(p) is not None}
    zombies = set()
    for p in left:
        try:
            if Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                zombies.add(p)
        except OSError:
            zombies.add(p)
    alive = left - zombies
    assert not alive, "still running after Ctrl-C: " + ", ".join(_cmdline(p) for p in alive)


# -- the Redis that align serve starts -------------------------------------------------------


def _redis_args(tmp: Path, port: int | None) -> object:
    from align_services.stack import build_parser

    argv = ["--state-dir", str(tmp)]
    if port is not None:
        argv += ["--redis-port", str(port)]
    return build_parser().parse_args(argv)


def test_started_redis_has_a_password_persists_and_moves_off_a_taken_port(tmp_path: Path):
    import shutil

    import redis
    from align_services.stack import Stack, start_redis

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make system-deps installs it)")
    # 6379 taken (by us, or by a Redis this machine already runs): a free port is picked
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 6379))
        holder.listen()
    except OSError:
        pass  # already taken by something else: same situation
    try:
        first = Stack()
        start_redis(first, _redis_args(tmp_path, None))
        try:
            url = redis.connection.parse_url(first.redis_url)
            assert url["port"] != 6379 and url["host"] == "127.0.0.1"
            assert url["password"]
            with pytest.raises(redis.AuthenticationError):
                redis.Redis(host="127.0.0.1", port=url["port"]).set("x", "1")
            redis.Redis.from_url(first.redis_url).set("align:v1:report:k", b"kept")
        finally:
            first.stop()
        assert (tmp_path / "redis.conf").stat().st_mode & 0o077 == 0  # password file: 0600
        second = Stack()
        start_redis(second, _redis_args(tmp_path, None))
        try:
            assert redis.Redis.from_url(second.redis_url).get("align:v1:report:k") == b"kept"
        finally:
            second.stop()
    finally:
        holder.close()
