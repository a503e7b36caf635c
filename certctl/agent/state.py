"""What the agent keeps on disk between runs: its id and its credential (0600), in a 0700 directory."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class AgentState:
    directory: Path
    agent_id: str | None = None
    retired: bool = False

    @classmethod
    def load(cls, directory: Path) -> AgentState:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        path = directory / "state.json"
        if not path.exists():
            return cls(directory)
        data = json.loads(path.read_text())
        return cls(directory, agent_id=data.get("agent_id"), retired=bool(data.get("retired")))

    def save(self) -> None:
        write_private(self.directory / "state.json",
                       json.dumps({"agent_id": self.agent_id, "retired": self.retired}).encode())

    @property
    def credential(self) -> str | None:
        path = self.directory / "credential"
        return path.read_text().strip() or None if path.exists() else None

    def save_credential(self, key: str) -> None:
        write_private(self.directory / "credential", key.encode() + b"\n")


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` atomically with a 0600 file holding `data` (written and synced before the rename)."""
    temp = path.with_name(path.name + ".tmp")
    temp.unlink(missing_ok=True)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
