"""Stand-in for kohya-ss sd-scripts' sd3_train_network.py (tests only; see _standin.py)."""
import sys

from _standin import main

sys.exit(main("sd3_train_network.py"))
