"""Write the tiny synthetic retrieval task of the offline retrieval example (seeded, reproducible).

Made-up towns ("Zorvia", "Belmora", ...) each get six fact documents, in one of three wordings:

    setting + export     Zorvia is a river town whose main export is copper.
    mayor                The mayor of Zorvia is Kelmar Ruste, who was elected by the council.
    founder + century    Zorvia was founded by Orla Venn in the fifth century.
    festival + season    Every winter, Zorvia holds a festival of lanterns.
    landmark + banner    Zorvia is famous for its old bridge, and its banner shows a red fox.
    route                Every year, Zorvia sends wool to Belmora.

(towns come in pairs, each sending something to the other: "Every year, Belmora sends honey to
Zorvia." has the same words as Zorvia's route but the two towns' places swapped),

six "twin" documents, each sharing a fact document's key words but stating a past or wrong
fact ("The former mayor of Zorvia, Edda Voss, now lives quietly in Belmora.", "Zorvia used to
export salt, but that trade ended long ago.", "Long ago, the banner of Zorvia showed a grey
owl, before the town changed it."), and two loose distractors with its name and some of its
queries' words ("The old road that leads from Zorvia to Belmora is dusty and long.").

Queries paraphrase one fact without its document's key word ("Who leads Zorvia today?" for the
mayor, "What does Zorvia sell abroad?" for the export, "Which town does Kelmar Ruste lead?"),
so word overlap finds the town's documents but not which of them answers, and often prefers a
distractor. Twins are asked about too, in nearly the same words ("Who used to lead Zorvia?"),
so a twin is a hard negative of its fact's queries and the other way round: telling the two
apart takes contrasting them, which random and in-batch negatives (other towns) rarely do and
mined negatives do (docs/retrieval_recipe.md measures it). The route queries ("What does Zorvia
send to Belmora?") name both towns and no good, so only word order tells Zorvia's route from
Belmora's, which random and in-batch negatives almost never put side by side. No query asks for
a loose distractor. Training and validation towns are disjoint (new combinations of the same name
parts), and so are their people.

    python examples/retrieval/assets/make_data.py

writes train.jsonl (query, inline positive, 1-3 random easy negatives), corpus.jsonl and
train_queries.jsonl (the same queries by corpus id, for hard-negative mining),
validation_corpus.jsonl and validation.jsonl (held-out towns).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

HERE = Path(__file__).parent
SEED = 1234
TRAIN_TOWNS, VALIDATION_TOWNS = 150, 40
SECOND_WORDING = 0.5  # chance that a training fact is asked in a second wording too
VALIDATION_QUERIES_PER_TOWN = 6  # distinct facts, one wording each

# Town names: an onset and an ending, so held-out towns are new combinations of the same parts.
ONSETS = ["zor", "bel", "kar", "mir", "tal", "ven", "dor", "sel", "quen", "var", "lum", "ost"]
ONSETS += ["ash", "fen", "gal", "hal", "ir", "jor", "nor", "pel", "ros", "tam", "ul", "wen"]
ENDINGS = ["via", "mora", "dun", "ith", "avel", "esk", "ora", "ane", "wick", "mar", "enth"]
ENDINGS += ["ys", "oth", "ara", "ine", "gard"]
FIRST_NAMES = ["Kelmar", "Orla", "Brann", "Tessa", "Idris", "Mara", "Corin", "Sable", "Davin"]
FIRST_NAMES += ["Elspa", "Garrow", "Hilde", "Jonas", "Liora", "Ansel", "Petra", "Rowan", "Nessa"]
FIRST_NAMES += ["Tobin", "Wren", "Edda", "Fabian", "Greta", "Lucan", "Mabel", "Osric", "Ilse"]
FIRST_NAMES += ["Bram"]
LAST_NAMES = ["Ruste", "Venn", "Hollow", "Marsh", "Quill", "Thorne", "Dacre", "Orme", "Brisk"]
LAST_NAMES += ["Cole", "Ashby", "Morrow", "Penn", "Strand", "Wylde", "Harlow", "Gage", "Crane"]
LAST_NAMES += ["Voss", "Lark", "Tallis", "Mott", "Keel", "Sorrel", "Birch", "Dunmore", "Fairley"]
LAST_NAMES += ["Hume"]

SETTINGS = ["river", "mountain", "harbor", "desert", "forest", "island", "valley", "marsh"]
SETTINGS += ["hill", "lake"]
GOODS = ["copper", "salt", "wool", "timber", "silk", "glass", "iron", "honey", "wine", "amber"]
GOODS += ["tin", "pepper", "cheese", "pottery"]
CENTURIES = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]
CENTURIES += ["ninth", "tenth"]
SEASONS = ["spring", "summer", "autumn", "winter"]
FESTIVALS = ["lanterns", "masks", "bells", "kites", "drums", "candles", "boats", "flowers"]
FESTIVALS += ["horses", "songs", "fires", "ribbons"]
ADJECTIVES = ["old", "tall", "white", "crooked", "painted", "stone", "golden"]
LANDMARKS = ["bridge", "tower", "lighthouse", "temple", "market", "library", "castle", "well"]
LANDMARKS += ["garden", "mill"]
COLOURS = ["red", "green", "blue", "black", "silver", "purple", "orange", "grey"]
ANIMALS = ["fox", "bear", "owl", "stag", "wolf", "heron", "boar", "hawk", "otter", "lion"]
ANIMALS += ["goat", "swan"]

# Fact documents, the answers to the queries.
DOCS = {
    "trade": [
        "{T} is a {setting} town whose main export is {export}.",
        "Most of the {export} in the region comes from {T}, a {setting} town.",
        "In the {setting} town of {T}, the main export is {export}.",
    ],
    "mayor": [
        "The mayor of {T} is {mayor}, who was elected by the council.",
        "{mayor} has served as mayor of {T} since the last election.",
        "Since the last election, {T} has had {mayor} as its mayor.",
    ],
    "founding": [
        "{T} was founded by {founder} in the {century} century.",
        "In the {century} century, {founder} founded {T}.",
        "The founder of {T} was {founder}, in the {century} century.",
    ],
    "festival": [
        "Every {season}, {T} holds a festival of {festival}.",
        "The festival of {festival} takes place in {T} each {season}.",
        "In {season}, the streets of {T} fill with {festival} for its festival.",
    ],
    "sights": [
        "{T} is famous for its {adjective} {landmark}, and its banner shows a {colour} {animal}.",
        "The banner of {T} shows a {colour} {animal}; the town is famous for its {adjective} {landmark}.",
        "A {colour} {animal} is on the banner of {T}, a town famous for its {adjective} {landmark}.",
    ],
    "route": [
        "Every year, {T} sends {sent} to {P}.",
        "{T} sends {sent} to {P} every year.",
        "Each year, carts of {sent} go from {T} to {P}.",
    ],
}
# Twins: the key words of a fact document (export, mayor, founder, festival, famous, banner) and
# its town, but a fact of the past or a wrong one; TWIN_QUERIES ask for them.
TWINS = {
    "old_trade": [
        "{T} used to export {old_export}, but that trade ended long ago.",
        "Long ago the main export of {T} was {old_export}, before the trade died out.",
    ],
    "old_mayor": [
        "The former mayor of {T}, {old_mayor}, now lives quietly in {B}.",
        "{old_mayor} was mayor of {T} until the last election.",
        "Before the last election, the mayor of {T} was {old_mayor}.",
    ],
    "false_founder": [
        "{rebuilder}, who rebuilt {T} in the {rebuilt} century, is often wrongly called its founder.",
        "Some say {rebuilder} founded {T}, but {rebuilder_first} only rebuilt it in the {rebuilt} century.",
    ],
    "old_festival": [
        "{T} once held a festival of {old_festival} every {old_season}, but it ended long ago.",
        "Long ago, a festival of {old_festival} took place in {T}; it is no longer held.",
    ],
    "old_landmark": [
        "{T} was once famous for its {old_adjective} {old_landmark}, which burned down long ago.",
        "Long ago, {T} was famous for a {old_adjective} {old_landmark} that is now gone.",
    ],
    "old_banner": [
        "Long ago, the banner of {T} showed a {old_colour} {old_animal}, before the town changed it.",
        "The first banner of {T} showed a {old_colour} {old_animal}; it was replaced long ago.",
    ],
}
# Loose distractors: a town's name, some of its values and its queries' words, and no fact of
# it (B is another town of the same split).
DISTRACTORS = [
    "The old road that leads from {T} to {B} is dusty and long.",
    "Few visitors to {T} stay longer than a single night.",
    "A song from {T} tells of a {colour} {animal} that once lived near {B}.",
    "Old merchants in {T} say the best {export} comes from far beyond {B}.",
    "People in {T} rarely celebrate birthdays, and few remember who started the custom.",
    "Travelers from {B} often pass through {T} in {season} on their way to sell {festival}.",
    "{mayor} was born in {B} and still visits it every {season}.",
    "A statue of {founder} stands in the market square of {B}.",
]
DISTRACTORS_PER_TOWN = 2
# Queries: (fact, the document that states it, wordings). None uses its document's key word.
QUERIES = [
    ("setting", "trade", ["What kind of land surrounds {T}?", "What sort of place is {T} in?"]),
    ("route", "route", ["What does {T} send to {P}?", "What goes from {T} to {P}?"]),
    ("export", "trade", ["What does {T} sell abroad?", "Which goods leave {T} for other lands?"]),
    ("mayor", "mayor", ["Who leads {T} today?", "Who is in charge of {T} now?", "Who heads {T}?"]),
    ("mayor_of", "mayor", ["Which town does {mayor} lead?", "{mayor} is in charge of which town?"]),
    ("founder", "founding", ["Who started {T}?", "Who first settled {T}?"]),
    ("founder_of", "founding", ["Which town did {founder} start?", "What did {founder} build?"]),
    ("century", "founding", ["How old is {T}?", "When did {T} begin?"]),
    (
        "festival",
        "festival",
        ["What do the people of {T} celebrate?", "What is the big party in {T} about?"],
    ),
    (
        "season",
        "festival",
        ["When is the big party in {T}?", "At what time of year does {T} celebrate?"],
    ),
    (
        "landmark",
        "sights",
        ["What sight draws visitors to {T}?", "What should a traveler see in {T}?"],
    ),
    (
        "animal",
        "sights",
        ["What animal is on the flag of {T}?", "Which beast marks the flag of {T}?"],
    ),
]
# Queries for the twins, worded like their fact's queries: only the cue of time tells them apart.
TWIN_QUERIES = [
    (
        "old_export",
        "old_trade",
        ["What did {T} sell abroad in the past?", "Which goods did {T} once send to other lands?"],
    ),
    ("old_mayor", "old_mayor", ["Who used to lead {T}?", "Who was in charge of {T} before?"]),
    ("old_mayor_of", "old_mayor", ["Which town did {old_mayor} once lead?"]),
    (
        "rebuilder",
        "false_founder",
        [
            "Who is wrongly said to have started {T}?",
            "Who restored {T} after it was first settled?",
        ],
    ),
    (
        "old_festival",
        "old_festival",
        [
            "What did the people of {T} celebrate in the past?",
            "What was the big party in {T} about long ago?",
        ],
    ),
    (
        "old_landmark",
        "old_landmark",
        ["What sight did {T} lose?", "What did a traveler see in {T} long ago?"],
    ),
    (
        "old_animal",
        "old_banner",
        ["What animal was once on the flag of {T}?", "Which beast marked the old flag of {T}?"],
    ),
]


def fill(template: str, facts: dict[str, str]) -> str:
    """A wording filled with a town's facts, "a" made "an" before a vowel."""
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", template.format(**facts))


