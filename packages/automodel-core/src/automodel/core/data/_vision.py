"""Image-text conversations for vision-language models: rows read once, images decoded on access.

A row is a conversation in the OpenAI message format whose user turns mix image and text parts:

    {"messages": [{"role": "user", "content": [{"type": "image", "image": "img/0.png"},
                                               {"type": "text", "text": "what colour is it?"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]}

An image part names a file (relative to a local JSON(L) file's folder, or absolute), or, with no
`image` key, takes the next image of the row's `images` column (a `datasets` Image feature, as
in parquet files, or paths). `image_qa_dataset` reads visual question answering rows instead
(an image, a question and an answer column) as one-turn conversations. Images are decoded by PIL
when an item is read, so the dataloader's workers do it and a dataset never holds them all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ._errors import DataError
from ._loading import JsonRows, load_rows, require_columns

VISION_INSTALL = "pip install 'automodel-core[vision]'"
ANSWER_FORMATS = ("text", "donut")


class ImageChatDataset(Dataset):
    """Conversations with images; an item is {"messages": [...], "images": [PIL RGB images]},
    image parts reduced to {"type": "image"} in the order of `images`."""

    def __init__(
        self,
        rows: Any,
        messages_column: str,
        images_column: str,
        base: Path | None,
        source: str,
        qa: QAColumns | None = None,
    ):
        self.rows, self.source, self.base = rows, source, base
        self.messages_column, self.images_column = messages_column, images_column
        self.has_images_column = images_column in rows.column_names
        self.qa = qa  # rows are VQA (an image, a question, an answer), not chats

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        if self.qa is not None:
            messages, refs = self.qa.conversation(row, index, self.source)
        else:
            messages, refs = _split_images(row[self.messages_column], index, self.source)
        supplied = list(row.get(self.images_column) or []) if self.has_images_column else []
        images = []
        for ref in refs:
            if ref is None:  # the next image of the row's images column
                if not supplied:
                    raise DataError(
                        f"{self.source}: sample {index}: an image part names no file and the "
                        f"row's '{self.images_column}' column has no image left for it"
                    )
                ref = supplied.pop(0)
            images.append(_decode(ref, self.base, index, self.source))
        return {"messages": messages, "images": images}


def image_chat_dataset(
    path: str | Path,
    split: str = "train",
    *,
    messages_column: str = "messages",
    images_column: str = "images",
    name: str | None = None,
    cache_dir: str | None = None,
    shuffle_seed: int | None = None,
) -> ImageChatDataset:
    """Image-text conversations (OpenAI format) from a local JSON(L) file or any `datasets`
    source; every image file a local file names is checked to exist before training starts."""
    _require_pil()
    rows = load_rows(path, split, name=name, cache_dir=cache_dir, shuffle_seed=shuffle_seed)
    source = f"image_chat_dataset({path}, split={split})"
    require_columns(rows, [messages_column], source)
    base = _folder_of(path)
    if isinstance(rows, JsonRows):  # cheap to check whole: text only
        refs = (
            (index, ref)
            for index, messages in enumerate(rows[messages_column])
            for ref in _split_images(messages, index, source)[1]
        )
        _check_files(refs, base, source)
    return ImageChatDataset(rows, messages_column, images_column, base, source)


def image_qa_dataset(
    path: str | Path,
    split: str = "train",
    *,
    image_column: str = "image",
    question_column: str = "question",
    answer_column: str = "answer",
    question: str | None = None,
    answer_format: str = "text",
    name: str | None = None,
    cache_dir: str | None = None,
    shuffle_seed: int | None = None,
) -> ImageChatDataset:
    """Visual question answering rows (an image, a question, an answer) as one-turn
    conversations: the user sends the image and the question, the assistant the answer.

    `question` asks the same question of every row (captioning, classification; the rows then
    need no question column). `answer_format: donut` reads the answer column as a document
    parse (JSON with `gt_parse`, as CORD-v2 and other Donut-style datasets ship) and writes it
    as Donut's tags: `{"menu": [{"nm": "tea"}]}` is `<s_menu><s_nm>tea</s_nm></s_menu>`."""
    _require_pil()
    if answer_format not in ANSWER_FORMATS:
        raise DataError(f"answer_format must be one of {', '.join(ANSWER_FORMATS)}, got {answer_format!r}")  # fmt: skip
    rows = load_rows(path, split, name=name, cache_dir=cache_dir, shuffle_seed=shuffle_seed)
    source = f"image_qa_dataset({path}, split={split})"
    qa = QAColumns(image_column, None if question else question_column, question, answer_column, answer_format)  # fmt: skip
    columns = [c for c in (image_column, qa.question_column, answer_column) if c]
    require_columns(rows, columns, source)
    if not isinstance(rows, JsonRows) and type(rows.features[image_column]).__name__ == "Image":
        import datasets

        rows = rows.cast_column(image_column, datasets.Image(decode=False))  # decoded on read
    base = _folder_of(path)
    if isinstance(rows, JsonRows):
        _check_files(enumerate(rows[image_column]), base, source)
    return ImageChatDataset(rows, "", "", base, source, qa=qa)


