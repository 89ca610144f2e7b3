"""The hotline home directory: its layout, its config file, its online key and its root documents.

    <home>/blocklist.yaml        settings (HotlineConfig), written by `blocklist init`
    <home>/store.sqlite          lists, entries, audit log (blocklist.store)
    <home>/keys/signing.key      the online key (Ed25519 private key, mode 0600)
    <home>/publish/              the static tree plugins sync from
    <home>/publish/root/<N>.json every root document, signed by the root keys
    <home>/fleet.sqlite          registered nodes and their verified polls (blocklist.nodes), mode 0600

The root private keys are never in the home: `blocklist init` writes them to a
directory beside it (default_root_dir), to be taken offline (blocklist.keys).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blocklist.core import atomic
from blocklist.core.errors import ConfigError
from blocklist.core.format.keys import key_id, load_private_key, private_key_bytes
from blocklist.core.format.root import Root, read_root

CONFIG_NAME = "blocklist.yaml"
MAX_EXPIRES_HOURS = 168  # a week: plugins refuse longer (limits.max_manifest_lifetime)


@dataclass(frozen=True)
class HotlineConfig:
    expires_hours: float = 24.0     # manifest lifetime: plugins call a list stale past it
    keep_versions: int = 10         # snapshots and deltas kept in publish/
    default_error_rate: float = 1e-6
    fleet_silent_seconds: int = 900  # `blocklist fleet` flags nodes silent this long

    def validate(self, where: str) -> HotlineConfig:
        if not 0 < self.expires_hours <= MAX_EXPIRES_HOURS:
            raise ConfigError(f"{where}: expires_hours must be in (0, {MAX_EXPIRES_HOURS}]")
        if not 1 <= self.keep_versions <= 10000:
            raise ConfigError(f"{where}: keep_versions must be in [1, 10000]")
        if not 0 < self.default_error_rate < 0.5:
            raise ConfigError(f"{where}: default_error_rate must be in (0, 0.5)")
        if self.fleet_silent_seconds < 1:
            raise ConfigError(f"{where}: fleet_silent_seconds must be positive")
        return self


class Home:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.config_path = root / CONFIG_NAME
        self.store_path = root / "store.sqlite"
        self.key_path = root / "keys" / "signing.key"
        self.publish_dir = root / "publish"
        self.fleet_path = root / "fleet.sqlite"
        self.roots_dir = self.publish_dir / "root"

    def default_root_dir(self) -> Path:
        """Where `blocklist init` puts the root keys unless told: beside the home, never inside it."""
        return self.root.parent / f"{self.root.name}-root-keys"

    def root_path(self, version: int) -> Path:
        return self.roots_dir / f"{version}.json"

    def root_version(self) -> int:
        """The newest root document's version; 0 for a home from before root keys."""
        versions = [int(p.stem) for p in self.roots_dir.glob("*.json") if p.stem.isdigit()]
        return max(versions, default=0)

    def current_root(self) -> tuple[Root, bytes]:
        """The newest root document and its bytes; ConfigError for a home from before root keys."""
        version = self.root_version()
        if not version:
            raise ConfigError(f"{self.root} has no root keys yet (it predates them): run `blocklist --home "
                              f"{self.root} init --root-dir DIR` once to create them (docs/OPERATIONS.md)")
        data = self.root_path(version).read_bytes()
        return read_root(data), data

    def exists(self) -> bool:
        return self.config_path.exists() and self.key_path.exists()

    def require(self) -> Home:
        if not self.exists():
            raise ConfigError(f"{self.root} is not a blocklist home: run `blocklist --home {self.root} init`")
        return self

    def init(self, config: HotlineConfig) -> bool:
        """Create the layout and a signing key; returns False if it already existed."""
        if self.exists():
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "keys").mkdir(mode=0o700, exist_ok=True)
        self.publish_dir.mkdir(exist_ok=True)
        if not self.key_path.exists():
            atomic.write_bytes(self.key_path, private_key_bytes(Ed25519PrivateKey.generate()), mode=0o600)
        if not self.config_path.exists():
            text = "# blocklist hotline settings (see `blocklist --help`)\n" + yaml.safe_dump(
                dataclasses.asdict(config), sort_keys=False)
            atomic.write_bytes(self.config_path, text.encode())
        return True

    def config(self) -> HotlineConfig:
        return load_config(self.config_path)

    def signing_key(self) -> Ed25519PrivateKey:
        try:
            mode = self.key_path.stat().st_mode & 0o777
            data = self.key_path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{self.key_path}: cannot read the signing key: {exc.strerror}") from None
        if mode & 0o077:
            raise ConfigError(f"{self.key_path}: mode {mode:o} lets others read the signing key; chmod 600 it")
        return load_private_key(data)

    def online_key(self) -> tuple[Ed25519PrivateKey, Root]:
        """The signing key and the newest root, which must name it as its online key."""
        root, _ = self.current_root()
        key = self.signing_key()
        if key_id(key.public_key()) not in root.online.keys:
            raise ConfigError(f"{self.key_path} is not the online key of root version {root.version}: an "
                              "interrupted `blocklist key rotate`? Run it again to finish it")
        return key, root


def load_config(path: Path) -> HotlineConfig:
    try:
        raw: Any = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    fields = {f.name: f for f in dataclasses.fields(HotlineConfig)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "expires_days":
            raise ConfigError(f"{path}: expires_days was replaced by expires_hours (default 24, at most "
                              f"{MAX_EXPIRES_HOURS}): edit the file")
        if key not in fields:
            raise ConfigError(f"{path}: unknown setting {key!r} (known: {', '.join(fields)})")
        want = float if fields[key].type in ("float", float) else int
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (want is int and not isinstance(value, int)):
            raise ConfigError(f"{path}: {key} must be a number")
        values[key] = want(value)
    return HotlineConfig(**values).validate(str(path))


def default_home() -> Path:
    env = os.environ.get("BLOCKLIST_HOME")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "blocklist"
