"""Write the quick start's example data: a field guide to an invented archipelago.

    python examples/make_examples.py

Writes, beside this script, `corpus.txt` (one passage per line, the MLM corpus and the search
corpus of the report) and `pairs.tsv` (a header row, then query<TAB>passage, every passage a line
of corpus.txt). Every island, bird, plant and fact is invented here, so the data is ours to ship.
The output is deterministic; the committed files are what this script writes.
"""

import random
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent
SEED = 7

ISLANDS = [
    ("Varnholm", "north", "basalt cliffs", "Keelport"),
    ("Eskeray", "west", "white sand dunes", "Saltgate"),
    ("Tollamar", "south", "hot springs", "Brinewick"),
    ("Ossery", "east", "pine forests", "Harrowby"),
    ("Myrren", "north", "peat bogs", "Lowmoor"),
    ("Caldwey", "south", "orchards of pale apples", "Fenhythe"),
    ("Runskar", "west", "sea stacks", "Gullhaven"),
    ("Brelland", "east", "tidal flats", "Marrowquay"),
    ("Quillon", "north", "glacier lakes", "Frostholt"),
    ("Amberlee", "south", "amber beaches", "Sunhollow"),
    ("Drossel", "west", "lighthouses", "Beaconmere"),
    ("Inchgale", "east", "wind-bent oaks", "Stormwell"),
]
BIRDS = [
    ("copper tern", "small fish", "cliff ledges", "rust-red wings"),
    ("dune lark", "seeds of marram grass", "open dunes", "a sandy crest"),
    ("grey skimmer", "shrimp", "tidal flats", "a long lower bill"),
    ("bog piper", "beetles", "wet peat", "a drumming call"),
    ("pine crossbeak", "pine seeds", "conifer woods", "a crossed bill"),
    ("orchard finch", "fallen fruit", "orchards", "a yellow throat"),
    ("stack puffin", "sand eels", "sea stacks", "a striped beak"),
    ("lake diver", "small trout", "glacier lakes", "red eyes"),
    ("amber plover", "sand hoppers", "beaches", "a golden back"),
    ("storm petrel", "plankton", "the open sea", "a pale rump"),
    ("oak owl", "mice", "old oak trees", "ear tufts"),
    ("spring heron", "frogs", "warm pools", "a blue neck"),
]
PLANTS = [
    ("salt thrift", "pink", "early summer", "cliff tops"),
    ("dune poppy", "orange", "midsummer", "sand dunes"),
    ("bog candle", "white", "late spring", "peat bogs"),
    ("ember heath", "red", "autumn", "dry moors"),
    ("glass sedge", "silver", "late summer", "lake shores"),
    ("tide lily", "cream", "spring", "salt marshes"),
    ("pine orchid", "purple", "early summer", "shaded pine woods"),
    ("sun clover", "yellow", "all summer", "meadows"),
    ("frost bell", "blue", "winter", "high ground"),
    ("spring fern", "green", "all year", "the rims of hot springs"),
]
FERRIES = [
    ("Keelport", "Saltgate", 90, "twice a day"),
    ("Saltgate", "Gullhaven", 40, "every hour in summer"),
    ("Brinewick", "Fenhythe", 35, "four times a day"),
    ("Harrowby", "Marrowquay", 55, "three times a day"),
    ("Lowmoor", "Frostholt", 70, "once a day"),
    ("Sunhollow", "Brinewick", 50, "twice a day"),
    ("Beaconmere", "Keelport", 120, "on weekdays only"),
    ("Stormwell", "Harrowby", 45, "every two hours"),
]
FESTIVALS = [
    ("Lantern Night", "Beaconmere", "the first new moon of autumn", "paper lanterns are floated in the harbour"),
    ("the Apple Fair", "Fenhythe", "the second week of October", "growers judge the year's pale apples"),
    ("the Tern Count", "Keelport", "the last Sunday of June", "volunteers count nesting copper terns"),
    ("the Peat Fire", "Lowmoor", "midwinter", "families burn the last dry peat of the year"),
    ("the Spring Swim", "Brinewick", "the spring equinox", "swimmers cross from the hot springs to the bay"),
    ("the Kite Day", "Stormwell", "the windiest week of March", "children fly kites from the oak ridge"),
]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]


