"""gankd.serve: runtime sessions over exported artifact folders and the Gradio demo.

Never imports gankd.distill or gankd.export: it reads manifest.json (``serve.manifest``, the one reader of the schema)
and the artifacts only, so a serving image needs no architecture code and no training dependencies. The runtimes
(``serve.backends``: onnxruntime, torch, ncnn, tensorrt) load when a Session needs them; ``auto`` (``serve.auto``)
serves the fastest verified one on this machine; ``serve.video`` runs videos through a Session.
``Session(artifact_dir)`` opens the session of the artifact's task: :class:`SRSession`, :class:`GenerateSession` or
:class:`FaceSession`.
"""

from .errors import OverBudget, ServeError
from .session import BACKENDS, FaceSession, GenerateSession, Session, SRSession

__all__ = ["BACKENDS", "FaceSession", "GenerateSession", "OverBudget", "SRSession", "ServeError", "Session"]
