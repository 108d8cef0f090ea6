"""rankmixer-export / rankmixer-predict command lines (run in-process)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq

from tests.inference.helpers import DATA, small_model
from torchrec_rankmixer.inference.model_file import save_model
from torchrec_rankmixer.inference.cli import export_main, predict_main
from torchrec_rankmixer.inference.predictor import Predictor


def test_export_then_predict(tmp_path, capsys):
    ckpt = tmp_path / "ckpt.pt"
    save_model(small_model(seed=8), ckpt)
    rc = export_main(["--checkpoint", str(ckpt), "--output", str(tmp_path / "exp"),
                      "--table-dtype", "int4", "--artifact", "torchscript",
                      "--dense-names", "x,y,z"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["artifact"] == "torchscript" and report["path"].endswith("model.ts")
    assert report["sizes_bytes"]["tables"] < report["sizes_bytes"]["tables_float"]

    dense, ids, labels = DATA.sample(20, 1)
    cols = {f"f{j}": pa.array(ids[:, j].tolist()) for j in range(4)}
    cols.update({n: pa.array(dense[:, j].tolist()) for j, n in enumerate("xyz")})
    cols["request_id"] = pa.array(list(range(20)))
    cols["label"] = pa.array(labels.tolist())
    pq.write_table(pa.table(cols), tmp_path / "req.parquet")
    rc = predict_main(["--model", str(tmp_path / "exp"), "--input", str(tmp_path / "req.parquet"),
                       "--output", str(tmp_path / "scores.csv"), "--passthrough", "request_id",
                       "--label-column", "label", "--batch-size", "8"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 20 and "auc" in summary
    scores = (tmp_path / "scores.csv").read_text().splitlines()
    assert scores[0] == '"request_id","label","logit","probability"' and len(scores) == 21
    expected = Predictor(tmp_path / "exp").predict({f"f{j}": ids[:, j] for j in range(4)}, dense)
    first_logit = float(scores[1].split(",")[2])
    assert abs(first_logit - expected[0, 0].item()) < 1e-5


def test_errors_exit_2_with_message(tmp_path, capsys):
    rc = export_main(["--checkpoint", str(tmp_path / "missing.pt"), "--output", str(tmp_path)])
    assert rc == 2
    assert "rankmixer-export: error: model file" in capsys.readouterr().err
    rc = predict_main(["--model", str(tmp_path), "--input", str(tmp_path / "x.csv")])
    assert rc == 2
    assert "rankmixer-predict: error: export directory" in capsys.readouterr().err
    rc = export_main(["--checkpoint", str(tmp_path / "missing.pt"), "--output", str(tmp_path),
                      "--dense-dtype", "fp16", "--dynamic-int8-linear"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "rankmixer-export: error: dynamic_int8_linear needs dense_dtype='fp32'" in err
