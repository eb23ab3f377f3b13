"""Writes the bundled demo dataset: ``orders.jsonl`` (training) and ``orders_heldout.jsonl``.

The task is structured extraction: a customer's message in, a JSON object with exactly the
keys ``name``, ``item``, ``quantity`` (an integer) and ``city`` out. A pretrained chat model
answers it loosely (prose, other keys, numbers as words); a short LoRA run teaches the
format, which the task evaluation (``python -m workbench eval``) scores as exact match,
JSON parse rate and per-field accuracy. Written for PEFT Workbench, dedicated to the public
domain (CC0 1.0). Deterministic: ``python assets/demo/make_orders.py`` rewrites the same files.
The held-out rows use phrasings, names and cities that never occur in training.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSTRUCTION = ("Extract the order from the customer's message as JSON with exactly the keys "
               "name, item, quantity (a number) and city.")
FIRST = ["Maria", "John", "Aisha", "Kenji", "Olga", "Pedro", "Fatima", "Liam", "Chloe", "Ravi", "Sofia", "Tom",
         "Ingrid", "Kwame", "Mei", "Omar", "Hannah", "Diego", "Yuki", "Anna", "Lucas", "Nadia", "Felix", "Grace"]
LAST = ["Lopez", "Smith", "Khan", "Tanaka", "Petrova", "Silva", "Haddad", "Murphy", "Martin", "Patel", "Rossi",
        "Baker", "Larsen", "Mensah", "Chen", "Farouk", "Weber", "Garcia", "Sato", "Novak", "Dubois", "Ali"]
HELD_FIRST = ["Elena", "Marcus", "Priya", "Jonas", "Amara", "Theo"]
HELD_LAST = ["Costa", "Lindqvist", "Okafor", "Moreau", "Ivanova", "Reyes"]
ITEMS = ["blue mug", "red umbrella", "wooden chair", "desk lamp", "yoga mat", "steel water bottle", "wool scarf",
         "notebook", "phone charger", "green teapot", "pair of hiking boots", "backpack", "picture frame",
         "kitchen knife", "bath towel", "coffee grinder", "garden hose", "table cloth", "alarm clock", "rain jacket"]
CITIES = ["Lisbon", "Toronto", "Nairobi", "Osaka", "Berlin", "Lima", "Cairo", "Dublin", "Lyon", "Mumbai", "Rome",
          "Leeds", "Oslo", "Accra", "Shanghai", "Tunis", "Vienna", "Madrid", "Kyoto", "Prague"]
HELD_CITIES = ["Porto", "Quebec", "Mombasa", "Sapporo", "Hamburg", "Cusco"]
WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine",
         10: "ten", 11: "eleven", 12: "twelve"}
TEMPLATES = [
    "Hi, I'm {name} and I'd like {qty} {item}s sent to {city}, please.",
    "Please ship {qty} x {item} to {city}. Thanks, {name}",
    "This is {name}. Could you deliver {qty} of the {item} to my address in {city}?",
    "Order for {name}: {qty} {item}s, delivery to {city}.",
    "Hello! {name} here from {city}. I need {qty} {item}s as soon as possible.",
    "I want to buy {qty} {item}s. Send them to {city}. My name is {name}.",
    "Can I get {qty} {item}s delivered in {city}? - {name}",
    "Good morning, please send {qty} {item}s to {city} for {name}.",
]
HELD_TEMPLATES = [
    "{name} would like {qty} {item}s; the shipping city is {city}.",
    "Deliver to {city}: {qty} {item}s. Ordered by {name}.",
]


def plural(item: str) -> str:
    if item.startswith("pair of "):
        return "pairs of " + item.removeprefix("pair of ")
    if item.endswith("knife"):
        return item[:-2] + "ves"
    return item + "s"


def _row(rng: random.Random, firsts, lasts, cities, templates) -> dict:
    name = f"{rng.choice(firsts)} {rng.choice(lasts)}"
    item, city, qty = rng.choice(ITEMS), rng.choice(cities), rng.randint(1, 12)
    spoken = WORDS[qty] if rng.random() < 0.4 else str(qty)
    template = rng.choice(templates)
    if qty == 1:  # "a blue mug", not "1 blue mugs"
        template = template.replace("{qty} {item}s", "a {item}").replace("{qty} of the", "one of the")
        spoken = "1"
    text = template.replace("{item}s", "{items}").format(name=name, qty=spoken, item=item, items=plural(item),
                                                         city=city)
    answer = {"name": name, "item": item, "quantity": qty, "city": city}
    return {"instruction": INSTRUCTION, "input": text, "output": json.dumps(answer)}


def rows(count: int, seed: int, held_out: bool) -> list[dict]:
    rng = random.Random(seed)
    if held_out:
        return [_row(rng, FIRST + HELD_FIRST, LAST + HELD_LAST, CITIES + HELD_CITIES, TEMPLATES + HELD_TEMPLATES)
                for _ in range(count)]
    return [_row(rng, FIRST, LAST, CITIES, TEMPLATES) for _ in range(count)]


def main() -> None:
    for name, count, seed, held in (("orders.jsonl", 320, 7, False), ("orders_heldout.jsonl", 60, 11, True)):
        lines = [json.dumps(r, ensure_ascii=False) for r in rows(count, seed, held)]
        (HERE / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