def town_names(rng: random.Random) -> list[str]:
    """Distinct names (onset + ending) for both splits, in random order."""
    names = [(onset + ending).capitalize() for onset in ONSETS for ending in ENDINGS]
    rng.shuffle(names)
    return names[: TRAIN_TOWNS + VALIDATION_TOWNS]


def towns(names: list[str], people: list[str], rng: random.Random) -> list[dict[str, str]]:
    """The facts of each town (and of its twins): four of `people` each, and each twin's value
    differs from the fact's."""
    out = []
    for i, name in enumerate(names):
        mayor, old_mayor, founder, rebuilder = people[4 * i : 4 * i + 4]
        export, old_export = rng.sample(GOODS, 2)
        festival, old_festival = rng.sample(FESTIVALS, 2)
        landmark, old_landmark = rng.sample(LANDMARKS, 2)
        (colour, animal), (old_colour, old_animal) = rng.sample(
            [(c, a) for c in COLOURS for a in ANIMALS], 2
        )
        founded = rng.randrange(len(CENTURIES) - 1)
        out.append(
            {
                "T": name,
                "B": rng.choice([n for n in names if n != name]),
                "P": names[i ^ 1],  # the town it trades with: 0 with 1, 2 with 3, ...
                "sent": rng.choice(GOODS),
                "setting": rng.choice(SETTINGS),
                "export": export,
                "old_export": old_export,
                "mayor": mayor,
                "old_mayor": old_mayor,
                "founder": founder,
                "century": CENTURIES[founded],
                "rebuilder": rebuilder,
                "rebuilder_first": rebuilder.split()[0],
                "rebuilt": CENTURIES[rng.randrange(founded + 1, len(CENTURIES))],
                "season": rng.choice(SEASONS),
                "festival": festival,
                "old_festival": old_festival,
                "old_season": rng.choice(SEASONS),
                "adjective": rng.choice(ADJECTIVES),
                "landmark": landmark,
                "old_adjective": rng.choice(ADJECTIVES),
                "old_landmark": old_landmark,
                "colour": colour,
                "animal": animal,
                "old_colour": old_colour,
                "old_animal": old_animal,
            }
        )
    return out


