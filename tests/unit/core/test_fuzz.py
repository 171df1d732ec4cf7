"""A short, seeded atheris session over decode -> validate -> plan (tests/fuzz/fuzz_events.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("seed", [1, 2])
def test_no_bytes_make_decode_validate_or_plan_raise(tmp_path: Path, seed: int) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "fuzz" / "fuzz_events.py"),
            "-runs=150000",
            f"-seed={seed}",
            "-max_len=8192",
            f"-artifact_prefix={tmp_path}/",
            str(tmp_path / "corpus"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Done 150000 runs" in proc.stderr