def island_passages(rng: random.Random) -> list[tuple[str, list[str]]]:
    """Return (passage, queries) for each island fact."""
    items = []
    for name, region, feature, town in ISLANDS:
        population = rng.randrange(300, 9000, 50)
        area = rng.randrange(12, 240)
        wet_month = rng.choice(MONTHS)
        items.append((
            f"{name} lies in the {region} of the archipelago and is known for its {feature}.",
            [f"which island is known for its {feature}", f"what is {name} known for"],
        ))
        items.append((
            f"About {population} people live on {name}, most of them in the harbour town of {town}.",
            [f"how many people live on {name}", f"main town of {name}"],
        ))
        items.append((
            f"{name} covers {area} square kilometres, and its wettest month is usually {wet_month}.",
            [f"how big is {name}", f"when does it rain most on {name}"],
        ))
        items.append((
            f"The harbour of {town} on {name} shelters fishing boats from the {region}erly gales.",
            [f"where do boats shelter on {name}", f"harbour of {town}"],
        ))
    return items


def bird_passages(rng: random.Random) -> list[tuple[str, list[str]]]:
    items = []
    for bird, food, habitat, mark in BIRDS:
        island = rng.choice(ISLANDS)[0]
        clutch = rng.randint(1, 6)
        items.append((
            f"The {bird} feeds mainly on {food} and is easy to recognise by {mark}.",
            [f"what does the {bird} eat", f"bird with {mark}"],
        ))
        items.append((
            f"The {bird} nests on {habitat}, and the largest colony is found on {island}.",
            [f"where does the {bird} nest", f"largest {bird} colony"],
        ))
        items.append((
            f"A {bird} lays {clutch} eggs a year, and both parents share the care of the chicks.",
            [f"how many eggs does a {bird} lay", f"{bird} breeding"],
        ))
    return items


def plant_passages(rng: random.Random) -> list[tuple[str, list[str]]]:
    items = []
    for plant, colour, season, place in PLANTS:
        island = rng.choice(ISLANDS)[0]
        height = rng.randint(5, 90)
        items.append((
            f"The {plant} has {colour} flowers that open in {season} on {place}.",
            [f"when does the {plant} flower", f"plant with {colour} flowers on {place}"],
        ))
        items.append((
            f"The {plant} grows up to {height} centimetres tall and is most common on {island}.",
            [f"how tall is the {plant}", f"where is the {plant} common"],
        ))
    return items


def ferry_passages(rng: random.Random) -> list[tuple[str, list[str]]]:
    items = []
    for origin, destination, minutes, frequency in FERRIES:
        fare = rng.randint(4, 30)
        items.append((
            f"The ferry from {origin} to {destination} takes {minutes} minutes and sails {frequency}.",
            [f"ferry from {origin} to {destination}", f"how long is the crossing to {destination}"],
        ))
        items.append((
            f"A single ticket between {origin} and {destination} costs {fare} crowns, and bicycles travel free.",
            [f"ticket price {origin} {destination}", f"can I take a bicycle to {destination}"],
        ))
    return items


def festival_passages(rng: random.Random) -> list[tuple[str, list[str]]]:
    items = []
    for festival, town, date, custom in FESTIVALS:
        visitors = rng.randrange(200, 5000, 100)
        items.append((
            f"{festival[0].upper()}{festival[1:]} is held in {town} on {date}, when {custom}.",
            [f"when is {festival}", f"what happens at {festival}"],
        ))
        items.append((
            f"Around {visitors} visitors come to {town} for {festival}, so ferries add extra sailings.",
            [f"how many people visit {festival}", f"extra ferries for {festival}"],
        ))
    return items


def background_sentences(rng: random.Random) -> list[str]:
    """Generate unpaired sentences that only enlarge the MLM corpus and the search corpus."""
    templates = [
        "On {island} the {bird} is often seen near the {plant} in {month}.",
        "Walkers on {island} follow a marked path past {feature} in {month}.",
        "In {month} the {plant} covers the ground around {town}.",
        "Fishermen of {town} say the {bird} arrives before the first storm of {month}.",
        "The school in {town} teaches children the names of the {bird} and the {plant}.",
    ]
    sentences = set()
    while len(sentences) < 420:
        island, _, feature, town = rng.choice(ISLANDS)
        sentences.add(rng.choice(templates).format(
            island=island, feature=feature, town=town, month=rng.choice(MONTHS),
            bird=rng.choice(BIRDS)[0], plant=rng.choice(PLANTS)[0],
        ))
    return sorted(sentences)


def main() -> None:
    rng = random.Random(SEED)
    items = []
    for build in (island_passages, bird_passages, plant_passages, ferry_passages, festival_passages):
        items.extend(build(rng))
    passages = [passage for passage, _ in items]
    if len(set(passages)) != len(passages):
        raise ValueError("two facts produced the same passage; change a template")
    corpus = passages + background_sentences(rng)
    rng.shuffle(corpus)
    (EXAMPLES_DIR / "corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")

    pairs = [(query, passage) for passage, queries in items for query in queries]
    rng.shuffle(pairs)
    lines = ["query\tpassage"] + [f"{query}\t{passage}" for query, passage in pairs]
    (EXAMPLES_DIR / "pairs.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
