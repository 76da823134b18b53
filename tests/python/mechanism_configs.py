"""Small, valid options for every sequence mechanism (sized for T = 16 and dim 32)."""

CONFIGS = {
    "standard": dict(dim=32, num_heads=4),
    "mqa": dict(dim=32, num_heads=4),
    "gqa": dict(dim=32, num_heads=4, num_kv_heads=2),
    "mla": dict(dim=32, num_heads=4),
    "bigbird": dict(dim=32, num_heads=4, block_size=4, num_global_blocks=1, num_window_blocks=3,
                    num_random_blocks=1),
    "dsa": dict(dim=32, num_heads=4, top_k=4),
    "minimax": dict(dim=32, num_heads=4, num_kv_groups=2, block_size=4, top_k=2),
    "hca": dict(dim=32, num_heads=4, compression_rate=4, window=4),
    "csa": dict(dim=32, num_heads=4, compression_rate=2, top_k=4, window=4),
    "delta": dict(dim=32, num_heads=4, window=4, sink=2, stride=4),
    "diff": dict(dim=32, num_heads=4),
    "local": dict(dim=32, num_heads=4, window_size=4),
    "dilated": dict(dim=32, num_heads=4, dilation_rate=2),
    "block": dict(dim=32, num_heads=4, block_size=4),
    "longformer": dict(dim=32, num_heads=4, window_size=4, global_positions=[0]),
    "alibi": dict(dim=32, num_heads=4),
    "lsh": dict(dim=32, num_heads=4, bucket_size=4, num_hashes=2),
    "linear": dict(dim=32, num_heads=4),
    "gated": dict(attn={"type": "gqa", "dim": 32, "num_heads": 4, "num_kv_heads": 2}),
    "combined": dict(attn_a={"type": "local", "dim": 32, "num_heads": 4, "window_size": 4},
                     attn_b={"type": "linear", "dim": 32, "num_heads": 4}),
    "gdn": dict(dim=32, num_qk_heads=2, num_v_heads=4),
    # Counts, so that a prefill and token-by-token decoding pick the same keys.
    "research": dict(dim=32, num_heads=4, num_kv_heads=2,
                     maskers=[{"type": "sink", "sink_size": 2},
                              {"type": "oracle_top_k", "heavy_size": 4}]),
}

# Mechanisms with a `causal` option (the rest are causal always or never).
def with_causal(name, causal):
    cfg = dict(CONFIGS[name])
    if name == "gated":
        cfg["attn"] = dict(cfg["attn"], causal=causal)
    elif name == "combined":
        cfg["attn_a"] = dict(cfg["attn_a"], causal=causal)
        cfg["attn_b"] = dict(cfg["attn_b"], causal=causal)
    else:
        cfg["causal"] = causal
    return cfg
