"""The translator's data passes: their loaders, their samplers and their datasets' tokenizers."""

from __future__ import annotations

from ._aliases import _LOADER, TARGET_KEY
from ._translator_base import _TranslatorBase

_TORCH_LOADER = "torch.utils.data.DataLoader"
_STACK = "torch.utils.data.default_collate"
_TOKENIZER = "automodel.core.models.load_tokenizer"
_WINDOWS = "automodel.core.data.indexed_dataset"  # their MegatronPretraining, translated


class _DataPasses(_TranslatorBase):
    def loaders(self) -> None:
        self.dataset_tokenizers()
        for name in ("dataloader", "validation_dataloader"):
            node = self.data.get(name)
            if not isinstance(node, dict):
                continue
            target = node.get(TARGET_KEY)
            if target is not None:
                if target not in (_LOADER, _TORCH_LOADER):
                    self.fail(
                        f"{name}.{TARGET_KEY}",
                        f"{name} is built here from plain keys; '{target}' cannot be used (drop _target_)",
                    )
                    continue
                del node[TARGET_KEY]
                self.changed[name] = f"was _target_: {target}"
                # their loaders neither shuffle nor drop the last batch unless told
                for key, value in (("shuffle", False), ("drop_last", False)):
                    if key not in node:
                        node[key] = value
                        self.changed[f"{name}.{key}"] = "their loader's default, written out"
            self.megatron_sampler(name, node)
            collate = node.get("collate_fn")
            if collate == _STACK and self.windows(name):
                del node["collate_fn"]  # rows of one length: our collate stacks them the same
                self.note(name, f"collate_fn: {_STACK} dropped (the rows are of one length)")
            if isinstance(collate, dict) and not collate:  # default_collater, its target dropped
                del node["collate_fn"]
                if name not in self.moved_collators:  # a retrieval collator says so itself
                    said = self.changed.get(name)
                    default = "default_collater is the default collate"
                    self.changed[name] = f"{said}; {default}" if said else default

    def dataset_tokenizers(self) -> None:
        """Their dataset's own `tokenizer:` (it tokenizes with that one): the run's tokenizer
        here, which the recipe hands to every dataset."""
        model = self.data.get("model")
        model_name = model.get("pretrained_model_name_or_path") if isinstance(model, dict) else None
        for name in ("dataset", "validation_dataset"):
            node = self.data.get(name)
            theirs = node.pop("tokenizer", None) if isinstance(node, dict) else None
            if not isinstance(theirs, dict):
                continue
            wanted = theirs.get("path_or_name", theirs.get("pretrained_model_name_or_path"))
            top = self.data.get("tokenizer")
            ours = top.get("path_or_name") if isinstance(top, dict) else model_name
            if wanted is None or wanted == ours:
                self.note(name, "tokenizer dropped (the run's tokenizer is the same one)")
            elif isinstance(top, dict):
                self.fail(
                    f"{name}.tokenizer",
                    f"{name} tokenizes with {wanted!r} but tokenizer: is {ours!r}; datasets "
                    "here use the run's one tokenizer, so give one",
                )
            else:
                self.data["tokenizer"] = {TARGET_KEY: _TOKENIZER, "path_or_name": wanted}
                self.move(f"{name}.tokenizer", "tokenizer", f"was {name}.tokenizer")

    def windows(self, loader: str) -> bool:
        """Whether the loader's dataset is Megatron token windows (rows of one length)."""
        dataset = self.data.get(loader.replace("dataloader", "dataset"))
        return isinstance(dataset, dict) and dataset.get(TARGET_KEY) == _WINDOWS

    def megatron_sampler(self, name: str, node: dict) -> None:
        """Their `dataloader_type` (Megatron's samplers): `single` reads every sample once per
        epoch in the dataset's order, `cyclic` in a new random order each epoch."""
        kind = node.pop("dataloader_type", None)
        if kind is None:
            return
        if kind == "single":
            self.note(name, "dataloader_type: single dropped (each sample once, in order)")
        elif kind == "cyclic":
            node["shuffle"] = True
            self.changed[f"{name}.shuffle"] = "was dataloader_type: cyclic (a new order each epoch)"
        else:
            self.fail(f"{name}.dataloader_type", f"dataloader_type {kind!r}: use single or cyclic")