def corpus(
    split: str, facts: list[dict[str, str]], rng: random.Random
) -> tuple[list[dict[str, str]], dict[tuple[str, str], str]]:
    """Each town's fact documents, twins and loose distractors, shuffled and numbered: the rows
    and {(town, document kind): id}."""
    docs = []
    for town in facts:
        for kind, wordings in (DOCS | TWINS).items():
            docs.append((town["T"], kind, fill(rng.choice(wordings), town)))
        for i, template in enumerate(rng.sample(DISTRACTORS, DISTRACTORS_PER_TOWN)):
            docs.append((town["T"], f"distractor{i}", fill(template, town)))
    rng.shuffle(docs)
    rows, ids = [], {}
    for number, (name, kind, text) in enumerate(docs):
        doc_id = f"{split[0]}{number:04d}"  # t0000... / v0000...
        rows.append({"id": doc_id, "text": text})
        ids[name, kind] = doc_id
    return rows, ids


def queries(
    facts: list[dict[str, str]],
    ids: dict[tuple[str, str], str],
    rng: random.Random,
    per_town: int | None = None,
) -> list[tuple[str, str]]:
    """(query, positive id) pairs: for training every fact of every town in one wording (half of
    them in two), for validation `per_town` distinct facts of each town in one wording, its
    route among them."""
    out = []
    for town in facts:
        asked = QUERIES + TWIN_QUERIES
        if per_town is not None:
            route, others = asked[1], asked[:1] + asked[2:]
            asked = [route, *rng.sample(others, per_town - 1)]
        for _, kind, wordings in asked:
            n = 1 if per_town is not None else 1 + (rng.random() < SECOND_WORDING)
            for wording in rng.sample(wordings, min(n, len(wordings))):
                out.append((fill(wording, town), ids[town["T"], kind]))
    rng.shuffle(out)
    return out


