"""benchmarks/probes.py runs on the shipped base (a smoke test; the numbers are not checked)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PROBES = Path(__file__).resolve().parents[1] / "benchmarks" / "probes.py"


def _load():
    spec = importlib.util.spec_from_file_location("byg_probes", PROBES)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_prior_probe_writes_a_table_per_edit_type(tmp_path, capsys):
    probes = _load()
    out = tmp_path / "probes.md"
    assert probes.main(["prior", "--n", "16", "--out", str(out)]) == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "edit type" not in line]
    assert len(rows) >= 3  # 16 edits cover several types
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        shares = [float(x) for x in cells[3].split(" / ")]
        assert len(shares) == 3 and all(0.0 <= x <= 1.0 for x in shares)


def test_run_probes_need_a_run():
    probes = _load()
    with pytest.raises(SystemExit):
        probes.main(["grads"])
