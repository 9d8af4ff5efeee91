"""The measurement agent over real HTTP on 127.0.0.1 (uvicorn in a thread, httpx as the client)."""

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import torch
import uvicorn
from onnx import TensorProto, helper, numpy_helper
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servers import free_port

from autoprune.errors import AutopruneError, MeasurementError
from autoprune.hw import export_onnx, get_backend
from autoprune.hw.agent import AgentConfig, create_app, main, parse_args, public_reason
from autoprune.hw.isolated import CHILD_NAME
from autoprune.hw.lock import measurement_lock
from autoprune.hw.profile import HardwareProfile
from autoprune.hw.remote import PROFILE_HEADER
from autoprune.tasks.models import resnet_small

TOKEN = "test-token-0123456789abcdef"
LIMIT = 256 * 1024
PROFILE = HardwareProfile("agent-test", warmup_runs=3, min_repeats=10, max_repeats=200, target_rel_ci=0.05,
                          max_seconds=0.15)


@contextlib.contextmanager
def serve(app, graceful_s=None):
    """Run `app` with uvicorn on a free loopback port; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=graceful_s))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
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
    closed = f"http://127.0.0.1:{free_port()}"   # a port with nobody listening
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
    ({**PROFILE.for_agent(), "threads": 10_000}, "'threads'"),
    ({**PROFILE.for_agent(), "inter_op_threads": 10_000}, "'inter_op_threads'"),
    ({**PROFILE.for_agent(), "cpu_affinity": [0, 100_000]}, "'cpu_affinity'"),
    ({**PROFILE.for_agent(), "warmup_runs": 1_000_000_000}, "'warmup_runs'"),
    ({**PROFILE.for_agent(), "min_repeats": 10**9, "max_repeats": 10**9}, "'min_repeats'"),
    ({**PROFILE.for_agent(), "max_repeats": 10**9}, "'max_repeats'"),
    ({**PROFILE.for_agent(), "batch_size": 1_000_000_000}, "--max-input-mb"),
    ({**PROFILE.for_agent(), "batch_size": 64, "input_shape": [3, 4096, 4096]}, "--max-input-mb"),
    ({**PROFILE.for_agent(), "batch_size": 2**21}, "--max-input-mb"),  # fits the early check; the model's 1x16x16 does not
    ({**PROFILE.for_agent(), "input_shape": [1] * 100}, "'input_shape'"),
    ({**PROFILE.for_agent(), "workspace_mb": 10**9}, "'workspace_mb'"),
    ({**PROFILE.for_agent(), "device": "cuda:100000"}, "'device'"),
    ({**PROFILE.for_agent(), "description": {"nested": ["not", "text"]}}, "'description'"),
    ({**PROFILE.for_agent(), "description": "x" * 5000}, "'description'"),
    ({**PROFILE.for_agent(), "name": "n" * 5000}, "'name'"),
])
def test_bad_profiles_are_422_and_no_paths_or_urls_are_accepted(agent, model_bytes, profile, fragment):
    response = post(agent, model_bytes, profile=profile)
    assert response.status_code == 422 and fragment in response.json()["detail"], response.text
    assert len(response.json()["detail"]) < 600


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


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def endless_model() -> bytes:
    """A Loop of 2**62 iterations over a [1, 4] tensor: it cannot finish, and its memory stays flat."""
    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4])  # noqa: E731
    flag = lambda name: helper.make_tensor_value_info(name, TensorProto.BOOL, [])  # noqa: E731
    body = helper.make_graph([helper.make_node("Identity", ["c_in"], ["c_out"]),
                              helper.make_node("Abs", ["v_in"], ["v_out"])], "body",
                             [helper.make_tensor_value_info("i", TensorProto.INT64, []), flag("c_in"), value("v_in")],
                             [flag("c_out"), value("v_out")])
    return _model([helper.make_node("Loop", ["trip", "cond", "x"], ["y"], body=body)], [value("x")], [value("y")],
                  [numpy_helper.from_array(np.array(2**62, dtype=np.int64), "trip"),
                   numpy_helper.from_array(np.array(True), "cond")])


def constant_of_shape_model(n: int) -> bytes:
    """ConstantOfShape [n, n] float32: 4 n^2 bytes at run time from a few hundred bytes of upload."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])
    fill = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    return _model([helper.make_node("ConstantOfShape", ["shape"], ["c"], value=fill), helper.make_node("Add", ["c", "x"], ["y"])],
                  [x], [y], [numpy_helper.from_array(np.array([n, n], dtype=np.int64), "shape")])


