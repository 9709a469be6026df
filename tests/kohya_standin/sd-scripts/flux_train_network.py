"""Stand-in for kohya-ss sd-scripts' flux_train_network.py (tests only; see _standin.py)."""
import sys

from _standin import main

sys.exit(main("flux_train_network.py"))
