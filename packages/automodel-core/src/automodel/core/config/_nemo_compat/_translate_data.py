"""The translator's data passes: their loaders, their samplers and their datasets' tokenizers."""

from __future__ import annotations

from ._aliases import _COLLATER, _LOADER, TARGET_KEY
from ._translator_base import _TranslatorBase

_TORCH_LOADER = "torch.utils.data.DataLoader"
_STACK = "torch.utils.data.default_collate"
_TOKENIZER = "automodel.core.models.load_tokenizer"
_PROCESSOR = "automodel.core.models.load_processor"
_WINDOWS = "automodel.core.data.indexed_dataset"  # their MegatronPretraining, translated
# their Gemma 4 collate: their default one, with Gemma 4's empty thinking channel (no loss on
# it) after every model-turn marker, i.e. at the start of every answer
GEMMA4_COLLATER = "nemo_automodel.components.datasets.vlm.collate_fns.gemma4_prefix_collate_fn"
GEMMA4_THINKING = "<|channel>thought\n<channel|>"


class _DataPasses(_TranslatorBase):
    def vlm_collators(self) -> None:
        """Their Gemma 4 collate as our `collate.assistant_prefix` (run before the targets:
        the collate target is dropped there). One collate serves training and validation."""
        prefixes = {}
        for name in ("dataloader", "validation_dataloader"):
            node = self.data.get(name)
            collate = node.get("collate_fn") if isinstance(node, dict) else None
            if isinstance(collate, dict) and TARGET_KEY in collate:
                prefixes[name] = GEMMA4_THINKING if collate[TARGET_KEY] == GEMMA4_COLLATER else None
        if GEMMA4_THINKING not in prefixes.values():
            return
        if len(set(prefixes.values())) > 1:
            self.fail(
                "validation_dataloader.collate_fn",
                "training and validation batches are made by one collate here; give both "
                "loaders the same collate_fn",
            )
            return
        self.section("collate")["assistant_prefix"] = GEMMA4_THINKING
        self.moved_collators.update(prefixes)  # their collate is the collate: section now
        where = next(iter(prefixes))
        self.move(f"{where}.collate_fn", "collate.assistant_prefix", "was gemma4_prefix_collate_fn: Gemma 4's empty thinking channel before every answer, with no loss on it")  # fmt: skip

    def collate_padding(self) -> None:
        """Their default_collater's `pad_seq_len_divisible` is the loader's `pad_to_multiple_of`
        here (run before the targets, which drop that collate's target)."""
        for name in ("dataloader", "validation_dataloader"):
            node = self.data.get(name)
            collate = node.get("collate_fn") if isinstance(node, dict) else None
            if not isinstance(collate, dict) or collate.get(TARGET_KEY) != _COLLATER:
                continue
            if "pad_seq_len_divisible" in collate:
                node["pad_to_multiple_of"] = collate.pop("pad_seq_len_divisible")
                self.move(f"{name}.collate_fn.pad_seq_len_divisible", f"{name}.pad_to_multiple_of")

    def processor_keys(self) -> None:
        """Their `processor:` without a target: keys for their AutoProcessor of the model's own
        processor; `padding_side: right` is how batches are padded here already."""
        node = self.data.get("processor")
        if not isinstance(node, dict) or TARGET_KEY in node:
            return
        side = node.pop("padding_side", "right")
        if side != "right":
            self.fail("processor.padding_side", "batches are padded on the right here (training positions count from each row's start)")  # fmt: skip
        if not node:
            del self.data["processor"]
            self.note("processor", "dropped: the model's own processor, padded on the right")
            return
        node[TARGET_KEY] = _PROCESSOR
        node.setdefault(
            "path_or_name", node.pop("pretrained_model_name_or_path", self.model_path())
        )
        self.changed["processor"] = "their processor keys, for the model's own processor"

    def loaders(self) -> None:
        self.processor_keys()
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
        model_name = self.model_path()
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

    def model_path(self) -> str | None:
        """The model's `pretrained_model_name_or_path` (where its tokenizer and processor are)."""
        model = self.data.get("model")
        return model.get("pretrained_model_name_or_path") if isinstance(model, dict) else None

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