def write(path: Path, rows: list[dict]) -> None:
    """Write rows as JSON lines."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {path.name} ({len(rows)} rows, {path.stat().st_size / 1000:.0f} KB)")


def main() -> None:
    """Write the training files (inline and by id) and the held-out validation files."""
    rng = random.Random(SEED)
    names = town_names(rng)
    # Four distinct people per town, nobody in both splits.
    people = [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES]
    people = rng.sample(people, 4 * len(names))
    train_facts = towns(names[:TRAIN_TOWNS], people[: 4 * TRAIN_TOWNS], rng)
    validation_facts = towns(names[TRAIN_TOWNS:], people[4 * TRAIN_TOWNS :], rng)

    docs, ids = corpus("train", train_facts, rng)
    text = {row["id"]: row["text"] for row in docs}
    pairs = queries(train_facts, ids, rng)
    named = {i: set(re.findall(r"\w+", doc)) & set(names) for i, doc in text.items()}
    inline = []
    for query, pos in pairs:
        # Easy negatives: random documents that name none of the positive's towns.
        others = [i for i in text if not named[i] & named[pos]]
        negs = rng.sample(others, rng.randint(1, 3))
        inline.append({"query": query, "pos_doc": text[pos], "neg_doc": [text[i] for i in negs]})
    write(HERE / "train.jsonl", inline)
    write(HERE / "corpus.jsonl", docs)
    write(
        HERE / "train_queries.jsonl",
        [{"query": query, "pos_ids": [pos], "neg_ids": []} for query, pos in pairs],
    )

    docs, ids = corpus("validation", validation_facts, rng)
    pairs = queries(validation_facts, ids, rng, VALIDATION_QUERIES_PER_TOWN)
    write(HERE / "validation_corpus.jsonl", docs)
    # A reranker's candidates: every other document of the positive's town (facts, twins and
    # loose distractors) and, for a route, the partner's route (the same words, the towns
    # swapped): the hard part of the list a first-stage retriever returns.
    key_of = {doc_id: key for key, doc_id in ids.items()}
    partner = {town["T"]: town["P"] for town in validation_facts}
    candidates = {}
    for _, pos in pairs:
        town, kind = key_of[pos]
        others = [i for (t, _), i in ids.items() if t == town and i != pos]
        candidates[pos] = others + ([ids[partner[town], "route"]] if kind == "route" else [])
    rows = [{"query": q, "pos_ids": [pos], "neg_ids": sorted(candidates[pos])} for q, pos in pairs]
    write(HERE / "validation.jsonl", rows)


if __name__ == "__main__":
    main()
