"""Shared fixtures: a temporary data root per test, a strict recorder on it, and a
CliRunner that keeps stdout and stderr apart."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fresh, empty data root."""
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def rec(root: Path) -> Iterator[object]:
    """A strict Recorder on the temp root (closed after the test)."""
    from voicepipe_obs import Recorder

    recorder = Recorder(root, strict=True, flush_interval=0.2, spool_interval=0.05)
    yield recorder
    recorder.close()


@pytest.fixture
def runner() -> object:
    from click.testing import CliRunner

    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's config or data root by accident."""
    monkeypatch.delenv("VOICEPIPE_DATA", raising=False)
    monkeypatch.delenv("VOICEPIPE_CONFIG", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.chdir(tmp_path)


@contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real file system of ``size`` (tmpfs, e.g. ``512k``) mounted at ``where``, to
    fill up; skips the test when it cannot be mounted (needs root)."""
    where.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
    except OSError as exc:
        pytest.skip(f"cannot run mount: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


# ------------------------------------------------------------ object-store roots


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-compatible server (moto's, from the ``test`` extra) on 127.0.0.1, one
    per test process: ``http://127.0.0.1:PORT``."""
    import socket
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the S3 test server did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def s3_root(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh, empty bucket on the test S3 server, as the object-store root
    ``s3://BUCKET/data``. The AWS_* variables point this process and its children
    at the server; VOICEPIPE_CACHE keeps local caches inside the test's tmp_path."""
    import uuid

    from pyarrow import fs as pafs

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("VOICEPIPE_CACHE", str(tmp_path / "cache"))
    bucket = f"vp-{uuid.uuid4().hex[:20]}"
    fs = pafs.S3FileSystem(
        endpoint_override=s3_endpoint.split("://", 1)[1],
        scheme="http",
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        allow_bucket_creation=True,
    )
    fs.create_dir(bucket)
    return f"s3://{bucket}/data"


class SwitchableEndpoint:
    """A TCP forwarder on 127.0.0.1 in front of the test S3 server, at a fixed port
    (so a root's endpoint, and with it its outbox and mirror, stay the same): in
    state ``up`` it forwards, ``down`` refuses connections (and drops the open
    ones), ``silent`` accepts them and never answers. What a store going down, or
    hanging, looks like to a client."""

    def __init__(self, target: str) -> None:
        import socket
        import threading

        host, port = target.split("://", 1)[-1].split(":")
        self._target = (host, int(port))
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.state = "up"
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listen()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self) -> None:
        import socket
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: object) -> None:
        import socket
        import threading

        assert isinstance(listener, socket.socket)
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(client)
                if self.state == "silent":
                    continue
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: object, dst: object) -> None:
        import socket

        assert isinstance(src, socket.socket) and isinstance(dst, socket.socket)
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _drop_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.close()
            except OSError:
                pass

    def set(self, state: str) -> None:
        assert state in ("up", "down", "silent")
        if state == self.state:
            return
        self._drop_all()
        if state == "down":
            self._stop_listening()
        elif self._listener is None:
            self._listen()
        self.state = state

    def _stop_listening(self) -> None:
        import socket

        if self._listener is not None:
            try:  # wakes the accepting thread (close alone leaves the socket listening)
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None

    def close(self) -> None:
        self._stop_listening()
        self._drop_all()


@pytest.fixture
def s3_switch(
    s3_root: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SwitchableEndpoint]:
    """The ``s3_root`` bucket reached through a :class:`SwitchableEndpoint`
    (AWS_ENDPOINT_URL points at it): ``s3_switch.set("down")`` takes the store
    away without changing the root's endpoint."""
    proxy = SwitchableEndpoint(s3_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    try:
        yield proxy
    finally:
        proxy.close()
