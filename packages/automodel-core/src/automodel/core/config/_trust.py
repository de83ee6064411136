"""What a config may reach: the callables it may name, the ones it never may, and remote code.

A config is data someone may have downloaded, so it can only name the callables a recipe
needs. Patterns are dotted paths matched segment by segment: `*` matches within one segment,
`**` any number of segments. Only the command line (`--allow-import`, `--trust-remote-code`)
or the user's environment (`AUTOMODEL_ALLOW_IMPORTS`) extends what a config may do.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import Problem
from ._node import ConfigMeta, locate

ALLOW_FLAG = "--allow-import"
REMOTE_CODE_FLAG = "--trust-remote-code"
ALLOW_ENV = "AUTOMODEL_ALLOW_IMPORTS"  # comma- or space-separated, the user's standing grant
ALLOW_LIST_DOC = "docs/config.md#what-a-config-may-call"

_FROM_HUB = ("from_pretrained", "from_config")
DEFAULT_ALLOWED_TARGETS: tuple[str, ...] = (
    # optimizers and LR schedulers
    "torch.optim.**",
    "transformers.get_*schedule*",
    "automodel.core.optim.*",
    # nn modules and losses
    "torch.nn.**",
    "automodel.core.losses.*",
    # data and dataloaders
    "torch.utils.data.*",
    "torchdata.stateful_dataloader.*",
    "datasets.load_dataset",
    "datasets.load_from_disk",
    "datasets.concatenate_datasets",
    "datasets.interleave_datasets",
    "datasets.Dataset.from_*",
    "transformers.DataCollator*",
    "automodel.core.data.*",
    # models, configs, tokenizers and processors, with their loaders
    *(
        pattern
        for cls in (
            "transformers.Auto*",
            "transformers.*Config",
            "transformers.models.*.configuration_*.*Config",
            "transformers.*For*",
            "transformers.*Model",
            "transformers.*Tokenizer*",
            "transformers.*Processor",
            "automodel.core.models.AutoModelForCausalLM",
            "automodel.core.models.AutoModelForImageTextToText",
            "automodel.core.models.AutoModel",
            "automodel.core.models.AutoModelForSequenceClassification",
        )
        for pattern in (cls, *(f"{cls}.{method}" for method in _FROM_HUB))
    ),
    "transformers.AutoConfig.for_model",
    "automodel.core.models.*",
    # automodel's component configs
    "automodel.peft.LoraConfig",
    "automodel.moe.MoEConfig",
)

_RUNS_CODE = "runs code or commands of the config's choosing"
_UNPICKLES = "unpickles a file, which can run any code"
REFUSED_TARGETS: Mapping[str, str] = {
    "torch.hub.**": "downloads and runs code from a repository (hubconf.py)",
    "torch.load": _UNPICKLES,
    "torch.save": "writes a file wherever the config says",
    "torch.serialization.**": "reads and writes pickled files",
    "torch.utils.cpp_extension.**": "compiles and loads C++ code",
    "torch.ops.**": "loads shared libraries (torch.ops.load_library) and calls raw operators",
    "torch.classes.**": "loads shared libraries",
    "torch.library.**": "defines and overrides operators",
    "torch.package.**": "imports code from a package file",
    "torch.jit.load": "loads a serialized program",
    "torch.jit.save": "writes a file wherever the config says",
    "torch.export.load": "loads a serialized program",
    "torch.export.save": "writes a file wherever the config says",
    "torch.utils.model_zoo.**": "downloads and unpickles files",
    "torch.distributed.checkpoint.**": "reads pickled metadata and writes files",
    "transformers.dynamic_module_utils.**": "imports code from a model repository",
    "transformers.pipeline": "may load code from a model repository",
    "**.push_to_hub": "uploads to the Hugging Face Hub",
    "**.save_pretrained": "writes files wherever the config says",
    "builtins.eval": _RUNS_CODE,
    "builtins.exec": _RUNS_CODE,
    "builtins.compile": _RUNS_CODE,
    "builtins.open": "reads and writes any file",
    "os.system": _RUNS_CODE,
    "posix.**": _RUNS_CODE,  # where os.system and friends are defined
    "nt.**": _RUNS_CODE,
    "os.popen": _RUNS_CODE,
    "os.exec*": _RUNS_CODE,
    "os.spawn*": _RUNS_CODE,
    "os.posix_spawn*": _RUNS_CODE,
    "subprocess.**": _RUNS_CODE,
    "pty.**": _RUNS_CODE,
    "runpy.**": _RUNS_CODE,
    "code.**": _RUNS_CODE,
    "importlib.**": "imports any module",
    "ctypes.**": "loads shared libraries",
    "pickle.**": _UNPICKLES,
    "marshal.**": "loads compiled code",
    "shelve.**": _UNPICKLES,
    "dill.**": _UNPICKLES,
    "joblib.load": _UNPICKLES,
    "numpy.load": "unpickles files (allow_pickle)",
    "pandas.read_pickle": _UNPICKLES,
}


def _segments_match(pattern: list[str], path: list[str]) -> bool:
    if not pattern:
        return not path
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_segments_match(rest, path[i:]) for i in range(len(path) + 1))
    return bool(path) and fnmatch.fnmatchcase(path[0], head) and _segments_match(rest, path[1:])


def matches(pattern: str, path: str) -> bool:
    """Whether dotted `path` fits `pattern` (`*` within a segment, `**` any segments)."""
    return _segments_match(pattern.split("."), path.split("."))


def _specificity(pattern: str) -> int:
    return sum(1 for part in pattern.split(".") if part != "**")


def grant_pattern(entry: str) -> str:
    """A user's `--allow-import` entry as a pattern: the name and everything below it."""
    return entry if entry.endswith("**") else f"{entry}.**"


