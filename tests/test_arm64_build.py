"""The C++ runtime on arm64, through a cross compiler: every source file under owl_cpp/src compiles for AArch64
with warnings as errors (NEON kernels; the x86 kernel files reduce to stubs), and tests/native/kernel_check.cpp,
linked against them, runs the NEON kernel set under qemu against the generic set and the float64 references.
Skips without aarch64-linux-gnu-g++ / qemu-aarch64 (Debian: g++-aarch64-linux-gnu, qemu-user; .ci/run installs
them where apt is available)."""
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CXX = shutil.which("aarch64-linux-gnu-g++")
QEMU = shutil.which("qemu-aarch64")


def cross_compile(sources: list[Path], out_dir: Path) -> list[Path]:
    def compile_one(src: Path):
        obj = out_dir / (src.parent.name + "_" + src.stem + ".o")
        cmd = [CXX, "-std=gnu++17", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'owl_cpp' / 'include'}",
               f"-I{ROOT / 'owl_cpp' / 'src'}", "-c", str(src), "-o", str(obj)]
        return src, obj, subprocess.run(cmd, capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(compile_one, sources))
    failures = [f"{src.relative_to(ROOT)}:\n{res.stderr[-2000:]}" for src, _, res in results if res.returncode]
    assert not failures, "\n".join(failures)
    return [obj for _, obj, _ in results]


@pytest.mark.skipif(CXX is None, reason="no aarch64-linux-gnu-g++ (apt: g++-aarch64-linux-gnu)")
def test_neon_kernels_on_arm64(tmp_path):
    sources = sorted((ROOT / "owl_cpp" / "src").rglob("*.cpp"))
    objects = cross_compile(sources + [ROOT / "tests" / "native" / "kernel_check.cpp"], tmp_path)
    neon = tmp_path / "ops_matmul_neon.o"
    size = subprocess.run(["aarch64-linux-gnu-size", str(neon)], capture_output=True, text=True, check=True)
    assert int(size.stdout.splitlines()[1].split()[0]) > 20000, "matmul_neon.cpp compiled to its stub"
    exe = tmp_path / "kernel_check"
    link = subprocess.run([CXX, "-static", "-pthread", *map(str, objects), "-o", str(exe)], capture_output=True, text=True)
    assert link.returncode == 0, link.stderr[-3000:]
    if QEMU is None:
        pytest.skip("compiled and linked for arm64; no qemu-aarch64 to run the kernel checks (apt: qemu-user)")
    run = subprocess.run([QEMU, str(exe)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "kernel sets: generic neon;" in run.stdout, run.stdout