@dataclass(frozen=True)
class QAColumns:
    """Where a VQA row keeps its image, question (or the one question asked of every row) and
    answer, and how the answer is written."""

    image_column: str
    question_column: str | None
    question: str | None
    answer_column: str
    answer_format: str

    def conversation(self, row: dict, index: int, source: str) -> tuple[list[dict], list[Any]]:
        """(the user's image and question, then the answer; the row's image reference)."""
        question = self.question if self.question_column is None else row[self.question_column]
        answer = row[self.answer_column]
        if self.answer_format == "donut":
            answer = donut_tags(_document_parse(answer, index, source))
        user = [{"type": "image"}, {"type": "text", "text": str(question)}]
        messages = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": [{"type": "text", "text": str(answer)}]},
        ]
        return messages, [row[self.image_column]]


def donut_tags(value: Any) -> str:
    """A JSON value as Donut's token sequence: a mapping's keys in reverse sorted order, each as
    `<s_key>value</s_key>`, list items joined by `<sep/>`, `{"text_sequence": t}` as `t`."""
    if isinstance(value, dict):
        if list(value) == ["text_sequence"]:
            return str(value["text_sequence"])
        return "".join(f"<s_{k}>{donut_tags(value[k])}</s_{k}>" for k in sorted(value, reverse=True))  # fmt: skip
    if isinstance(value, list):
        return "<sep/>".join(donut_tags(item) for item in value)
    return str(value)


def _document_parse(value: Any, index: int, source: str) -> Any:
    """The parse of a Donut-style ground truth (`{"gt_parse": ...}`, or the first of
    `gt_parses`), given as JSON text or already decoded."""
    try:
        truth = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as e:
        raise DataError(f"{source}: sample {index}: the answer is not JSON ({e})") from None
    if isinstance(truth, dict) and isinstance(truth.get("gt_parses"), list) and truth["gt_parses"]:
        return truth["gt_parses"][0]
    if isinstance(truth, dict) and "gt_parse" in truth:
        return truth["gt_parse"]
    raise DataError(
        f"{source}: sample {index}: answer_format donut needs a JSON object with 'gt_parse' (or "
        "'gt_parses'), as Donut-style datasets write their ground truth"
    )


def _split_images(messages: Any, index: int, source: str) -> tuple[list[dict], list[Any]]:
    """(messages with image parts reduced to {"type": "image"}, each image's reference)."""
    if not (
        isinstance(messages, list)
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)
    ):
        raise DataError(
            f"{source}: sample {index}: expected a list of messages like "
            f'{{"role": "user", "content": [...]}}; got {str(messages)[:200]}'
        )
    out, refs = [], []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "image":
                    refs.append(part.get("image") or part.get("path"))
                    parts.append({"type": "image"})
                elif kind == "text":
                    parts.append({"type": "text", "text": part.get("text", "")})
                else:
                    raise DataError(
                        f"{source}: sample {index}: a content part must be "
                        f'{{"type": "image", ...}} or {{"type": "text", ...}}; got {str(part)[:200]}'
                    )
            content = parts
        out.append({**message, "content": content})
    for ref in refs:
        if isinstance(ref, str) and ref.startswith(("http://", "https://")):
            raise DataError(
                f"{source}: sample {index}: image {ref!r} is a URL; images are read from files "
                "(download them and name the files)"
            )
    return out, refs


def _folder_of(path: str | Path) -> Path | None:
    """The folder relative image paths start from: a local file's own folder."""
    local = Path(path).expanduser()
    return local.parent if local.is_file() else None


def _check_files(refs: Iterable[tuple[int, Any]], base: Path | None, source: str) -> None:
    """Raise a DataError naming the first (sample, file) whose image file does not exist."""
    for index, ref in refs:
        if isinstance(ref, str) and not _resolve(ref, base).is_file():
            raise DataError(
                f"{source}: sample {index}: image file not found: {_resolve(ref, base)}"
            )


def _resolve(ref: str, base: Path | None) -> Path:
    path = Path(ref).expanduser()
    return path if path.is_absolute() or base is None else base / path


def _decode(ref: Any, base: Path | None, index: int, source: str) -> Any:
    """A PIL RGB image from a path, a PIL image, or a `datasets` image dict (bytes or path)."""
    from PIL import Image

    if isinstance(ref, Image.Image):
        return ref.convert("RGB")
    if isinstance(ref, dict) and ref.get("bytes") is not None:
        import io

        file: Any = io.BytesIO(ref["bytes"])
        shown = ref.get("path") or "<bytes>"
    else:
        path = ref.get("path") if isinstance(ref, dict) else ref
        if not isinstance(path, str | Path):
            raise DataError(f"{source}: sample {index}: not an image reference: {str(ref)[:200]}")
        file = shown = _resolve(str(path), base)
    try:
        with Image.open(file) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as e:  # missing, truncated or not an image
        raise DataError(f"{source}: sample {index}: cannot read image {shown}: {e}") from e


def _require_pil() -> None:
    try:
        import PIL  # noqa: F401
    except ImportError as e:
        raise DataError(
            f"image datasets need pillow to decode images; install it with `{VISION_INSTALL}`"
        ) from e
