"""A workspace: one folder holding a project's database, image cache, models and exports.

Paths are derived here and nowhere else, so every part of the app agrees on where things live.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from data.schema import LabelSchema, default_schema, load_schema
from data.store import ProjectStore

ENV_WORKSPACE = "CARGROUP_WORKSPACE"
DEFAULT_WORKSPACE = "workspace"
CONFIG_FILE = "config.json"


def default_workspace_dir() -> Path:
    """``$CARGROUP_WORKSPACE`` if set, else ``./workspace``."""
    return Path(os.environ.get(ENV_WORKSPACE) or DEFAULT_WORKSPACE)


@dataclass
class WorkspaceConfig:
    """Per-workspace settings, kept in ``config.json`` next to the database."""

    cache_size: int = 128            # side of the square uint8 cache images (training resolution)
    schema_file: str | None = None   # optional JSON with the project's own class lists
    optional_aliases: bool = False   # map e.g. silver->gray
    split_fractions: dict[str, float] = field(
        default_factory=lambda: {"train": 0.7, "val": 0.1, "test": 0.2})
    seed: int = 0
    # Label page: pre-select the model's answer for a head only at or above this probability
    # ({head: threshold}; heads not listed use core.labeling.DEFAULT_PREFILL_THRESHOLD).
    prefill_thresholds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "WorkspaceConfig":
        if not path.exists():
            return cls()
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2), encoding="utf-8")
        os.replace(tmp, path)


class Workspace:
    """Filesystem layout of one project."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_workspace_dir()
        self.root = self.root.expanduser().resolve()

    @property
    def exists(self) -> bool:
        return self.db_path.exists()

    @property
    def db_path(self) -> Path:
        return self.root / "project.db"

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def pools_dir(self) -> Path:
        """Where extracted archives and generated demo images are kept."""
        return self.root / "pools"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    @cached_property
    def config(self) -> WorkspaceConfig:
        return WorkspaceConfig.load(self.config_path)

    @cached_property
    def schema(self) -> LabelSchema:
        cfg = self.config
        if cfg.schema_file:
            path = Path(cfg.schema_file)
            if not path.is_absolute():
                path = self.root / path
            return load_schema(path)
        return default_schema(optional_aliases=cfg.optional_aliases)

    def init(self, config: WorkspaceConfig | None = None) -> "Workspace":
        """Create the folders, config and database (idempotent)."""
        for d in (self.root, self.cache_dir, self.pools_dir, self.models_dir,
                  self.exports_dir, self.jobs_dir):
            d.mkdir(parents=True, exist_ok=True)
        if config is not None or not self.config_path.exists():
            (config or WorkspaceConfig()).save(self.config_path)
            self.__dict__.pop("config", None)
            self.__dict__.pop("schema", None)
        ProjectStore(self.db_path).close()
        return self

    def store(self) -> ProjectStore:
        if not self.exists:
            self.init()
        return ProjectStore(self.db_path)