def parse_grants(text: str) -> list[str]:
    """The entries of a comma- or space-separated list such as AUTOMODEL_ALLOW_IMPORTS."""
    return [part for part in text.replace(",", " ").split() if part]


@dataclass(frozen=True)
class Verdict:
    """Whether a config may call a path, and if not, why."""

    allowed: bool
    refused_because: str | None = None  # a known code-loading entry point, and what it does


def judge(path: str, granted: Iterable[str] = ()) -> Verdict:
    """May a config call `path`? A refused entry point stays refused unless a grant names the
    path itself or is more specific than the refusal (`torch.hub.load` lifts `torch.hub.**`)."""
    grants = [grant_pattern(g) for g in granted]
    refusals = [(p, why) for p, why in REFUSED_TARGETS.items() if matches(p, path)]
    if refusals:
        pattern, why = max(refusals, key=lambda r: _specificity(r[0]))
        depth, needed = len(path.split(".")), _specificity(pattern)
        lifted = any(
            matches(g, path) and (_specificity(g) > needed or _specificity(g) >= depth)
            for g in grants
        )
        return Verdict(True) if lifted else Verdict(False, why)
    allowed = any(matches(p, path) for p in (*DEFAULT_ALLOWED_TARGETS, *grants))
    return Verdict(allowed)


def canonical_name(obj: Any) -> str | None:
    """Where a callable is defined (`module.qualname`), to see through re-exports; None if unknown."""
    target = getattr(obj, "__func__", obj)  # a bound method or classmethod: its function
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    return f"{module}.{qualname}"


_REMOTE_CODE = "would run Python code from the model's repository"


def _remote_code_settings(data: Any, path: str = "") -> list[tuple[str, str]]:
    """(key, what it does) for every setting below `data` that runs code from a Hub repository.

    `trust_remote_code` (any value but false/null), `use_kernels: true` and an
    `attn_implementation` naming a Hub kernel repository (`org/name`).
    """
    found: list[tuple[str, str]] = []
    if isinstance(data, Mapping):
        items: Iterable[tuple[Any, Any]] = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return found
    for key, value in items:
        full = f"{path}.{key}" if path else str(key)
        if key == "trust_remote_code" and value not in (False, None):
            found.append((full, _REMOTE_CODE))
        elif key == "use_kernels" and value not in (False, None):
            found.append((full, "would download and run kernels from the Hugging Face Hub"))
        elif key == "attn_implementation" and isinstance(value, str) and "/" in value:
            found.append((full, f"would download and run the Hub kernel '{value}'"))
        else:
            found += _remote_code_settings(value, full)
    return found


def remote_code_problems(data: Any, meta: ConfigMeta, path: str = "") -> list[Problem]:
    """One problem per remote-code setting below `data` (at `path`), unless the caller granted
    remote code; each says where it was set and how to allow it."""
    if meta.trust_remote_code:
        return []
    return [
        Problem(
            key,
            f"{what}; a config cannot allow that by itself. If you trust the repository, add "
            f"{REMOTE_CODE_FLAG} to the command line",
            locate(meta.where, key, meta.file),
        )
        for key, what in _remote_code_settings(data, path)
    ]
