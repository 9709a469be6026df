"""One Studio per mount: its config, the job store (the training package's), the list index and the GPU queue."""

from __future__ import annotations

from ..train.jobs import JobStore
from .config import StudioConfig
from .index import JobIndex
from .queue import Scheduler


class Studio:
    def __init__(self, config: StudioConfig) -> None:
        self.config = config
        self.store = JobStore(config.jobs_dir)
        self.index = JobIndex(self.store)
        self.scheduler = Scheduler(config, self.index)
