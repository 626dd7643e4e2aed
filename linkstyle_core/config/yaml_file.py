"""Reading a config file: UTF-8 YAML whose mappings name every key once."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import yaml

from linkstyle_core.config.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    silently keeps the last value, so a pasted second ``data:`` section would win unseen)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the safe loader's own error says so
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (lines {first} and {line}); keep "
                    "one of them", key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-untyped-call]


def read_yaml(path: Path) -> Any:
    """The YAML document at ``path``: UTF-8 text, duplicate keys refused (``ConfigError``)."""
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; pass a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror}); check its "
                          "permissions") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} "
                          f"on line {line}); save it with UTF-8 encoding") from None
    stream = io.StringIO(text)
    stream.name = str(path)  # YAML error marks then name the file instead of "<unicode string>"
    try:
        return yaml.load(stream, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
