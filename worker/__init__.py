"""The worker: settings, the main loop, and the ``trace-curator`` command line.

Start with ``loop`` (poll -> decode -> store -> checkpoint), then ``settings`` (one frozen
object) and ``cli`` (the commands). ``app`` wires settings to adapters. ``rules`` decides tags,
``tag_writer`` writes them back; ``curation`` (pure) and ``curator`` build dataset versions
into ``dataset_sinks``; ``maintenance`` prunes.
"""

from worker.loop import Worker
from worker.settings import Settings, load_settings

__all__ = ["Settings", "Worker", "load_settings"]
