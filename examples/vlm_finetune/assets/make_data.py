"""Write the tiny synthetic visual question-answering dataset of the offline VLM example (seeded).

Each image is a 32x32 white RGB PNG with 1-3 shapes (circle, square, triangle) in distinct
colours (red, green, blue, yellow), one per cell of a 2x2 grid so they never overlap. Each
image gets several one-word-answer questions, only ones the image answers unambiguously:

    how many shapes?            -> one / two / three
    how many circles?           -> zero / one / two / three
    what colour is the circle?  -> red / green / blue / yellow   (only if one circle)
    which shape is blue?        -> circle / square / triangle    (only if a blue shape)

    python examples/vlm_finetune/assets/make_data.py

writes train.jsonl (500 images x 4 questions), validation.jsonl (50 other images x 4
questions) and the images under images/train/ and images/validation/; each row's image path
is relative to its JSONL file.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent
SIZE = 32  # image side, pixels
CELL = SIZE // 2  # 2x2 grid
HALF = 5  # half the side of a shape's bounding box
JITTER = 2  # a shape's centre moves up to this far from its cell's centre
SHAPES = ["circle", "square", "triangle"]
COLOURS = {
    "red": (220, 20, 20),
    "green": (20, 160, 20),
    "blue": (20, 40, 220),
    "yellow": (235, 200, 0),
}
NUMBERS = ["zero", "one", "two", "three"]
QUESTIONS_PER_IMAGE = 4
SPLITS = {"train": 500, "validation": 50}  # images per split

Scene = tuple[tuple[str, str, int, int], ...]  # (shape, colour, centre x, centre y) per shape


def scene(rng: random.Random) -> Scene:
    """1-3 shapes in distinct colours, each in its own grid cell, centres jittered."""
    n = rng.randint(1, 3)
    colours = rng.sample(list(COLOURS), n)
    cells = rng.sample(range(4), n)
    out = []
    for colour, cell in zip(colours, cells, strict=True):
        x = (cell % 2) * CELL + CELL // 2 + rng.randint(-JITTER, JITTER)
        y = (cell // 2) * CELL + CELL // 2 + rng.randint(-JITTER, JITTER)
        out.append((rng.choice(SHAPES), colour, x, y))
    return tuple(sorted(out))


def draw(shapes: Scene) -> Image.Image:
    """Render a scene (no anti-aliasing, so the PNGs stay tiny)."""
    img = Image.new("RGB", (SIZE, SIZE), "white")
    pen = ImageDraw.Draw(img)
    for shape, colour, x, y in shapes:
        box = (x - HALF, y - HALF, x + HALF, y + HALF)
        if shape == "circle":
            pen.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            pen.rectangle(
                (x - HALF + 1, y - HALF + 1, x + HALF - 1, y + HALF - 1), fill=COLOURS[colour]
            )
        else:
            pen.polygon(
                [(x, y - HALF), (x - HALF, y + HALF), (x + HALF, y + HALF)], fill=COLOURS[colour]
            )
    return img


def questions(shapes: Scene) -> list[list[tuple[str, str]]]:
    """Every (question, answer) pair the scene answers unambiguously, grouped by kind of question."""
    kinds = [s[0] for s in shapes]
    return [
        [("how many shapes?", NUMBERS[len(shapes)])],
        [(f"how many {k}s?", NUMBERS[kinds.count(k)]) for k in SHAPES],
        [(f"what colour is the {k}?", c) for k, c, _, _ in shapes if kinds.count(k) == 1],
        [(f"which shape is {c}?", k) for k, c, _, _ in shapes],
    ]


def pick(groups: list[list[tuple[str, str]]], rng: random.Random) -> list[tuple[str, str]]:
    """QUESTIONS_PER_IMAGE distinct questions, one of each kind the scene allows first (so the
    kinds stay roughly balanced), the rest drawn from the leftovers."""
    groups = [rng.sample(g, len(g)) for g in groups]
    chosen = [g[0] for g in groups if g]
    rest = [q for g in groups for q in g[1:]]
    chosen += rng.sample(rest, QUESTIONS_PER_IMAGE - len(chosen))
    return rng.sample(chosen, len(chosen))


def row(image: str, question: str, answer: str) -> dict:
    """One chat sample in the OpenAI-style messages format."""
    return {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "image": image}, {"type": "text", "text": question}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
    }


def main() -> None:
    """Draw distinct scenes (so validation images never occur in train) and write both splits."""
    rng = random.Random(1234)
    seen: set[Scene] = set()
    for split, n_images in SPLITS.items():
        folder = HERE / "images" / split
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        rows = []
        for i in range(n_images):
            shapes = scene(rng)
            while shapes in seen:
                shapes = scene(rng)
            seen.add(shapes)
            name = f"images/{split}/{i:05d}.png"
            draw(shapes).save(HERE / name, optimize=True)
            for question, answer in pick(questions(shapes), rng):
                rows.append(row(name, question, answer))
        (HERE / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {split}.jsonl ({len(rows)} rows, {n_images} images)")


if __name__ == "__main__":
    main()
