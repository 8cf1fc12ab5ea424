"""gankd.serve: runtime sessions over exported artifact folders and the Gradio demo.

Never imports gankd.distill or gankd.export: it reads manifest.json and the artifacts only, so a serving image
needs no architecture code and no training dependencies. torch and onnxruntime load when a Session needs them.
"""

from .errors import OverBudget, ServeError
from .session import BACKENDS, Session

__all__ = ["BACKENDS", "OverBudget", "ServeError", "Session"]
