"""Stand-in for kohya-ss sd-scripts' train_network.py (tests only; see _standin.py)."""
import sys

from _standin import main

sys.exit(main("train_network.py"))
