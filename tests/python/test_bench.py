"""python -m attnkit.bench runs (small shapes) and prints one ratio per row."""

from attnkit import bench


def test_bench_quick_runs(capsys):
    bench.main(["--quick", "--reps", "1", "--only", "dense,decode"])
    rows = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| ") and "x** |" in l]
    assert len(rows) == 9  # 8 dense rows (fp32/bf16 x causal x fwd/fwd+bwd) + decode