def external_data_model(location: str) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1, 4], data_location=TensorProto.EXTERNAL)
    weight.external_data.add(key="location", value=location)
    return _model([helper.make_node("Add", ["x", "w"], ["y"])], [x], [y], [weight])


def measuring_children() -> list:
    return [p for p in multiprocessing.active_children() if p.name == CHILD_NAME]


def wait_until(condition, what: str, limit_s: float = 60):
    """Poll `condition` (a failure detector, not a margin: the awaited event happens far sooner)."""
    deadline = time.monotonic() + limit_s
    while not (found := condition()):
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.02)
    return found


def assert_lock_free():
    """The machine-wide measurement lock can be taken (another search could measure now)."""
    taken = threading.Event()

    def take():
        with measurement_lock():
            taken.set()

    threading.Thread(target=take, daemon=True).start()
    assert taken.wait(60), "the measurement lock is still held"


QUICK = {**PROFILE.for_agent(), "warmup_runs": 1, "min_repeats": 5, "max_repeats": 20, "max_seconds": 0.05}


def test_endless_model_is_killed_at_the_timeout_and_the_lock_is_freed(model_bytes):
    """The measurement runs in a child that the request timeout kills: after the 504 no child is left,
    the machine-wide lock is free and the next request is measured (today's main kept measuring)."""
    # 8 s: the endless request's limit, and all the follow-up request has to start a child and measure
    with serve(create_app(AgentConfig(TOKEN, timeout_s=8.0, max_queue=1))) as url:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, url, endless_model(), profile={**QUICK, "warmup_runs": 1000})
            wait_until(lambda: httpx.get(f"{url}/health").json()["busy"], "the endless measurement")
            second = post(url, model_bytes, profile=QUICK)
            assert second.status_code == 503 and second.headers["retry-after"]
            assert first.result().status_code == 504 and "--timeout-s" in first.result().json()["detail"]
        assert measuring_children() == [] and not httpx.get(f"{url}/health").json()["busy"]
        assert_lock_free()
        after = post(url, model_bytes, profile=QUICK)
        assert after.status_code == 200 and after.json()["stats"]["n"] >= QUICK["min_repeats"]


def test_measuring_process_killed_like_by_the_oom_killer_is_a_clean_500(agent, model_bytes):
    with ThreadPoolExecutor(1) as pool:
        endless = pool.submit(post, agent, endless_model(), profile=QUICK)
        child = wait_until(measuring_children, "the measuring child")[0]
        os.kill(child.pid, signal.SIGKILL)
        response = endless.result()
    assert response.status_code == 500
    assert "killed by signal SIGKILL" in response.json()["detail"] and "still serving" in response.json()["detail"]
    assert measuring_children() == []
    assert post(agent, model_bytes, profile=QUICK).status_code == 200


def test_stopping_the_agent_stops_its_measurement():
    """Past uvicorn's graceful-shutdown wait, the agent kills the measurement in progress (it would
    otherwise hold the exit, and the lock, until its deadline)."""
    with ThreadPoolExecutor(1) as pool:
        with serve(create_app(AgentConfig(TOKEN, timeout_s=600)), graceful_s=0.5) as url:
            endless = pool.submit(post, url, endless_model(), profile=QUICK)
            wait_until(measuring_children, "the measuring child")
        with contextlib.suppress(httpx.HTTPError):  # cancelled: a 500, or the connection closes unanswered
            assert endless.result().status_code == 500
    wait_until(lambda: measuring_children() == [], "the child's end")
    assert_lock_free()


