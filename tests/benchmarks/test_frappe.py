"""benchmarks/frappe.py (BARS protocol runner) and benchmarks/report.py (its tables),
on a tiny random stand-in for Frappe (the real data is never needed by tests)."""

import json
import sys

import pytest
import torch

from benchmarks import frappe, report


def _fake_frappe(rows: int = 256, seed: int = 0) -> dict:
    """Same layout as load_frappe's output: ids already remapped (0 = OOV)."""
    g = torch.Generator().manual_seed(seed)
    vocab = torch.tensor([5, 7, 3, 3, 2, 2, 2, 4, 3, 6])

    def split(n: int) -> tuple:
        ids = torch.stack([torch.randint(0, int(v) + 1, (n,), generator=g) for v in vocab], 1)
        labels = (ids[:, 0] % 2 == ids[:, 1] % 2).float()  # learnable from user x item
        return ids, labels

    return {"train": split(rows), "valid": split(128), "test": split(128), "vocab": (vocab, torch.empty(0))}


def test_frappe_spec_applies_overrides_and_over_arch() -> None:
    spec = frappe.frappe_spec("shared_ffn", {"pooling": "flatten", "d_model": 80}, [64, 32])
    assert spec.rankmixer.ffn_type == "shared"  # the variant
    assert spec.rankmixer.pooling == "flatten" and spec.rankmixer.d_model == 80  # overrides on top
    assert spec.rankmixer_over == [64, 32]
    assert frappe.frappe_spec("full").rankmixer_over == [256]  # default


def test_run_rankmixer_row_records_protocol_and_flops() -> None:
    data = _fake_frappe()
    row = frappe.run(data, "rankmixer", "full", seed=1, max_epochs=2, log=False,
                     lr=3e-3, rankmixer_over=[16])
    assert row["model"] == "rankmixer" and row["epochs_run"] <= 2
    assert 1 <= row["best_epoch"] <= row["epochs_run"] == len(row["valid_history"])
    assert row["valid_auc"] == max(row["valid_history"]) or abs(row["valid_auc"] - max(row["valid_history"])) < 1e-5
    assert 0.0 <= row["test_auc"] <= 1.0 and row["test_logloss"] > 0
    assert row["encoder_flops"] == frappe.frappe_spec("full").rankmixer.flops_per_sample(exact=True)


@pytest.mark.parametrize("router", ["dtsi", "topk"])
def test_moe_row_reports_the_test_ratio_and_for_dtsi_the_dense_gated_auc(router: str) -> None:
    row = frappe.run(_fake_frappe(), "rankmixer", "full", seed=1, max_epochs=1, log=False,
                     overrides={"use_moe": True, "moe_router": router, "moe_target_active_ratio": 0.5},
                     rankmixer_over=[16])
    assert 0.0 < row["moe_test_active_ratio"] <= 1.0 and row["moe_dead_experts"] >= 0
    if router == "dtsi":
        assert 0.0 <= row["test_auc_dense_gated"] <= 1.0
        assert abs(row["test_auc_gap"] - (row["test_auc"] - row["test_auc_dense_gated"])) < 1e-12
    else:
        assert row["moe_test_active_ratio"] == 0.5 and "test_auc_gap" not in row  # exactly k/E


def test_run_baseline_has_no_encoder_flops() -> None:
    row = frappe.run(_fake_frappe(), "dnn", "full", seed=1, max_epochs=1, log=False)
    assert "encoder_flops" not in row and row["epochs_run"] == 1
    assert "moe_test_active_ratio" not in row


def _drive(schedule: "frappe.PlateauSchedule", aucs: list) -> list:
    """(improved, stop, lr after the step) per epoch until stop."""
    out = []
    for auc in aucs:
        improved, stop = schedule.step(auc)
        out.append((improved, stop, schedule.lr))
        if stop:
            break
    return out


def test_fuxictr_schedule_resets_stalls_on_improvement() -> None:
    # FuxiCTR: a stall divides the lr by 10, an improvement resets the count; stop at 2 in a row.
    steps = _drive(frappe.PlateauSchedule(1e-3, "fuxictr"), [0.90, 0.89, 0.91, 0.90, 0.92, 0.91, 0.91, 0.99])
    assert [s[1] for s in steps] == [False] * 6 + [True]  # the 2nd consecutive stall stops
    assert [s[0] for s in steps] == [True, False, True, False, True, False, False]
    assert steps[-2][2] == pytest.approx(1e-6)  # three stalls: 1e-3 -> 1e-4 -> 1e-5 -> 1e-6
    floor = frappe.PlateauSchedule(1e-5, "fuxictr")
    _drive(floor, [0.5, 0.4, 0.6, 0.5, 0.7, 0.6])
    assert floor.lr == frappe.MIN_LR  # never below 1e-6


