"""The worker: the running loop and its core, with the rules, curation, HTTP, reports, CLI and
demo in sub-packages above it (imports run one way, from here up the list).

Start with ``loop`` (poll -> decode -> store -> checkpoint), then ``settings`` (one frozen
object) and ``app`` (settings wired to adapters). Beside the loop: ``tag_writer`` (tags back to
MLflow), ``maintenance`` (retention). Then ``rules/`` (which traces are candidates),
``curation/`` (candidates into dataset versions), ``serve/`` (``/metrics``, the dashboard),
``report/`` (rendering), ``cli/`` (the commands) and ``demo/``.
"""

from worker.loop import Worker
from worker.settings import Settings, load_settings

__all__ = ["Settings", "Worker", "load_settings"]
