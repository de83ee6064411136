"""`automodel migrate`: a NeMo AutoModel config file written out in our spelling."""

from __future__ import annotations

from typing import Any

from .._errors import ConfigError
from ._aliases import looks_like_nemo
from ._translate import Translation, translate


def migrated_yaml(translation: Translation, source: str) -> str:
    """Our spelling of a translated config, with `# was ...` on every line that changed."""
    import yaml

    out = [f"# Migrated from NeMo AutoModel config {source} by `automodel migrate`."]
    if translation.recipe:
        out.append(
            f"# Run it with: automodel {translation.recipe.replace('.', ' ')} -c <this file>"
        )
    for note in translation.notes:
        out.append(f"# note: {note}")

    def scalar(value: Any) -> str:
        return (
            yaml.safe_dump(value, default_flow_style=True, width=10**9)
            .strip()
            .removesuffix("...")
            .strip()
        )

    def emit(node: Any, path: str, indent: int, key: str, dash: bool = False) -> None:
        pad = " " * indent
        lead = pad[:-2] + "- " if dash else pad
        comment = translation.changed.get(path)
        tail = f"  # {comment}" if comment else ""
        if isinstance(node, dict) and node:
            out.append(f"{lead}{key}:{tail}")
            for k, v in node.items():
                emit(v, f"{path}.{k}", indent + 2, k)
        elif isinstance(node, list) and any(isinstance(v, dict | list) for v in node):
            out.append(f"{lead}{key}:{tail}")
            for i, item in enumerate(node):
                if not isinstance(item, dict) or not item:
                    raise ConfigError(f"{path}.{i}: cannot write this list item; migrate by hand")
                for j, (k, v) in enumerate(item.items()):
                    emit(v, f"{path}.{i}.{k}", indent + 4, k, dash=j == 0)
        else:
            out.append(f"{lead}{key}: {scalar(node)}{tail}")

    for k, v in translation.data.items():
        out.append("")
        emit(v, k, 0, k)
    return "\n".join(out) + "\n"


def migrate(path: str) -> str:
    """The YAML `automodel migrate` prints for a NeMo AutoModel config file."""
    from .._yaml import load_yaml_file

    data, lines = load_yaml_file(path)
    where = {key: f"{path}:{line}" for key, line in lines.items()}
    if not looks_like_nemo(data):
        raise ConfigError(
            f"{path} is not a NeMo AutoModel config (no recipe: key and no nemo_automodel "
            "target); it needs no migration"
        )
    return migrated_yaml(translate(data, where, path), path)
