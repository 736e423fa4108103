import sys
from pathlib import Path

# The repository root holds the packages (golden, hw, sim, olmac): make them importable
# whether or not the project is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
