"""Measurement agent: an HTTP service on the target device that times uploaded ONNX models.

    AUTOPRUNE_AGENT_TOKEN=$(python -c "import secrets; print(secrets.token_urlsafe(32))") \\
        python -m autoprune agent --port 8765

POST /measure   body: the ONNX model (application/octet-stream)
                headers: Authorization: Bearer <token>; X-Autoprune-Profile: <profile JSON>
                -> 200 {"stats": LatencyStats (with the device's fingerprint), "queued_s", ...}
GET  /health    -> {"status": "ok", "busy": ..., "queued": ...}  (no token needed)

Rules: token auth (401), upload size limit (413, checked before and while reading), malformed ONNX,
external-data references or a profile outside the agent's bounds (ProfileBounds) -> 422 with a short
reason that names no server path, one measurement at a time (a single worker; requests wait in FIFO
order, 503 when the queue is full), a time limit per request (408 reading, 504 measuring). Each
measurement runs in a child process (isolated.py) that the time limit kills, so a model that never
finishes cannot keep the agent or the machine-wide measurement lock; a child that dies gives 500.
Binds 127.0.0.1 unless --host says otherwise, and refuses another address without TLS unless
--insecure. The agent only measures ONNX (never unpickles uploads), writes uploads to temporary files
it names itself and accepts no paths or URLs from clients.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import socket
import ssl
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import onnx
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from google.protobuf.message import Message

from autoprune.errors import AutopruneError, ProfileError, first_line
from autoprune.hw.inputs import input_specs
from autoprune.hw.isolated import (MeasureFn, MeasurementCrashed, MeasurementTimedOut, measure_here,
                                   measure_in_child, preload, start_children,
                                   stop_children)
from autoprune.hw.profile import CLIENT_ONLY_FIELDS, HardwareProfile, profile_from_dict
from autoprune.hw.remote import PROFILE_HEADER

log = logging.getLogger("autoprune.agent")
DEFAULT_PORT = 8765
MIN_TOKEN_CHARS = 16
GRACEFUL_SHUTDOWN_S = 5  # seconds (uvicorn takes an int); on Ctrl-C, requests in progress get this long; then their measurements are killed
T = TypeVar("T")


@dataclass(frozen=True)
class ProfileBounds:
    """What one request may ask of the agent; a profile outside them is refused with 422."""

    cores: int = field(default_factory=lambda: os.cpu_count() or 1)  # threads, inter_op_threads, cpu_affinity
    max_warmup_runs: int = 1000
    max_min_repeats: int = 10_000
    max_repeats: int = 100_000
    max_input_bytes: int = 1 << 30    # all model inputs at the profile's batch size (float32 for the early check)
    max_workspace_mb: int = 1 << 16   # TensorRT builder workspace
    max_name_chars: int = 100
    max_description_chars: int = 2000
    max_input_dims: int = 8           # per-sample dims of input_shape
    max_cuda_device: int = 63


@dataclass(frozen=True)
class AgentConfig:
    token: str
    max_upload_bytes: int = 64 << 20
    timeout_s: float = 300.0       # per request: reading the upload, waiting in the queue and measuring
    max_queue: int = 8             # requests waiting or measuring; more get 503
    bounds: ProfileBounds = field(default_factory=ProfileBounds)


class MeasurementQueue:
    """Runs jobs one at a time on a single worker thread, in arrival order. A job that is still queued at
    its deadline is dropped; one that is running must end itself by the deadline (measure_in_child does)."""

    def __init__(self, max_pending: int):
        self.max_pending = max_pending
        self.pending = 0
        self.busy = False
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autoprune-measure")

    async def run(self, job: Callable[[], T], deadline: float) -> T:
        if self.pending >= self.max_pending:
            raise HTTPException(503, f"the agent's queue is full ({self.pending} requests): retry later",
                                headers={"Retry-After": "2"})
        self.pending += 1

        def guarded():
            self.busy = True
            try:
                return job()
            finally:
                self.busy = False

        future = self._worker.submit(guarded)
        waiter = asyncio.wrap_future(future)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            if future.cancel():  # still queued: dropped
                raise MeasurementTimedOut("the deadline passed in the queue") from None
            return await waiter  # running: it stops at the same deadline (its child killed) and raises
        finally:
            self.pending -= 1

    def shutdown(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


def _check_token(request: Request, token: str) -> None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(401, "missing or wrong token: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})


def _parse_profile(header: str | None, config: AgentConfig) -> HardwareProfile:
    if not header:
        raise HTTPException(422, f"missing {PROFILE_HEADER} header: send the hardware profile as JSON")
    try:
        data = json.loads(header)
    except ValueError as exc:
        raise HTTPException(422, f"{PROFILE_HEADER} is not valid JSON: {exc}") from None
    if isinstance(data, dict):
        sent = sorted(set(data) & set(CLIENT_ONLY_FIELDS))
        if sent:
            raise HTTPException(422, f"the agent does not accept profile field(s) {sent}: send profile.for_agent()")
        if not isinstance(data.get("description", ""), str):
            raise HTTPException(422, "profile field 'description' must be a string")
    try:
        profile = profile_from_dict(data, "profile")
    except ProfileError as exc:
        raise HTTPException(422, str(exc)) from None
    if profile.runtime == "torch":
        raise HTTPException(422, "the agent measures ONNX models only: use runtime onnxruntime or tensorrt")
    if profile.max_seconds > config.timeout_s / 2:
        raise HTTPException(422, f"profile max_seconds {profile.max_seconds:g} is more than half the agent's "
                                 f"request timeout ({config.timeout_s:g} s): lower it or restart the agent "
                                 "with a larger --timeout-s")
    _check_bounds(profile, config.bounds)
    return profile


def _check_bounds(p: HardwareProfile, b: ProfileBounds) -> None:
    """422 unless every field of `p` is within what this agent accepts (the reason names the field)."""
    def refuse(name: str, why: str) -> HTTPException:
        return HTTPException(422, f"profile field '{name}' {why}")

    if len(p.name) > b.max_name_chars:
        raise refuse("name", f"has {len(p.name)} characters; the agent takes at most {b.max_name_chars}")
    if len(p.description) > b.max_description_chars:
        raise refuse("description", f"has more than {b.max_description_chars} characters: shorten it")
    for name in ("threads", "inter_op_threads"):
        value = getattr(p, name)
        if isinstance(value, int) and value > b.cores:
            raise refuse(name, f"is {value} but this agent's machine has {b.cores} cores: use at most {b.cores} "
                               "(or threads: \"all\")")
    if p.cpu_affinity is not None and (len(p.cpu_affinity) > b.cores or max(p.cpu_affinity) >= b.cores):
        raise refuse("cpu_affinity", f"must list core ids below {b.cores} (this agent's machine)")
    for name, limit in (("warmup_runs", b.max_warmup_runs), ("min_repeats", b.max_min_repeats),
                        ("max_repeats", b.max_repeats), ("workspace_mb", b.max_workspace_mb)):
        if getattr(p, name) > limit:
            raise refuse(name, f"is {getattr(p, name)}; the agent takes at most {limit}")
    if ":" in p.device and int(p.device.split(":")[1]) > b.max_cuda_device:
        raise refuse("device", f"names a GPU index above {b.max_cuda_device}")
    if p.input_shape is not None and len(p.input_shape) > b.max_input_dims:
        raise refuse("input_shape", f"has {len(p.input_shape)} dims; the agent takes at most {b.max_input_dims}")
    floats = p.batch_size * math.prod(p.input_shape or (1,))
    if 4 * floats > b.max_input_bytes:
        raise refuse("batch_size", f"{'with input_shape ' if p.input_shape else ''}asks for {_mib(4 * floats)} of input "
                     f"(batch_size x input_shape x 4 bytes), more than the "
                     f"agent's budget of {_mib(b.max_input_bytes)}: lower them or restart the agent with a larger "
                     "--max-input-mb")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.6g} MiB"


def _check_input_budget(path: Path, profile: HardwareProfile, limit: int) -> None:
    """The real input size, from the model's inputs (dtypes, static dims) at the profile's batch size."""
    total = sum(math.prod(spec.shape) * spec.dtype.itemsize for spec in input_specs(path, profile))
    if total > limit:
        raise HTTPException(422, f"the model's inputs at batch_size {profile.batch_size} take {_mib(total)}, more "
                                 f"than the agent's budget of {_mib(limit)}: lower batch_size or input_shape, or "
                                 "restart the agent with a larger --max-input-mb")


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.@%+~-]+/)*[\w.@%+~-]*")


def public_reason(message: str, upload: Path | None = None) -> str:
    """`message` fit for a client: its first line, the upload's own path called "the uploaded model" and
    any other absolute path replaced by <path>, at most 500 characters."""
    lines = message.strip().splitlines()
    text = lines[0] if lines else "unknown error"
    if upload is not None:
        text = text.replace(str(upload), "the uploaded model").replace(upload.name, "the uploaded model")
    return _ABSOLUTE_PATH.sub("<path>", text)[:500]


def _tensors(message) -> Iterator[onnx.TensorProto]:
    """Every TensorProto inside an ONNX message: initializers, attributes, subgraphs, functions."""
    if isinstance(message, onnx.TensorProto):
        yield message
        return
    for descriptor, value in message.ListFields():
        if descriptor.type == descriptor.TYPE_MESSAGE:
            for item in ((value,) if isinstance(value, Message) else value):  # one message, or repeated
                yield from _tensors(item)


def _check_declared_size(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"upload of {int(declared)} bytes exceeds the agent's limit of {limit} bytes")


async def _read_body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"upload exceeds the agent's limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_onnx(body: bytes) -> None:
    """422 with the parser's or checker's reason unless `body` is a well-formed, self-contained ONNX model."""
    if not body:
        raise HTTPException(422, "malformed ONNX model: the upload is empty")
    try:
        model = onnx.load_model_from_string(body)
    except Exception as exc:  # protobuf DecodeError, ...
        raise HTTPException(422, f"malformed ONNX model: {public_reason(str(exc))}") from None
    # Before the checker: it looks external files up relative to the agent's directory.
    if any(t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data) for t in _tensors(model)):
        raise HTTPException(422, "the model refers to external data files: upload a self-contained model "
                                 "(onnx.save(model, path, save_as_external_data=False))")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx ValidationError, ...
        raise HTTPException(422, f"malformed ONNX model: {public_reason(str(exc))}") from None
    if len(model.graph.node) == 0:
        raise HTTPException(422, "malformed ONNX model: the graph has no nodes")


def create_app(config: AgentConfig, measure: MeasureFn = measure_here) -> FastAPI:
    """The agent's ASGI app (serve it with uvicorn; tests run it on a free loopback port). `measure` runs
    in a child process per request: it must be a module-level function."""
    if len(config.token) < MIN_TOKEN_CHARS:
        raise AutopruneError(f"the agent token must have at least {MIN_TOKEN_CHARS} characters: generate one with "
                             "python -c \"import secrets; print(secrets.token_urlsafe(32))\"")
    queue = MeasurementQueue(config.max_queue)
    workdir = tempfile.TemporaryDirectory(prefix="autoprune-agent-")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        await asyncio.to_thread(start_children)
        yield
        queue.shutdown()
        stop_children()  # a measurement in progress would otherwise hold the exit until its deadline
        workdir.cleanup()

    app = FastAPI(title="autoprune measurement agent", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "busy": queue.busy, "queued": queue.pending}

    @app.post("/measure")
    async def measure_endpoint(request: Request) -> JSONResponse:
        received, deadline = time.time(), time.monotonic() + config.timeout_s
        _check_token(request, config.token)
        _check_declared_size(request, config.max_upload_bytes)
        profile = _parse_profile(request.headers.get(PROFILE_HEADER.lower()), config)
        try:
            body = await asyncio.wait_for(_read_body(request, config.max_upload_bytes), config.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(408, f"the upload took longer than {config.timeout_s:g} s") from None
        await asyncio.to_thread(_check_onnx, body)
        handle, name = tempfile.mkstemp(suffix=".onnx", dir=workdir.name)
        path = Path(name)
        try:
            with os.fdopen(handle, "wb") as f:
                f.write(body)
            started = {}

            def timed():
                started["at"] = time.time()
                stats = measure_in_child(measure, path, profile, deadline)
                return stats, time.time()

            try:
                await asyncio.to_thread(_check_input_budget, path, profile, config.bounds.max_input_bytes)
                stats, finished = await queue.run(timed, deadline)
            except MeasurementTimedOut:
                raise HTTPException(504, f"the measurement did not finish within {config.timeout_s:g} s and was "
                                         "stopped: start the agent with a larger --timeout-s or lower max_seconds "
                                         "or warmup_runs in the profile") from None
            except MeasurementCrashed as exc:
                log.error("measuring %r (%d bytes): %s", profile.name, len(body), exc)
                raise HTTPException(500, f"{exc}; the agent is still serving: retry, or lower batch_size if "
                                         "the model ran out of memory") from None
            except AutopruneError as exc:
                raise HTTPException(422, public_reason(str(exc), path)) from None
        finally:
            path.unlink(missing_ok=True)
        log.info("measured %r (%d bytes) on %s: %.4f ms median, n=%d", profile.name, len(body),
                 profile.runtime, stats.median_ms, stats.n)
        return JSONResponse({"stats": stats.to_dict(), "queued_s": started["at"] - received,
                             "started_at": started["at"], "finished_at": finished})

    return app


def read_agent_token(token_env: str, token_file: Path | None) -> str:
    if token_file is not None:
        try:
            return token_file.expanduser().read_text().strip()
        except OSError as exc:
            raise AutopruneError(f"cannot read --token-file {token_file} ({exc.strerror}): "
                                 "give a readable file") from None
    token = os.environ.get(token_env, "").strip()
    if not token:
        raise AutopruneError(f"no agent token: export {token_env}=<token> (generate one with python -c "
                             "\"import secrets; print(secrets.token_urlsafe(32))\") or pass --token-file")
    return token


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (main prints it), instead of usage + message
        raise AutopruneError(f"{message}: see `python -m autoprune agent --help`")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = _Parser(prog="python -m autoprune agent",
                     description="Measure uploaded ONNX models on this device for autoprune searches.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1); any other address needs TLS or --insecure")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--token-env", default="AUTOPRUNE_AGENT_TOKEN", help="environment variable holding the token")
    parser.add_argument("--token-file", type=Path, help="file holding the token (instead of --token-env)")
    parser.add_argument("--max-upload-mb", type=float, default=64.0)
    parser.add_argument("--max-input-mb", type=float, default=1024.0,
                        help="budget for a request's model inputs (batch_size x input shape x element size)")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per request: upload, queue and measurement")
    parser.add_argument("--max-queue", type=int, default=8, help="requests waiting or measuring before 503")
    parser.add_argument("--ssl-certfile", type=Path, help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--ssl-keyfile", type=Path, help="private key of --ssl-certfile (PEM)")
    parser.add_argument("--insecure", action="store_true",
                        help="allow plain HTTP on a non-loopback --host (trusted networks only)")
    return parser.parse_args(argv)


def _check_tls(certfile: Path | None, keyfile: Path | None) -> None:
    """Load the certificate and key now, so a wrong path or file fails before anything listens."""
    if certfile is None:
        if keyfile is not None:
            raise AutopruneError("--ssl-keyfile needs --ssl-certfile: give both, or neither")
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except OSError as exc:
        if isinstance(exc, ssl.SSLError):
            raise AutopruneError(f"--ssl-certfile {certfile} (and --ssl-keyfile) is not a PEM certificate with its "
                                 f"private key ({exc.reason or first_line(exc)}): give the matching pair") from None
        raise AutopruneError(f"cannot read the TLS files ({exc.strerror}: {exc.filename or certfile}): give an "
                             "existing PEM file to --ssl-certfile (and its key to --ssl-keyfile)") from None


def _resolve(host: str, port: int) -> tuple[int, tuple]:
    """(address family, socket address) to bind for --host/--port."""
    if not 1 <= port <= 65535:
        raise AutopruneError(f"--port {port} is out of range: give a port between 1 and 65535")
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise AutopruneError(f"cannot resolve --host {host} ({getattr(exc, 'strerror', None) or exc}): give an "
                             "address of this machine, e.g. 127.0.0.1") from None
    return family, address


def is_loopback(address: tuple) -> bool:
    return ipaddress.ip_address(address[0].split("%")[0]).is_loopback


def _bind(family: int, address: tuple, host: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise AutopruneError(f"port {address[1]} on {host} is already in use: stop the process listening "
                                 "there or pick another --port") from None
        raise AutopruneError(f"cannot listen on {host} port {address[1]} ({exc.strerror}): give an address of this "
                             "machine with --host and a free --port") from None
    return sock


def main(argv: list[str]) -> int:
    """`python -m autoprune agent [options]`; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    try:
        import uvicorn

        args = parse_args(argv)
        if args.max_upload_mb <= 0 or args.max_input_mb <= 0 or args.timeout_s <= 0 or args.max_queue < 1:
            raise AutopruneError("--max-upload-mb, --max-input-mb and --timeout-s must be > 0 and --max-queue >= 1")
        family, address = _resolve(args.host, args.port)
        _check_tls(args.ssl_certfile, args.ssl_keyfile)
        loopback = is_loopback(address)
        if not loopback and args.ssl_certfile is None and not args.insecure:
            raise AutopruneError(f"refusing to listen on {args.host} without TLS (the token would travel in clear): "
                                 "give --ssl-certfile and --ssl-keyfile, keep 127.0.0.1 and use an SSH tunnel, or "
                                 "pass --insecure on a trusted network")
        config = AgentConfig(read_agent_token(args.token_env, args.token_file),
                             int(args.max_upload_mb * (1 << 20)), args.timeout_s, args.max_queue,
                             ProfileBounds(max_input_bytes=int(args.max_input_mb * (1 << 20))))
        app = create_app(config)  # checks the token before anything listens
        sock = _bind(family, address, args.host)
    except AutopruneError as exc:
        print(f"autoprune: error: {exc}", file=sys.stderr)
        return 2
    if not loopback and args.ssl_certfile is None:
        log.warning("listening on %s without TLS (--insecure): the token travels in clear", args.host)
    preload("autoprune.cli")  # what the `autoprune` console script imports: each child re-runs it
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                                           ssl_certfile=str(args.ssl_certfile) if args.ssl_certfile else None,
                                           ssl_keyfile=str(args.ssl_keyfile) if args.ssl_keyfile else None))
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it shut down on
        server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
