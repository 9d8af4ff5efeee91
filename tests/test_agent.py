"""The measurement agent over real HTTP on 127.0.0.1 (uvicorn in a thread, httpx as the client)."""

import contextlib
import dataclasses
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import onnx
import pytest
import torch
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoprune.errors import AutopruneError, MeasurementError
from autoprune.hw import export_onnx, get_backend
from autoprune.hw.agent import AgentConfig, create_app, main, measure_locally, parse_args
from autoprune.hw.profile import HardwareProfile
from autoprune.hw.remote import PROFILE_HEADER
from autoprune.tasks.models import resnet_small

TOKEN = "test-token-0123456789abcdef"
LIMIT = 256 * 1024
PROFILE = HardwareProfile("agent-test", warmup_runs=3, min_repeats=10, max_repeats=200, target_rel_ci=0.05,
                          max_seconds=0.15)


@contextlib.contextmanager
def serve(app):
    """Run `app` with uvicorn on a free loopback port; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "agent did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("agent") / "m.onnx"
    export_onnx(resnet_small(widths=(8, 8, 8)), torch.randn(1, 1, 16, 16), path)
    assert path.stat().st_size < LIMIT
    return path.read_bytes()


@pytest.fixture(scope="module")
def agent():
    with serve(create_app(AgentConfig(TOKEN, max_upload_bytes=LIMIT, timeout_s=30))) as url:
        yield url


def post(url, body, token=TOKEN, profile=PROFILE.for_agent(), authorization=None, **kwargs):
    headers = {"Content-Type": "application/octet-stream"}
    if authorization or token is not None:
        headers["Authorization"] = authorization or f"Bearer {token}"
    if profile is not None:
        headers[PROFILE_HEADER] = profile if isinstance(profile, str) else json.dumps(profile)
    return httpx.post(f"{url}/measure", content=body, headers=headers, timeout=60, **kwargs)


def test_health_needs_no_token(agent):
    response = httpx.get(f"{agent}/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_profile_with_agent_url_measures_there_transparently(agent, model_bytes, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_AGENT_TOKEN", TOKEN)
    path = tmp_path / "m.onnx"
    path.write_bytes(model_bytes)
    remote = dataclasses.replace(PROFILE, agent_url=agent)
    stats = get_backend(remote).measure(path, remote)
    assert PROFILE.min_repeats <= stats.n <= PROFILE.max_repeats and stats.median_ms > 0
    assert stats.fingerprint["runtime"] == "onnxruntime" and stats.fingerprint["cpu"]
    assert stats.fingerprint["agent_url"] == agent


def test_client_errors_name_the_fix(agent, model_bytes, tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(model_bytes)
    remote = dataclasses.replace(PROFILE, agent_url=agent)
    monkeypatch.setenv("AUTOPRUNE_AGENT_TOKEN", "wrong-token-xxxxxxxxxxxx")
    with pytest.raises(MeasurementError, match="rejected the token.*AUTOPRUNE_AGENT_TOKEN"):
        get_backend(remote).measure(path, remote)
    monkeypatch.delenv("AUTOPRUNE_AGENT_TOKEN")
    with pytest.raises(MeasurementError, match="export AUTOPRUNE_AGENT_TOKEN"):
        get_backend(remote).measure(path, remote)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    from_file = dataclasses.replace(remote, agent_token=f"file:{token_file}")
    assert get_backend(from_file).measure(path, from_file).n >= PROFILE.min_repeats
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    nowhere = dataclasses.replace(from_file, agent_url=closed)
    with pytest.raises(MeasurementError, match="cannot reach the agent"):
        get_backend(nowhere).measure(path, nowhere)


@pytest.mark.parametrize("token, authorization", [
    (None, None), ("wrong-token-0123456789abcdef", None), (TOKEN + "x", None), (TOKEN[:-1], None),
    (None, f"Basic {TOKEN}"), (None, TOKEN),
])
def test_missing_or_wrong_token_is_401(agent, model_bytes, token, authorization):
    response = post(agent, model_bytes, token=token, authorization=authorization)
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


def test_oversized_upload_is_413_declared_or_streamed(agent):
    assert post(agent, b"\0" * (LIMIT + 1)).status_code == 413
    chunks = (b"\0" * 65536 for _ in range(LIMIT // 65536 + 2))  # chunked: no Content-Length
    response = post(agent, chunks)
    assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_malformed_onnx_is_422_with_the_parser_reason(agent):
    garbage = post(agent, b"this is not a protobuf \xff\xff")
    assert garbage.status_code == 422
    assert garbage.json()["detail"].startswith("malformed ONNX model: ") and "pars" in garbage.json()["detail"]
    no_opset = post(agent, onnx.ModelProto(ir_version=8).SerializeToString())
    assert no_opset.status_code == 422 and "opset" in no_opset.json()["detail"]
    assert post(agent, b"").status_code == 422


@pytest.mark.parametrize("profile, fragment", [
    (None, "missing X-Autoprune-Profile"),
    ("{not json", "not valid JSON"),
    ({**PROFILE.for_agent(), "threads": 0}, "field 'threads'"),
    ({**PROFILE.for_agent(), "source": "/etc/passwd"}, "unknown field"),
    ({**PROFILE.for_agent(), "agent_url": "http://elsewhere:1"}, "agent_url"),
    ({**PROFILE.for_agent(), "agent_token": "file:/etc/shadow"}, "agent_token"),
    ({**PROFILE.for_agent(), "runtime": "torch"}, "ONNX models only"),
    ({**PROFILE.for_agent(), "max_seconds": 100}, "--timeout-s"),
])
def test_bad_profiles_are_422_and_no_paths_or_urls_are_accepted(agent, model_bytes, profile, fragment):
    response = post(agent, model_bytes, profile=profile)
    assert response.status_code == 422 and fragment in response.json()["detail"]


def test_runtime_errors_come_back_as_422(agent, model_bytes):
    cuda = {**PROFILE.for_agent(), "provider": "CUDAExecutionProvider"}
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    response = post(agent, model_bytes, profile=cuda)
    assert response.status_code == 422 and "not available" in response.json()["detail"]


def test_concurrent_requests_are_queued_never_overlapping(agent, model_bytes):
    slow = {**PROFILE.for_agent(), "target_rel_ci": 1e-6, "max_repeats": 100000}  # each runs max_seconds
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: post(agent, model_bytes, profile=slow), range(4)))
    assert [r.status_code for r in responses] == [200] * 4
    spans = sorted((r.json()["started_at"], r.json()["finished_at"]) for r in responses)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, f"measurements overlapped: {spans}"
    assert max(r.json()["queued_s"] for r in responses) > 0.1  # someone waited for the others


def test_full_queue_is_503_and_slow_measurement_is_504(model_bytes):
    release = threading.Event()

    def gated(path, profile):  # the real measurement, held back until the test releases it
        release.wait(10)
        return measure_locally(path, profile)

    with serve(create_app(AgentConfig(TOKEN, timeout_s=1.0, max_queue=1), measure=gated)) as url:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, url, model_bytes, profile={**PROFILE.for_agent(), "max_seconds": 0.1})
            deadline = time.monotonic() + 10
            while not httpx.get(f"{url}/health").json()["busy"]:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            second = post(url, model_bytes, profile={**PROFILE.for_agent(), "max_seconds": 0.1})
            assert second.status_code == 503 and second.headers["retry-after"]
            assert first.result().status_code == 504 and "--timeout-s" in first.result().json()["detail"]
        release.set()


OVERSIZED = st.builds(lambda head, extra: head + b"\0" * (LIMIT + 1 - len(head) + extra),
                      st.binary(max_size=256), st.integers(0, 4096))
HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=200).map(str.strip)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.binary(max_size=2048), OVERSIZED), header=st.one_of(st.none(), HEADER_TEXT))
def test_fuzzed_uploads_are_rejected_cleanly(agent, body, header):
    response = post(agent, body)
    if len(body) > LIMIT:
        assert response.status_code == 413
    else:
        assert response.status_code == 422 and response.json()["detail"].startswith("malformed ONNX model")
    fuzzed_profile = post(agent, body[:64], profile=header)
    assert fuzzed_profile.status_code == 422, fuzzed_profile.text


def test_main_binds_loopback_by_default_and_needs_a_token(monkeypatch, capsys, tmp_path):
    args = parse_args([])
    assert args.host == "127.0.0.1" and args.token_env == "AUTOPRUNE_AGENT_TOKEN"
    monkeypatch.delenv("AUTOPRUNE_AGENT_TOKEN", raising=False)
    assert main([]) == 2 and "no agent token" in capsys.readouterr().err
    short = tmp_path / "token"
    short.write_text("short")
    assert main(["--token-file", str(short)]) == 2 and "at least" in capsys.readouterr().err
    assert main(["--token-file", str(tmp_path / "missing")]) == 2 and "cannot read" in capsys.readouterr().err
    with pytest.raises(AutopruneError, match="at least"):
        create_app(AgentConfig("short"))
