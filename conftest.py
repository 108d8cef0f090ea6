"""Make the checkout's package win over any installed copy when pytest runs from here."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
