import sys
from pathlib import Path

# The workspace tests share small helpers in tests/_workspace.py (importlib import mode adds no paths).
sys.path.insert(0, str(Path(__file__).resolve().parent))
