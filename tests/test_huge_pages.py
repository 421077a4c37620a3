"""The entry points' restart with huge-page malloc (sensorium_jax/huge_pages.py)."""

import os
import subprocess
import sys

import pytest

from sensorium_jax import huge_pages


def test_the_tunable_is_added_once_and_kept_beside_others():
    assert huge_pages.environment_with_huge_pages({"A": "1"}) == {"A": "1", "GLIBC_TUNABLES": huge_pages.TUNABLE}
    merged = huge_pages.environment_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert merged["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{huge_pages.TUNABLE}"
    assert huge_pages.environment_with_huge_pages(merged) is None  # already set: no second restart
    assert huge_pages.environment_with_huge_pages({huge_pages.OPT_OUT: "0"}) is None


def test_kernel_setting_is_read_from_sysfs(tmp_path):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    assert huge_pages._kernel_offers_huge_pages(setting)
    setting.write_text("always madvise [never]\n")
    assert not huge_pages._kernel_offers_huge_pages(setting)
    assert not huge_pages._kernel_offers_huge_pages(tmp_path / "missing")


@pytest.mark.skipif(
    sys.platform != "linux"
    or not huge_pages._glibc_has_hugetlb_tunable()
    or not huge_pages._kernel_offers_huge_pages(),
    reason="needs Linux, glibc >= 2.35 and transparent huge pages",
)
def test_a_command_restarts_itself_with_the_tunable_and_its_arguments():
    code = (
        "import os, sys; from sensorium_jax.huge_pages import reexec_with_huge_pages; "
        "print('start', flush=True); reexec_with_huge_pages(); print(os.environ['GLIBC_TUNABLES'], sys.argv[1:])"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", huge_pages.OPT_OUT)}
    out = subprocess.run([sys.executable, "-c", code, "--x=1"], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:3] == ["start", "start", f"{huge_pages.TUNABLE} ['--x=1']"]
    opted_out = subprocess.run(
        [sys.executable, "-c", code], env={**env, huge_pages.OPT_OUT: "0"}, capture_output=True, text=True
    )
    assert opted_out.stdout.count("start") == 1 and "KeyError" in opted_out.stderr
