"""``rankmixer-train`` / ``python -m torchrec_rankmixer.train``: the command line.

With no arguments it trains DLRM_RankMixer on the built-in synthetic data on CPU (a few
minutes on 2 cores) and prints the final metrics. Under ``torchrun`` the same command
trains on every process; see docs/training.md.
"""

import argparse
import logging
import warnings
from typing import List, Optional

import torch.distributed as dist

from torchrec_rankmixer.run_format import DamagedCheckpointWarning
from torchrec_rankmixer.train.config import load_config
from torchrec_rankmixer.utils.cli import run_reporting_errors

EPILOG = """examples:
  rankmixer-train
  rankmixer-train --config my.yaml --set model.rankmixer.d_model=128 --set optim.dense=adam
  rankmixer-train --train.steps 200 --data.batch_size 512
  torchrun --nproc_per_node 2 -m torchrec_rankmixer.train --set train.steps=300
"""


def parse_args(argv: Optional[List[str]]) -> tuple:
    """(config path, overrides) from ``--config``, ``--set k=v`` and ``--section.key value``
    (or ``--section.key=value``) flags."""
    parser = argparse.ArgumentParser(
        prog="rankmixer-train", description=__doc__.split("\n\n")[0], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML or JSON settings file")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one setting (repeatable)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved settings and exit")
    parser.add_argument("--verbose", action="store_true",
                        help="keep TorchRec's planner logs and library warnings")
    parser.add_argument("--upgrade-run", metavar="RUN_DIR",
                        help="upgrade a run directory written by torchrec-rankmixer 0.1 (spec.json, "
                             "checkpoint keys) so it exports and resumes, then exit")
    args, rest = parser.parse_known_args(argv)
    overrides = list(args.set)
    i = 0
    while i < len(rest):
        flag = rest[i]
        if not flag.startswith("--") or "." not in flag:
            parser.error(f"unrecognized argument {flag!r} (settings look like --section.key VALUE)")
        if "=" in flag:
            overrides.append(flag[2:])
            i += 1
        elif i + 1 < len(rest):
            overrides.append(f"{flag[2:]}={rest[i + 1]}")
            i += 2
        else:
            parser.error(f"{flag} needs a value")
    return args.config, overrides, args.print_config, args.verbose, args.upgrade_run


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the process exit code (2 with one line on any error)."""
    path, overrides, print_only, verbose, upgrade = parse_args(argv)
    return run_reporting_errors("rankmixer-train", verbose,
                                lambda: _run(path, overrides, print_only, verbose, upgrade))


def _run(path: Optional[str], overrides: List[str], print_only: bool, verbose: bool, upgrade: Optional[str]) -> int:
    if upgrade is not None:
        from torchrec_rankmixer.train.upgrade import upgrade_run_dir

        written = upgrade_run_dir(upgrade)
        print(f"upgraded {upgrade}: wrote {len(written)} files and checkpoints")
        return 0
    cfg = load_config(path, overrides)
    if print_only:
        import yaml

        from torchrec_rankmixer.utils.settings import to_dict

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    if not verbose:  # TorchRec's planner and deprecation notices drown the progress bar
        for category in (FutureWarning, UserWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("always", category=DamagedCheckpointWarning)  # the user must see these
        for name in ("", "torchrec", "torch.fx._symbolic_trace", "torch.distributed"):
            logging.getLogger(name).setLevel(logging.ERROR)
    from torchrec_rankmixer.train.loop import Trainer, format_table

    summary = Trainer(cfg).fit()
    if dist.get_rank() == 0:
        print(format_table(summary))
    dist.barrier()  # every rank past its last collective before any tears the group down
    dist.destroy_process_group()
    return 0
