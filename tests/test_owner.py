"""owner.py: a process is judged dead only when it certainly is (real processes, no mocks)."""

from __future__ import annotations

import os
import subprocess
import sys

from autoprune import owner as owner_module
from autoprune.owner import owner_is_dead, process_owner


def test_this_process_is_alive_and_its_stamp_is_stable():
    owner = process_owner()
    assert owner == process_owner() and owner.rsplit(":", 2)[1] == str(os.getpid())
    assert not owner_is_dead(owner)


def test_a_finished_process_is_dead_and_a_recycled_pid_is_not_mistaken_for_it():
    # owner.py uses only the standard library: the child loads it from its file, not the whole package
    load = (f"import importlib.util as u; s = u.spec_from_file_location('autoprune.owner', {owner_module.__file__!r}); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); print(m.process_owner())")
    child = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, check=True)
    assert owner_is_dead(child.stdout.strip())
    machine, pid, start = process_owner().rsplit(":", 2)
    assert owner_is_dead(f"{machine}:{pid}:{int(start) + 1}")   # this pid, but started at another time


def test_other_hosts_other_namespaces_and_garbage_are_left_to_the_heartbeat():
    machine, pid, start = process_owner().rsplit(":", 2)
    host = machine.split("/")[0]
    for owner in (f"another-host/1:{2 ** 22 + 1}:1", f"{host}/1:{2 ** 22 + 1}:1", f"{host}:{2 ** 22 + 1}:1",
                  None, "", "not an owner", f"{machine}:x:{start}"):
        assert not owner_is_dead(owner), owner
