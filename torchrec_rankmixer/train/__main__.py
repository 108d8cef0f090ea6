"""``python -m torchrec_rankmixer.train``: same as ``rankmixer-train``."""

import sys

from torchrec_rankmixer.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
