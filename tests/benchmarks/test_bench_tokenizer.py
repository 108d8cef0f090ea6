import json

from benchmarks import bench_tokenizer


def test_quick_run_compares_both_kernels_on_every_shape(tmp_path) -> None:
    out = tmp_path / "tok.json"
    report = bench_tokenizer.main(["--quick", "--json", str(out)])
    rows = report["rows"]
    assert [r["shape"] for r in rows] == [s[0] for s in bench_tokenizer.SHAPES]
    for row in rows:  # every row timed both kernels both ways (no timing is asserted)
        assert set(row["seconds"]) == {"auto forward", "batched forward", "auto fwd+bwd", "batched fwd+bwd"}
        assert row["forward_ratio"] > 0 and row["fwd_bwd_ratio"] > 0
    assert json.loads(out.read_text())["rows"][0]["batch"] == 64
