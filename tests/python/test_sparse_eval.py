"""attnkit.sparse: the ResearchAttention wrapper, sparse_eval's rows and plot_sparse_eval."""

import math
import re
import subprocess
from pathlib import Path

import pytest
import torch

import attnkit.sparse as sparse

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / "build" / "tools" / "attnkit" / "attnkit"

SMALL = dict(queries=2, heads=4, kv_heads=2, head_dim=16, repeats=1)
SINK = [{"type": "sink", "sink_size": 32}]
TOP_K = [{"type": "sink", "sink_size": 8}, {"type": "oracle_top_k", "heavy_size": 0.1}]
KEYS = {"config", "length", "density", "rel_error", "sparse_ms", "dense_ms", "empty_mask",
        "maskers"}


def test_rows_shape_and_order():
    rows = sparse.sparse_eval([SINK, TOP_K], lengths=(256, 128), **SMALL)
    assert [(r["config"], r["length"]) for r in rows] == [(0, 128), (0, 256), (1, 128), (1, 256)]
    for r in rows:
        assert set(r) == KEYS
        assert 0.0 < r["density"] <= 1.0
        assert math.isfinite(r["rel_error"]) and r["rel_error"] >= 0.0
        assert r["sparse_ms"] >= 0.0 and r["dense_ms"] >= 0.0
        assert not r["empty_mask"]
    assert rows[0]["maskers"] == '[{"type": "sink", "sink_size": 32}]'
    # dense_ms is measured once per length and shared by the configurations.
    assert rows[0]["dense_ms"] == rows[2]["dense_ms"]


def test_sink_density_is_exact():
    rows = sparse.sparse_eval([SINK], lengths=(128, 256, 512), **SMALL)
    assert [r["density"] for r in rows] == [32 / 128, 32 / 256, 32 / 512]


def test_full_config_has_zero_error():
    # A window longer than the keys makes the mask FULL: plain dense attention.
    rows = sparse.sparse_eval([[{"type": "local", "window_size": 1024}]], lengths=(256, 512),
                              **SMALL)
    for r in rows:
        assert r["density"] == 1.0
        assert r["rel_error"] == 0.0


def test_empty_mask_counts_as_dense():
    # int(0.01 * 64) = 0 keys: no masker picks anything, the attention runs dense.
    rows = sparse.sparse_eval([[{"type": "oracle_top_k", "heavy_size": 0.01}]], lengths=(64,),
                              **SMALL)
    assert rows[0]["empty_mask"] and rows[0]["density"] == 1.0 and rows[0]["rel_error"] == 0.0


def test_error_decreases_as_heavy_size_grows():
    sizes = (0.05, 0.1, 0.25, 0.5, 0.75, 0.99)
    configs = [[{"type": "oracle_top_k", "heavy_size": h}] for h in sizes]
    rows = sparse.sparse_eval(configs, lengths=(512,), seed=3, **SMALL)
    errors = [r["rel_error"] for r in rows]
    densities = [r["density"] for r in rows]
    assert all(a >= b for a, b in zip(errors, errors[1:])), errors
    assert all(a < b for a, b in zip(densities, densities[1:])), densities


def test_seeded_and_reproducible():
    configs = [TOP_K, [{"type": "random_sampling", "sampling_rate": 0.2}]]
    a = sparse.sparse_eval(configs, lengths=(128,), seed=5, **SMALL)
    torch.manual_seed(123)
    before = torch.rand(1)
    b = sparse.sparse_eval(configs, lengths=(128,), seed=5, **SMALL)
    c = sparse.sparse_eval(configs, lengths=(128,), seed=6, **SMALL)
    key = lambda rows: [(r["density"], r["rel_error"]) for r in rows]  # noqa: E731
    assert key(a) == key(b)
    assert key(a) != key(c)
    # The caller's RNG state is left alone.
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)


def random_qkv(seed=0, length=256):
    """The data sparse_eval draws itself: one draw at the longest length."""
    torch.manual_seed(seed)
    return {"q": torch.randn(1, 4, 2, 16), "k": torch.randn(1, 2, length, 16),
            "v": torch.randn(1, 2, length, 16)}


def test_qkv_dict_and_file(tmp_path):
    configs = [SINK, TOP_K]
    qkv = random_qkv()
    from_random = sparse.sparse_eval(configs, lengths=(128, 256), **SMALL)
    from_dict = sparse.sparse_eval(configs, lengths=(128, 256), qkv=qkv, repeats=1)
    path = tmp_path / "qkv.pt"
    torch.save(qkv, path)
    from_file = sparse.sparse_eval(configs, lengths=(128, 256), qkv=str(path), repeats=1)
    key = lambda rows: [(r["config"], r["length"], r["density"], r["rel_error"])  # noqa: E731
                        for r in rows]
    # Prefixes of one draw: the same rows as the random data of the same seed.
    assert key(from_dict) == key(from_random)
    assert key(from_file) == key(from_dict)
    # Without lengths: the file's Tk; longer lengths are skipped with a warning.
    assert [r["length"] for r in sparse.sparse_eval(configs, qkv=path, repeats=1)] == [256, 256]
    with pytest.warns(UserWarning, match="skipped"):
        rows = sparse.sparse_eval([SINK], lengths=(128, 1024), qkv=qkv, repeats=1)
    assert [r["length"] for r in rows] == [128]