def test_fuxictr_schedule_needs_min_delta_to_count_as_improvement() -> None:
    steps = _drive(frappe.PlateauSchedule(1e-3, "fuxictr"), [0.9, 0.9 + 1e-7])
    assert steps[1][:2] == (False, False)


def test_v0_schedule_counts_stalls_cumulatively() -> None:
    # The earlier rule (kept to reproduce recorded results): stalls are never reset.
    steps = _drive(frappe.PlateauSchedule(1e-3, "v0"), [0.90, 0.89, 0.91, 0.92, 0.91, 0.99])
    assert [s[1] for s in steps] == [False, False, False, False, True]


def test_schedule_rejects_unknown_protocol() -> None:
    with pytest.raises(ValueError, match="protocol"):
        frappe.PlateauSchedule(1e-3, "bars")


def test_early_stopping_restores_best_epoch() -> None:
    row = frappe.run(_fake_frappe(rows=64), "dnn", "full", seed=3, max_epochs=40, log=False)
    hist = row["valid_history"]
    assert row["protocol"] == "fuxictr" and row["epochs_run"] < 40  # valid AUC stalls
    assert hist[row["best_epoch"] - 1] == max(hist)
    assert all(h < max(hist) + 1e-6 for h in hist[row["best_epoch"]:])  # nothing later beat it
    assert len(hist) - row["best_epoch"] == frappe.PATIENCE  # stopped at 2 stalls in a row


@pytest.mark.parametrize("argv, message", [
    (["--rankmixer-lr", "0"], "--rankmixer-lr"),
    (["--rankmixer-over", "0"], "--rankmixer-over"),
    (["--rankmixer-set", "pooling"], "FIELD=VALUE"),
    (["--protocol", "bars"], "--protocol"),
])
def test_cli_rejects_bad_tuning_flags(argv, message, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["frappe.py", "/nonexistent", *argv])
    with pytest.raises(SystemExit):
        frappe.main()
    assert message in capsys.readouterr().err


def _row(model: str, seed: int, test_auc: float, variant: str = "full", **extra: object) -> dict:
    return {"model": model, "variant": variant, "seed": seed, "best_epoch": 3, "valid_auc": test_auc,
            "test_auc": test_auc, "test_logloss": 0.2, "dense_params": 1000, **extra}


def test_report_merges_files_last_wins(tmp_path, capsys) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(json.dumps(r) for r in [_row("dcnv2", 1, 0.90), _row("dcnv2", 2, 0.92)]) + "\n")
    b.write_text(json.dumps(_row("dcnv2", 1, 0.94)) + "\n" + json.dumps(_row("rankmixer", 1, 0.95)) + "\n")
    rows = report.read(str(a), str(b))
    assert len(rows) == 3
    assert {r["test_auc"] for r in rows if r["model"] == "dcnv2"} == {0.94, 0.92}
    report.frappe_table(rows)
    out = capsys.readouterr().out
    assert "| dcnv2 | 1,2 | v0 |" in out and "0.9300 ± 0.0141" in out and "0.9845" in out


def test_report_keeps_protocols_apart(tmp_path, capsys) -> None:
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(_row("dcnv2", 1, 0.90)) + "\n"
                    + json.dumps(_row("dcnv2", 1, 0.95, protocol="fuxictr")) + "\n")
    rows = report.read(str(path))
    assert sorted(r["test_auc"] for r in rows) == [0.90, 0.95]  # not deduplicated across protocols
    report.frappe_table(rows)
    out = capsys.readouterr().out
    assert "| dcnv2 | 1 | fuxictr |" in out and "| dcnv2 | 1 | v0 |" in out


def test_report_frappe_ablation_delta_is_relative_to_full(tmp_path, capsys) -> None:
    rows = [_row("rankmixer", 1, 0.80, encoder_flops=100),
            _row("rankmixer", 1, 0.79, variant="no_mixing", encoder_flops=100),
            _row("rankmixer", 1, 0.80, variant="self_attention", encoder_flops=150)]
    report.ablation_table(rows, key="test_auc")
    out = capsys.readouterr().out
    assert "| no_mixing | 1 | 0.7900 | -1.25% | -0.50% | yes | +0.0% |" in out
    assert "| self_attention | 1 | 0.8000 | +0.00% | -0.03% | no | +50.0% |" in out
