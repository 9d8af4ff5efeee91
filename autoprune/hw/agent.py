"""Measurement agent: an HTTP service on the target device that times uploaded ONNX models.

    AUTOPRUNE_AGENT_TOKEN=$(python -c "import secrets; print(secrets.token_urlsafe(32))") \\
        python -m autoprune agent --port 8765

POST /measure   body: the ONNX model (application/octet-stream)
                headers: Authorization: Bearer <token>; X-Autoprune-Profile: <profile JSON>
                -> 200 {"stats": LatencyStats (with the device's fingerprint), "queued_s", ...}
GET  /health    -> {"status": "ok", "busy": ..., "queued": ...}  (no token needed)

Rules: token auth (401), upload size limit (413, checked before and while reading), malformed ONNX or
profile -> 422 with the parser's reason, one measurement at a time (a single worker; requests wait in
FIFO order, 503 when the queue is full), a time limit per request (408 reading, 504 measuring), binds
127.0.0.1 unless --host says otherwise. The agent only measures ONNX (never unpickles uploads), writes
uploads to temporary files it names itself and accepts no paths or URLs from clients.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from autoprune.errors import AutopruneError, ProfileError, first_line
from autoprune.hw.profile import CLIENT_ONLY_FIELDS, HardwareProfile, profile_from_dict
from autoprune.hw.remote import PROFILE_HEADER
from autoprune.hw.stats import LatencyStats

log = logging.getLogger("autoprune.agent")
DEFAULT_PORT = 8765
MIN_TOKEN_CHARS = 16

MeasureFn = Callable[[Path, HardwareProfile], LatencyStats]


@dataclass(frozen=True)
class AgentConfig:
    token: str
    max_upload_bytes: int = 64 << 20
    timeout_s: float = 300.0       # per request: reading the upload, waiting in the queue and measuring
    max_queue: int = 8             # requests waiting or measuring; more get 503


def measure_locally(onnx_path: Path, profile: HardwareProfile) -> LatencyStats:
    from autoprune.hw.backend import runtime_backend

    return runtime_backend(profile).measure(onnx_path, profile)


class MeasurementQueue:
    """Runs measurements one at a time on a single worker thread, in arrival order."""

    def __init__(self, max_pending: int):
        self.max_pending = max_pending
        self.pending = 0
        self.busy = False
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autoprune-measure")

    async def run(self, fn: Callable, *args, timeout_s: float):
        if self.pending >= self.max_pending:
            raise HTTPException(503, f"the agent's queue is full ({self.pending} requests): retry later",
                                headers={"Retry-After": "2"})
        self.pending += 1

        def job():
            self.busy = True
            try:
                return fn(*args)
            finally:
                self.busy = False

        future = self._worker.submit(job)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except asyncio.TimeoutError:
            future.cancel()  # drops it if still queued; a running measurement finishes on its own
            raise HTTPException(504, f"the measurement did not finish within {timeout_s:g} s: start the agent "
                                     "with a larger --timeout-s or lower max_seconds in the profile") from None
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
    return profile


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
    """422 with the parser's or checker's reason unless `body` is a well-formed ONNX model."""
    if not body:
        raise HTTPException(422, "malformed ONNX model: the upload is empty")
    try:
        model = onnx.load_model_from_string(body)
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, onnx ValidationError, ...
        reason = first_line(exc)
        raise HTTPException(422, f"malformed ONNX model: {reason}") from None
    if len(model.graph.node) == 0:
        raise HTTPException(422, "malformed ONNX model: the graph has no nodes")


def create_app(config: AgentConfig, measure: MeasureFn = measure_locally) -> FastAPI:
    """The agent's ASGI app (serve it with uvicorn; tests run it on a free loopback port)."""
    if len(config.token) < MIN_TOKEN_CHARS:
        raise AutopruneError(f"the agent token must have at least {MIN_TOKEN_CHARS} characters: generate one with "
                             "python -c \"import secrets; print(secrets.token_urlsafe(32))\"")
    queue = MeasurementQueue(config.max_queue)
    workdir = tempfile.TemporaryDirectory(prefix="autoprune-agent-")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        queue.shutdown()
        workdir.cleanup()

    app = FastAPI(title="autoprune measurement agent", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "busy": queue.busy, "queued": queue.pending}

    @app.post("/measure")
    async def measure_endpoint(request: Request) -> JSONResponse:
        received = time.time()
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
                stats = measure(path, profile)
                return stats, time.time()

            try:
                stats, finished = await queue.run(timed, timeout_s=config.timeout_s - (time.time() - received))
            except AutopruneError as exc:
                raise HTTPException(422, str(exc)) from None
        finally:
            path.unlink(missing_ok=True)
        log.info("measured %s (%d bytes) on %s: %.4f ms median, n=%d", profile.name, len(body),
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


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m autoprune agent",
                                     description="Measure uploaded ONNX models on this device for autoprune searches.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; use 0.0.0.0 only on a trusted network or with TLS)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--token-env", default="AUTOPRUNE_AGENT_TOKEN", help="environment variable holding the token")
    parser.add_argument("--token-file", type=Path, help="file holding the token (instead of --token-env)")
    parser.add_argument("--max-upload-mb", type=float, default=64.0)
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per request: upload, queue and measurement")
    parser.add_argument("--max-queue", type=int, default=8, help="requests waiting or measuring before 503")
    parser.add_argument("--ssl-certfile", type=Path, help="serve HTTPS with this certificate")
    parser.add_argument("--ssl-keyfile", type=Path, help="private key of --ssl-certfile")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """`python -m autoprune agent [options]`; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    try:
        import uvicorn

        if args.max_upload_mb <= 0 or args.timeout_s <= 0 or args.max_queue < 1:
            raise AutopruneError("--max-upload-mb and --timeout-s must be > 0 and --max-queue >= 1")
        config = AgentConfig(read_agent_token(args.token_env, args.token_file),
                             int(args.max_upload_mb * (1 << 20)), args.timeout_s, args.max_queue)
        app = create_app(config)
    except AutopruneError as exc:
        print(f"autoprune: error: {exc}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1") and args.ssl_certfile is None:
        log.warning("listening on %s without TLS: the token travels in clear; use --ssl-certfile or an SSH tunnel",
                    args.host)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info",
                ssl_certfile=str(args.ssl_certfile) if args.ssl_certfile else None,
                ssl_keyfile=str(args.ssl_keyfile) if args.ssl_keyfile else None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
