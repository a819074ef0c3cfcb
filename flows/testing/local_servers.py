"""Model servers on loopback for tests and benchmarks, started as subprocesses on free ports.

A server can be stopped and started again on the same ports, so a test can take it away mid-stream
and bring it back. The TensorFlow Serving stand-in (`tfserving_double`, since the real binary cannot be
installed here) and the MLServer runtime are modules of this package, so these run from an installed wheel
too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import urllib3

from flows.core.scorer import INPUTS, OUTPUT
from flows.core.shipped import SHIPPED_MODELS_DIR
from flows.testing.loopback import free_port, wait_until_ready


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throwaway certificate authority and of the certificate it issued for 127.0.0.1."""

    ca: Path
    certificate_chain: Path
    private_key: Path


def throwaway_tls(directory: Path) -> TlsFiles:
    """Make a CA and a server certificate for 127.0.0.1 and localhost in `directory`.

    Uses trustme, from the test extra (the servers here are for tests and benchmarks).
    """
    import trustme

    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(directory / "ca.pem", directory / "server-chain.pem", directory / "server-key.pem")
    authority.cert_pem.write_to_path(str(files.ca))
    files.certificate_chain.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(files.private_key))
    return files


def _http_ok(url: str, ca: Path | None) -> bool:
    """Whether `url` answers 200 (over HTTPS verified with `ca` when given)."""
    pool = urllib3.PoolManager(ca_certs=str(ca) if ca else None, retries=False, timeout=1.0)
    try:
        return pool.request("GET", url).status == 200
    except urllib3.exceptions.HTTPError:
        return False
    finally:
        pool.clear()


class LocalServer:
    """One model server process: REST on `rest_port`, gRPC on `grpc_port`, both on 127.0.0.1.

    With `tls`, both ports speak TLS only, with a certificate from that throwaway CA.
    """

    def __init__(
        self,
        name: str,
        command: list[str],
        ready_path: str,
        rest_port: int,
        grpc_port: int,
        model: str,
        prefix: str,
        scratch: Path | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.name = name
        self.tls = tls
        self.model = model
        self.prefix = prefix  # REST path before models/NAME: /v1 (TensorFlow Serving) or /v2 (V2)
        self.scratch = scratch  # removed with the server
        self.command = command
        self.ready_url = f"{'https' if tls else 'http'}://127.0.0.1:{rest_port}{ready_path}"
        self.rest_port = rest_port
        self.grpc_port = grpc_port
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (the server writes it while it runs)
            prefix=f"{name}-", suffix=".log", delete=False
        )

    def start(self, timeout: float = 60) -> None:
        """Start the server and wait until its model is ready."""
        self.process = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_until_ready(
                self.name,
                lambda: _http_ok(self.ready_url, self.tls.ca if self.tls else None),
                self.process,
                timeout,
            )
        except RuntimeError as error:
            self.stop()
            raise RuntimeError(f"{error}; its log: {self.log_tail()}") from None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def location(self, scheme: str, options: str = "", other_servers: str = "") -> str:
        """The model's location here, for a descriptor: e.g. `grpc://127.0.0.1:P/v2/models/NAME`.

        `scheme` is grpc or http, or grpcs or https for a TLS server (add `ca={self.tls.ca}` to `options`
        to trust it); `other_servers` ("HOST:PORT,") are listed before this one.
        """
        port = self.grpc_port if scheme.startswith("grpc") else self.rest_port
        query = f"?{options}" if options else ""
        return f"{scheme}://{other_servers}127.0.0.1:{port}{self.prefix}/models/{self.model}{query}"

    def log_tail(self, characters: int = 2000) -> str:
        return Path(self._log.name).read_text(errors="replace")[-characters:]

    def __enter__(self) -> LocalServer:  # noqa: PYI034 (typing.Self needs 3.11; 3.10 is supported)
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def tfserving_double(version: int = 1, name: str = "recommender", tls: bool = False) -> LocalServer:
    """The TensorFlow Serving stand-in (flows/testing/tfserving_double.py) serving shipped model `version` as
    `name`.

    With `tls`, it serves TLS only, with a certificate from a throwaway CA (see `LocalServer.tls`).
    """
    rest_port, grpc_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "flows.testing.tfserving_double",
        "--model-dir", str(SHIPPED_MODELS_DIR / str(version)), "--name", name, "--version", str(version),
        "--rest-port", str(rest_port), "--grpc-port", str(grpc_port),
    ]  # fmt: skip
    scratch, files = None, None
    if tls:
        scratch = Path(tempfile.mkdtemp(prefix="tfserving-tls-"))
        files = throwaway_tls(scratch)
        command += ["--tls-chain", str(files.certificate_chain), "--tls-key", str(files.private_key)]
    ready = f"/v1/models/{name}"
    return LocalServer(
        f"tfserving-double-{rest_port}", command, ready, rest_port, grpc_port, name, "/v1", scratch, files
    )


def mlserver(version: int = 1, name: str = "recommender") -> LocalServer:
    """Seldon MLServer (test extra) serving shipped model `version` as `name` through
    flows/testing/mlserver_runtime.py.

    One process, no parallel workers (MLServer 1.7.1's worker pool fails to start with uvloop >= 0.22)
    and no metrics server (it would take port 8082).
    """
    rest_port, grpc_port = free_port(), free_port()
    directory = Path(tempfile.mkdtemp(prefix="mlserver-"))
    settings = {
        "host": "127.0.0.1", "http_port": rest_port, "grpc_port": grpc_port,
        "parallel_workers": 0, "metrics_endpoint": None, "debug": False,
    }  # fmt: skip
    tensor = {"datatype": "FP32", "shape": [-1, 1]}
    model_settings = {
        "name": name,
        "implementation": "flows.testing.mlserver_runtime.SavedModelRuntime",
        "parameters": {"uri": str(SHIPPED_MODELS_DIR / str(version)), "version": str(version)},
        "inputs": [{"name": input_name, **tensor} for input_name in INPUTS],
        "outputs": [{"name": OUTPUT, **tensor}],
    }
    (directory / name).mkdir()
    (directory / "settings.json").write_text(json.dumps(settings))
    (directory / name / "model-settings.json").write_text(json.dumps(model_settings))
    command = [sys.executable, "-m", "mlserver.cli.main", "start", str(directory)]
    ready = f"/v2/models/{name}/ready"
    return LocalServer(f"mlserver-{rest_port}", command, ready, rest_port, grpc_port, name, "/v2", directory)
