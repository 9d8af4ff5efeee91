"""Client side of the measurement agent: a LatencyBackend that uploads the ONNX model to
`profile.agent_url` and returns the stats the agent measured on its machine."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from autoprune.errors import MeasurementError
from autoprune.hw.export import ModelFiles, as_exported
from autoprune.hw.profile import HardwareProfile
from autoprune.hw.stats import LatencyStats

PROFILE_HEADER = "X-Autoprune-Profile"
RETRY_SECONDS = 2.0  # wait between tries while the agent's queue is full


def read_token(source: str) -> str:
    """The token named by a profile's `agent_token`: "env:VARIABLE" or "file:PATH"."""
    kind, _, where = source.partition(":")
    if kind == "env":
        token = os.environ.get(where, "").strip()
        if not token:
            raise MeasurementError(f"the agent token is not set: export {where}=<the agent's token>")
        return token
    path = Path(where).expanduser()
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise MeasurementError(f"cannot read the agent token from {path} ({exc.strerror}): "
                               "fix agent_token in the profile") from None
    if not token:
        raise MeasurementError(f"the agent token file {path} is empty: write the agent's token into it")
    return token


def _detail(response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text[:200]


def check_agent(profile: HardwareProfile, timeout_s: float = 5.0) -> None:
    """Raise MeasurementError unless the profile's token is readable and its agent answers /health."""
    read_token(profile.agent_token)
    assert profile.agent_url is not None, "check_agent needs a remote profile (agent_url set)"
    try:
        import httpx
    except ImportError:
        raise MeasurementError("the agent client needs httpx: pip install 'autoprune[agent]'") from None
    try:
        httpx.get(profile.agent_url.rstrip("/") + "/health", timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise MeasurementError(f"cannot reach the agent at {profile.agent_url} ({type(exc).__name__}): start "
                               "`python -m autoprune agent` on the device or fix agent_url") from None


class RemoteBackend:
    """LatencyBackend that measures on a `python -m autoprune agent` (profile.agent_url)."""

    def measure(self, model: ModelFiles, profile: HardwareProfile) -> LatencyStats:
        try:
            import httpx
        except ImportError:
            raise MeasurementError("the agent client needs httpx: pip install 'autoprune[agent]'") from None
        assert profile.agent_url is not None, "RemoteBackend needs a remote profile (agent_url set)"
        url = profile.agent_url.rstrip("/") + "/measure"
        body = as_exported(model).onnx_path.read_bytes()
        headers = {"Authorization": f"Bearer {read_token(profile.agent_token)}",
                   "Content-Type": "application/octet-stream",
                   PROFILE_HEADER: json.dumps(profile.for_agent())}
        deadline = time.monotonic() + profile.agent_timeout_s
        while True:
            try:
                response = httpx.post(url, content=body, headers=headers,
                                      timeout=max(1.0, deadline - time.monotonic()))
            except httpx.TimeoutException:
                raise MeasurementError(f"the agent at {profile.agent_url} did not answer within "
                                       f"{profile.agent_timeout_s:g} s: raise agent_timeout_s in the profile") from None
            except httpx.HTTPError as exc:
                raise MeasurementError(f"cannot reach the agent at {profile.agent_url} ({exc}): start "
                                       "`python -m autoprune agent` on the device or fix agent_url") from None
            if response.status_code == 503 and time.monotonic() + RETRY_SECONDS < deadline:
                time.sleep(RETRY_SECONDS)  # queue full: other searches are measuring there
                continue
            break
        if response.status_code == 401:
            raise MeasurementError(f"the agent at {profile.agent_url} rejected the token: set "
                                   f"{profile.agent_token} to the token the agent was started with")
        if response.status_code == 413:
            raise MeasurementError(f"the model is larger than the agent's upload limit: restart the agent "
                                   f"with a larger --max-upload-mb ({_detail(response)})")
        if response.status_code != 200:
            raise MeasurementError(f"the agent at {profile.agent_url} answered {response.status_code}: "
                                   f"{_detail(response)}")
        stats = LatencyStats.from_dict(response.json().get("stats", {}))
        return LatencyStats.from_dict({**stats.to_dict(),
                                       "fingerprint": {**stats.fingerprint, "agent_url": profile.agent_url}})
