"""conf/, hw_profiles/ and search_spaces/ must be found from an installed wheel, not only a checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_carries_the_yaml_folders_and_finds_them(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(tmp_path.glob("autoprune-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("autoprune/conf/config.yaml", "autoprune/conf/task/digits.yaml",
                     "autoprune/hw_profiles/cpu-ort-1t.yaml", "autoprune/search_spaces/default.yaml"):
        assert required in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = ("import autoprune.resources as r, autoprune.hw as hw; "
             "print(r.resource_dir('conf')); print(hw.load_profile('cpu-ort-1t').source)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    conf, profile = out.stdout.split()
    assert conf == str(site / "autoprune" / "conf")
    assert profile == str(site / "autoprune" / "hw_profiles" / "cpu-ort-1t.yaml")