def test_qkv_errors(tmp_path):
    with pytest.raises(ValueError, match="has no tensor 'v'"):
        sparse.sparse_eval([SINK], qkv={"q": torch.randn(1, 2, 1, 8), "k": torch.randn(1, 2, 8, 8)})
    with pytest.raises(ValueError, match="divisible"):
        sparse.sparse_eval([SINK], qkv={"q": torch.randn(1, 3, 1, 8), "k": torch.randn(1, 2, 8, 8),
                                        "v": torch.randn(1, 2, 8, 8)})
    with pytest.raises(ValueError, match="every length exceeds"), pytest.warns(UserWarning):
        sparse.sparse_eval([SINK], lengths=(512,), qkv=random_qkv(length=64))
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a torch.save file"):
        sparse.sparse_eval([SINK], qkv=bad)


def test_bad_config_errors():
    with pytest.raises(ValueError, match="unknown type 'nosuch'"):
        sparse.sparse_eval([[{"type": "nosuch"}]], lengths=(64,))
    with pytest.raises(ValueError, match="config 1"):
        sparse.sparse_eval([SINK, [{"type": "sink", "sink_sz": 4}]], lengths=(64,))
    with pytest.raises(ValueError, match="at most one sampling masker"):
        sparse.ResearchAttention([{"type": "random_sampling", "sampling_rate": 0.1},
                                  {"type": "random_sampling", "sampling_rate": 0.2}])
    with pytest.raises(ValueError, match="invalid JSON"):
        sparse.ResearchAttention('[{"type": "sink"')
    with pytest.raises(TypeError, match="single dict"):
        sparse.ResearchAttention({"type": "sink", "sink_size": 4})
    with pytest.raises(ValueError, match="shorter than the 2 queries"):
        sparse.sparse_eval([SINK], lengths=(1,), **SMALL)


def test_research_attention_wrapper():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 3, 16), torch.randn(2, 2, 64, 16), torch.randn(2, 2, 64, 16)
    ra = sparse.ResearchAttention(TOP_K)
    assert [m.type for m in ra.maskers] == ["sink", "oracle_top_k"]
    out, weights = ra.custom_attention(q, k, v)
    assert out.shape == (2, 3, 4, 16) and weights is None
    # Defaults: scaling 1/sqrt(D), a fresh state; a JSON string is the same configuration.
    same, _ = sparse.ResearchAttention(ra.config).custom_attention(q, k, v, None, 0.25)
    torch.testing.assert_close(out, same)
    out2, weights, mask = ra.custom_attention(q, k, v, need_weights=True, return_mask=True)
    assert weights.shape == (2, 4, 3, 64)
    torch.testing.assert_close(out2, out)
    assert mask.density() == ra.build_mask(q, k, v).density() == (8 + 6) / 64
    # FULL: the dense attention itself.
    full = sparse.ResearchAttention([{"type": "local", "window_size": 128}])
    torch.testing.assert_close(full.custom_attention(q, k, v)[0],
                               sparse.dense_attention(q, k, v, None, 0.25))


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    rows = sparse.sparse_eval([SINK, TOP_K], lengths=(128, 256), **SMALL)
    path = tmp_path / "eval.png"
    assert sparse.plot_sparse_eval(rows, path) == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log_path = tmp_path / "eval_log.png"
    sparse.plot_sparse_eval(rows, log_path, log_y=True)
    assert log_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(monkeypatch, tmp_path):
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    rows = [{"config": 0, "length": 8, "density": 0.5, "rel_error": 0.1}]
    with pytest.raises(ImportError, match="needs matplotlib"):
        sparse.plot_sparse_eval(rows, tmp_path / "x.png")


@pytest.mark.skipif(not CLI.exists(), reason=f"the attnkit CLI is not built ({CLI})")
def test_same_rows_as_cli(tmp_path):
    configs = [SINK, [{"type": "sink", "sink_size": 8}, {"type": "local", "window_size": 8},
                      {"type": "random_sampling", "sampling_rate": 0.2}]]
    args = [str(CLI), "sparse-eval", "--lengths", "128,256", "--queries", "2", "--heads", "4",
            "--kv-heads", "2", "--head-dim", "16", "--repeats", "1", "--seed", "7"]
    for i, config in enumerate(configs):
        path = tmp_path / f"c{i}.json"
        path.write_text(sparse.ResearchAttention(config).config)
        args += ["--maskers", str(path)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    table = [line.split() for line in out.splitlines() if re.match(r"^\s*\d+\s+\d+\s+[\d.]", line)]
    rows = sparse.sparse_eval(configs, lengths=(128, 256), seed=7, **SMALL)
    assert len(table) == len(rows) == 4
    for cells, r in zip(table, rows):
        assert (int(cells[0]), int(cells[1])) == (r["config"], r["length"])
        assert cells[2] == f"{r['density']:.4f}"
        assert float(cells[3]) == pytest.approx(r["rel_error"], rel=2e-3)
