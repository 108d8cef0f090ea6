"""Command lines: ``rankmixer-export`` and ``rankmixer-predict``.

Examples::

    rankmixer-export --checkpoint ckpt.pt --output export/ --table-dtype int8
    rankmixer-export --run-dir runs/run-20260101-120000 --step 1000 --output export/
    rankmixer-predict --model export/ --input requests.parquet --output scores.csv \\
        --passthrough request_id --label-column label
"""

import argparse
import json
import sys
from typing import Any, List, Optional

from torchrec_rankmixer.inference.quantize import DENSE_DTYPES, TABLE_DTYPES
from torchrec_rankmixer.utils.cli import run_reporting_errors


def export_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``rankmixer-export``."""
    from torchrec_rankmixer.inference.export import ARTIFACT_TYPES
    from torchrec_rankmixer.inference.quantize import QuantizationOptions

    parser = argparse.ArgumentParser(
        prog="rankmixer-export",
        description="Quantize a trained DLRM_RankMixer checkpoint and export it with its "
        "metadata (default: TorchScript lookups + AOTInductor-compiled dense part; "
        "torch.export .pt2 and TorchScript as fallbacks).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="file written by save_model")
    source.add_argument("--run-dir", help="rankmixer-train run directory (config.yaml + DCP "
                        "checkpoints) or one of its checkpoints/step_* directories")
    parser.add_argument("--step", type=int, default=None,
                        help="with --run-dir: training step to export (default: latest checkpoint)")
    parser.add_argument("--calibrate-moe-batches", type=int, default=None,
                        help="with --run-dir: training batches for the Sparse-MoE router "
                        "calibration (default 16 for MoE models; 0 turns it off)")
    parser.add_argument("--no-preprocessing", action="store_true",
                        help="with --run-dir: leave the run's feature preparation (id hash/mod, "
                        "log1p, buckets) out of the artifact; it then takes prepared ids and values")
    parser.add_argument("--output", required=True, help="export directory (created)")
    parser.add_argument("--table-dtype", default="int8", choices=list(TABLE_DTYPES))
    parser.add_argument("--dense-dtype", default="fp32", choices=list(DENSE_DTYPES))
    parser.add_argument("--dynamic-int8-linear", action=argparse.BooleanOptionalAction, default=None,
                        help="dynamic int8 Linear / cross / per-token FFN layers in the dense part "
                        "(default: on when the tables are quantized and --dense-dtype is fp32; "
                        "--no-dynamic-int8-linear keeps it float)")
    parser.add_argument("--artifact", default="auto", choices=list(ARTIFACT_TYPES),
                        help="auto: aoti, else export, else torchscript; aoti: model_sparse.ts + "
                        "model_dense.aoti.pt2 (fastest; dense kernels for this CPU's ISA); export: "
                        "model.pt2 (portable); torchscript: model.ts")
    parser.add_argument("--row-alignment", type=int, default=None,
                        help="quantized row padding in bytes (default 1 on CPU)")
    parser.add_argument("--dense-names", default=None,
                        help="comma-separated names of the dense columns (default dense_0,...)")
    parser.add_argument("--verbose", action="store_true", help="print the traceback of an error")
    args = parser.parse_args(argv)
    if args.step is not None and args.run_dir is None:
        parser.error("--step needs --run-dir")
    if args.calibrate_moe_batches is not None and args.run_dir is None:
        parser.error("--calibrate-moe-batches needs --run-dir")
    if args.no_preprocessing and args.run_dir is None:
        parser.error("--no-preprocessing needs --run-dir")
    names = args.dense_names.split(",") if args.dense_names else None

    def body() -> int:
        options = QuantizationOptions(  # a flag combination it refuses is a one-line error too
            table_dtype=args.table_dtype,
            dense_dtype=args.dense_dtype,
            dynamic_int8_linear=args.dynamic_int8_linear,
            row_alignment=args.row_alignment,
        )
        return _export(args, options, names)

    return run_reporting_errors("rankmixer-export", args.verbose, body)


def _export(args: argparse.Namespace, options: Any, names: Optional[List[str]]) -> int:
    from torchrec_rankmixer.inference.export import export_model

    source_info: dict = {}
    if args.run_dir is not None:
        from torchrec_rankmixer.inference.from_run import export_from_run_dir

        result, ckpt = export_from_run_dir(
            args.run_dir, args.output, options, args.step, args.artifact, names,
            calibrate_moe_batches=args.calibrate_moe_batches,
            preprocessing=not args.no_preprocessing,
        )
        source_info = {"checkpoint": ckpt.path, "step": ckpt.step}
    else:
        result = export_model(args.checkpoint, args.output, options, args.artifact, names)
    meta = result.metadata
    print(json.dumps({
        **source_info,
        "path": result.path,
        "artifact": meta["artifact"],
        "fallback_reason": meta["fallback_reason"],
        "sizes_bytes": meta["sizes_bytes"],
    }, indent=2))
    return 0


def predict_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``rankmixer-predict``."""
    from torchrec_rankmixer.inference.predictor import Predictor

    parser = argparse.ArgumentParser(
        prog="rankmixer-predict",
        description="Score a CSV/Parquet file with an exported model. Columns: the sparse "
        "features (an id, a list of ids, or 'id|id|id'), the dense features, and "
        "passthrough columns.",
    )
    parser.add_argument("--model", required=True, help="export directory or model file")
    parser.add_argument("--input", required=True, help=".csv or .parquet file")
    parser.add_argument("--output", default=None, help=".csv or .parquet file for the scores")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--passthrough", default="", help="comma-separated columns to copy")
    parser.add_argument("--label-column", default=None, help="0/1 label column: report AUC")
    parser.add_argument("--verbose", action="store_true", help="print the traceback of an error")
    args = parser.parse_args(argv)
    passthrough = [c for c in args.passthrough.split(",") if c]

    def body() -> int:
        summary = Predictor(args.model).predict_file(
            args.input, args.output, args.batch_size, passthrough, args.label_column
        )
        print(json.dumps(summary, indent=2))
        return 0

    return run_reporting_errors("rankmixer-predict", args.verbose, body)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(export_main())