def _overcommit_always() -> bool:
    setting = Path("/proc/sys/vm/overcommit_memory")
    return not setting.exists() or setting.read_text().strip() == "1"


@pytest.mark.skipif(_overcommit_always(), reason="a 160 GB allocation would succeed and bring the OOM killer")
def test_model_that_blows_memory_is_a_clean_error_and_the_agent_serves_on(agent, model_bytes):
    response = post(agent, constant_of_shape_model(200_000), profile=QUICK)  # asks for 160 GB when run
    assert response.status_code == 422, response.text
    assert "ran out of memory" in response.json()["detail"] and "batch_size" in response.json()["detail"]
    assert measuring_children() == []
    assert post(agent, model_bytes, profile=QUICK).status_code == 200


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


def unknown_op_model() -> bytes:
    """Well-formed for the ONNX checker (an unknown domain is not checked), refused by ONNX Runtime."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
                             ir_version=8).SerializeToString()


def dynamic_input_model() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "width"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "width"])
    return _model([helper.make_node("Abs", ["x"], ["y"])], [x], [y])


@pytest.mark.parametrize("body", [unknown_op_model(), dynamic_input_model()], ids=["runtime-refuses", "dynamic-dims"])
def test_error_details_name_no_server_path(agent, body):
    detail = post(agent, body, profile=QUICK).json()["detail"]
    assert "the uploaded model" in detail and "/tmp" not in detail and "autoprune-agent-" not in detail
    assert ".onnx" not in detail, detail


def test_external_data_is_refused_without_saying_whether_the_file_exists(agent, tmp_path, monkeypatch):
    """The ONNX checker looks external files up relative to the agent's working directory: its answer
    told a client which files exist there. The agent refuses every external reference the same way."""
    monkeypatch.chdir(tmp_path)  # the agent runs in this process: this is its working directory
    (tmp_path / "existing.bin").write_bytes(b"\0" * 16)
    details = {post(agent, external_data_model(location), profile=QUICK).json()["detail"]
               for location in ("existing.bin", "no-such-file.bin", "../../../../etc/passwd", "/etc/hostname")}
    assert len(details) == 1 and "self-contained" in details.pop()


def test_public_reason_keeps_the_reason_and_drops_paths(tmp_path):
    upload = tmp_path / "tmpabc123.onnx"
    text = public_reason(f"ONNX Runtime cannot load {upload}: see /home/agent/.cache/x.log\nTraceback (...)", upload)
    assert text == "ONNX Runtime cannot load the uploaded model: see <path>"
    assert public_reason("input_shape [3] has 1 dims but input 'x' has 2 per sample: fix input_shape") == \
        "input_shape [3] has 1 dims but input 'x' has 2 per sample: fix input_shape"


def test_profile_name_cannot_forge_log_lines(agent, model_bytes, caplog):
    forged = "x\nINFO:     measured 'admin' on onnxruntime: 0.0001 ms median\r\x1b[2K"
    with caplog.at_level(logging.INFO, logger="autoprune.agent"):
        response = post(agent, model_bytes, profile={**QUICK, "name": forged})
    assert response.status_code in (200, 422)  # a profile may refuse such a name outright
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("autoprune")]
    assert response.status_code == 422 or any("measured" in m for m in messages)
    for message in messages:
        assert not any(ch in message for ch in "\n\r\x1b"), message


# -- the command line ---------------------------------------------------------------------------------
def _busy_port(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen()
    return sock


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def test_main_binds_loopback_by_default_and_needs_a_token(monkeypatch, capsys, tmp_path):
    args = parse_args([])
    assert args.host == "127.0.0.1" and args.token_env == "AUTOPRUNE_AGENT_TOKEN" and not args.insecure
    monkeypatch.delenv("AUTOPRUNE_AGENT_TOKEN", raising=False)
    assert main([]) == 2 and "no agent token" in capsys.readouterr().err
    short = tmp_path / "token"
    short.write_text("short")
    assert main(["--token-file", str(short)]) == 2 and "at least" in capsys.readouterr().err
    assert main(["--token-file", str(tmp_path / "missing")]) == 2 and "cannot read" in capsys.readouterr().err
    with pytest.raises(AutopruneError, match="at least"):
        create_app(AgentConfig("short"))


@pytest.mark.parametrize("args, expect", [
    (["--port", "99999"], ("--port 99999", "between 1 and 65535")),
    (["--port", "many"], ("--port", "invalid int", "--help")),
    (["--ssl-certfile", "/missing.pem"], ("/missing.pem", "give an existing PEM file to --ssl-certfile")),
    (["--ssl-keyfile", "{tmp}/key.pem"], ("--ssl-keyfile needs --ssl-certfile",)),
    (["--ssl-certfile", "{tmp}/garbage.pem"], ("is not a PEM certificate", "give the matching pair")),
    (["--host", "0.0.0.0"], ("refusing to listen on 0.0.0.0 without TLS", "--ssl-certfile", "--insecure")),
    (["--port", "{busy}"], ("is already in use", "pick another --port")),
    (["--host", "0.0.0.0", "--insecure", "--port", "{busy_any}"], ("is already in use",)),  # --insecure passes
    (["--max-input-mb", "0"], ("--max-input-mb",)),
], ids=["port-range", "port-not-int", "missing-cert", "key-without-cert", "bad-cert", "no-tls-off-loopback",
        "busy-port", "insecure-allowed", "input-budget"])
def test_bad_agent_options_are_one_line_and_exit_2(args, expect, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("AUTOPRUNE_AGENT_TOKEN", TOKEN)
    (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    with contextlib.closing(_busy_port()) as busy, contextlib.closing(_busy_port("0.0.0.0")) as busy_any:
        args = [a.format(tmp=tmp_path, busy=busy.getsockname()[1], busy_any=busy_any.getsockname()[1]) for a in args]
        assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autoprune: error: "), err
    assert all(fragment in err[0] for fragment in expect), err[0]


@pytest.mark.slow  # a fresh interpreter imports torch, ONNX Runtime, MLflow, ...
def test_real_agent_process_refuses_a_bad_port_in_one_line():
    result = subprocess.run([sys.executable, "-m", "autoprune", "agent", "--port", "99999"], capture_output=True,
                            text=True, env={**os.environ, "AUTOPRUNE_AGENT_TOKEN": TOKEN}, timeout=300)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "autoprune: error: --port 99999 is out of range: give a port between 1 and 65535"], result.stderr


@pytest.mark.slow  # a fresh interpreter imports torch, ONNX Runtime, MLflow, ...
def test_real_agent_process_serves_https_with_the_given_certificate(tmp_path, model_bytes):
    cert, key = _self_signed(tmp_path)
    port = free_port()
    agent = subprocess.Popen([sys.executable, "-m", "autoprune", "agent", "--port", str(port), "--ssl-certfile",
                              str(cert), "--ssl-keyfile", str(key), "--timeout-s", "60"],
                             env={**os.environ, "AUTOPRUNE_AGENT_TOKEN": TOKEN}, stderr=subprocess.PIPE, text=True)
    try:
        url = f"https://127.0.0.1:{port}"
        wait_until(lambda: agent.poll() is not None or _answers(url, cert), "the agent's start", limit_s=300)
        assert agent.poll() is None, agent.stderr.read()
        response = post(url, model_bytes, profile=QUICK, verify=str(cert))
        assert response.status_code == 200 and response.json()["stats"]["n"] >= QUICK["min_repeats"]
    finally:
        agent.send_signal(signal.SIGINT)
        agent.wait(60)
    assert "Traceback" not in agent.stderr.read()


def _answers(url: str, cert: Path) -> bool:
    try:
        return httpx.get(f"{url}/health", verify=str(cert), timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
