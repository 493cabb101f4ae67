"""A deterministic, synthetic product-review corpus for the product-review use case.

Every review has a vendor, a product category, a star rating (1-5), a free-text body and a
sentiment label derived from the rating: 1-2 stars are ``negative``, 3 is ``neutral``, 4-5 are
``positive``. The texts are assembled from templates and per-category vocabulary, with negation
("not bad", "wouldn't recommend"), mixed opinions ("great sound, but the battery dies") and a
little label noise (a reviewer whose stars disagree with their words), so a bag-of-n-grams model
learns the task well but not perfectly.

Some vendors sell markedly worse products than others; counting negative reviews per vendor is
the "which vendors have quality problems?" analysis from the course material.

Run it to write the corpus as CSV::

    .venv/bin/python examples/product_reviews/reviews.py reviews.csv
"""

from __future__ import annotations

import argparse
import csv
import random
from collections import Counter
from pathlib import Path

SEED = 20240102
N_REVIEWS = 4000
COLUMNS = ("review_id", "vendor", "product_category", "rating", "text", "sentiment")
LABELS = ("negative", "neutral", "positive")

# Vendor -> (quality tier, categories it sells). Tiers pick the star-rating distribution.
VENDORS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Northwind Goods": ("good", ("kitchen", "home", "electronics")),
    "Cobalt Audio": ("good", ("electronics",)),
    "Juniper & Co": ("good", ("apparel", "home")),
    "PageTurner Press": ("good", ("books",)),
    "Maple Toyworks": ("good", ("toys", "books")),
    "BrightLeaf": ("average", ("kitchen", "home")),
    "Kestrel Outfitters": ("average", ("apparel", "toys")),
    "Zenith Kitchenworks": ("average", ("kitchen",)),
    "Orbit Electronics": ("average", ("electronics", "toys")),
    "QuickShip Deals": ("poor", ("electronics", "kitchen", "apparel", "toys")),
    "Vantage Direct": ("poor", ("home", "apparel", "electronics")),
    "Lumen Labs": ("poor", ("electronics", "home")),
}
# Probability of 1..5 stars per tier.
RATING_WEIGHTS = {
    "good": (0.04, 0.05, 0.13, 0.33, 0.45),
    "average": (0.10, 0.10, 0.20, 0.30, 0.30),
    "poor": (0.33, 0.22, 0.18, 0.14, 0.13),
}
# Share of the corpus per vendor (big sellers and small ones).
VENDOR_WEIGHTS = (14, 10, 9, 8, 7, 9, 8, 6, 8, 9, 7, 8)

# Per category: product nouns, and aspect sentences by polarity. "{p}" is the product noun.
CATEGORIES: dict[str, dict[str, tuple[str, ...]]] = {
    "electronics": {
        "products": (
            "wireless earbuds",
            "bluetooth speaker",
            "phone charger",
            "USB-C cable",
            "smartwatch",
            "noise cancelling headphones",
            "mechanical keyboard",
            "webcam",
            "power bank",
            "HDMI adapter",
        ),
        "pos": (
            "The battery lasts for days.",
            "Sound quality is crisp and clear.",
            "It paired with my phone instantly.",
            "Charges really fast.",
            "Setup took two minutes.",
            "The {p} feels solid and well built.",
            "Connection is rock solid, no dropouts.",
            "The screen is bright and sharp.",
            "Works perfectly with my laptop.",
            "Bass is punchy without being muddy.",
        ),
        "neg": (
            "The battery barely lasts an hour.",
            "It keeps disconnecting from my phone.",
            "The {p} stopped working after a week.",
            "It gets dangerously hot while charging.",
            "Sound is tinny and distorted.",
            "The cable frayed within a month.",
            "The firmware update bricked it.",
            "It won't hold a charge anymore.",
            "Pairing fails every single time.",
            "The buttons are flimsy and unresponsive.",
        ),
        "neu": (
            "Battery life is about what the box says.",
            "Sound is fine for podcasts, nothing special.",
            "Pairing took a couple of tries.",
            "It does what a {p} should do.",
            "The app is basic but usable.",
            "Build quality is average for the price.",
        ),
    },
    "kitchen": {
        "products": (
            "blender",
            "chef's knife",
            "nonstick pan",
            "coffee grinder",
            "toaster",
            "electric kettle",
            "air fryer",
            "cutting board",
            "set of mixing bowls",
            "stand mixer",
        ),
        "pos": (
            "It heats up quickly and evenly.",
            "Easy to clean, everything goes in the dishwasher.",
            "The blade is razor sharp.",
            "Makes a perfect cup every morning.",
            "Nothing sticks to it.",
            "Crushes ice like a champ.",
            "The {p} looks great on my counter.",
            "Sturdy and well balanced.",
            "Cooks everything evenly.",
            "Quiet compared to my old one.",
        ),
        "neg": (
            "The coating started peeling after a few uses.",
            "It leaks all over the counter.",
            "The handle got loose within weeks.",
            "The motor burned out on the second use.",
            "Everything sticks to it.",
            "The {p} rusted after one wash.",
            "It smells like burning plastic.",
            "The lid doesn't fit properly.",
            "The blade went dull almost immediately.",
            "It takes forever to heat up.",
        ),
        "neu": (
            "It's a {p}, it does the job.",
            "Cleaning is a bit fiddly but manageable.",
            "Heats up in a reasonable time.",
            "A little louder than I expected.",
            "Works fine for everyday cooking.",
            "Size is smaller than it looks in the photos.",
        ),
    },
    "toys": {
        "products": (
            "building block set",
            "jigsaw puzzle",
            "plush bear",
            "remote control car",
            "board game",
            "doll house",
            "science kit",
            "wooden train set",
            "art supply kit",
            "water blaster",
        ),
        "pos": (
            "My kids play with it every day.",
            "Hours of fun for the whole family.",
            "The pieces are sturdy and safe.",
            "My daughter absolutely loves it.",
            "Great for keeping the kids busy on rainy days.",
            "The {p} survived my toddler, which says a lot.",
            "Instructions were clear and easy.",
            "It sparked a real interest in building.",
            "Bright colors and great detail.",
            "Perfect birthday present.",
        ),
        "neg": (
            "Pieces were missing from the box.",
            "It broke on the first day.",
            "The paint chipped off right away.",
            "Small parts snapped off, which is a choking hazard.",
            "My son lost interest in five minutes.",
            "The {p} smells of chemicals.",
            "The remote stopped responding after an hour.",
            "Instructions were impossible to follow.",
            "Much smaller than pictured.",
            "Cheap plastic that cracks easily.",
        ),
        "neu": (
            "The kids played with it for a while.",
            "Some pieces are a bit fiddly for small hands.",
            "Decent {p} for the age range.",
            "Assembly took longer than expected.",
            "It's a fairly ordinary {p}.",
            "Colors are a bit duller than the pictures.",
        ),
    },
    "apparel": {
        "products": (
            "running shoes",
            "rain jacket",
            "pair of jeans",
            "wool socks",
            "cotton t-shirt",
            "hoodie",
            "hiking backpack",
            "winter coat",
            "yoga leggings",
            "leather belt",
        ),
        "pos": (
            "Fits true to size.",
            "The fabric is soft and breathable.",
            "Kept me completely dry in a downpour.",
            "Comfortable right out of the box.",
            "Still looks new after many washes.",
            "The stitching is excellent.",
            "The {p} is warm without being bulky.",
            "Great color, exactly as pictured.",
            "I get compliments every time I wear it.",
            "Perfect for long hikes.",
        ),
        "neg": (
            "It runs two sizes too small.",
            "The seams split the first time I wore it.",
            "The color faded after one wash.",
            "The fabric is scratchy and thin.",
            "It shrank terribly in the wash.",
            "The zipper broke within a week.",
            "The {p} gave me blisters.",
            "It pills after a few wears.",
            "The material feels cheap.",
            "It let water straight through.",
        ),
        "neu": (
            "Fit is okay, slightly loose.",
            "The fabric is thinner than I expected.",
            "Color is close to the photo.",
            "Comfortable enough for around the house.",
            "It's a basic {p}.",
            "Sizing is a little inconsistent.",
        ),
    },
    "books": {
        "products": (
            "novel",
            "cookbook",
            "biography",
            "picture book",
            "thriller",
            "history book",
            "poetry collection",
            "study guide",
            "graphic novel",
            "travel guide",
        ),
        "pos": (
            "I couldn't put it down.",
            "Beautifully written and well researched.",
            "The recipes actually work.",
            "The characters feel real.",
            "The illustrations are gorgeous.",
            "A real page turner.",
            "The {p} taught me a lot.",
            "The ending was perfect.",
            "My kids ask for it every night.",
            "Clear, practical and well organized.",
        ),
        "neg": (
            "The plot is predictable and slow.",
            "Pages were falling out of the binding.",
            "Full of typos and errors.",
            "The recipes don't work as written.",
            "I gave up halfway through.",
            "The {p} is dull and repetitive.",
            "The ending made no sense.",
            "The print is blurry and hard to read.",
            "The characters are flat.",
            "Way too much filler.",
        ),
        "neu": (
            "The middle section drags a bit.",
            "Some chapters are better than others.",
            "An easy, light read.",
            "The {p} is decent but forgettable.",
            "The writing is competent.",
            "Not quite what the blurb promised.",
        ),
    },
    "home": {
        "products": (
            "desk lamp",
            "bed sheet set",
            "robot vacuum",
            "shower curtain",
            "throw pillow",
            "bath towel set",
            "wall clock",
            "storage bins",
            "space heater",
            "humidifier",
        ),
        "pos": (
            "It brightened up the whole room.",
            "The sheets are incredibly soft.",
            "It keeps the floors spotless.",
            "Easy to set up and use.",
            "The {p} looks more expensive than it was.",
            "Very quiet at night.",
            "Sturdy and well made.",
            "Exactly what our living room needed.",
            "It works great in our apartment.",
            "The towels are thick and absorbent.",
        ),
        "neg": (
            "The {p} stopped working after two weeks.",
            "It arrived cracked.",
            "It makes an awful rattling noise.",
            "The fabric tore on the first wash.",
            "It gets stuck under every chair.",
            "The light flickers constantly.",
            "It started leaking on day three.",
            "It smells musty straight out of the package.",
            "Flimsy and poorly made.",
            "The color is nothing like the photos.",
        ),
        "neu": (
            "It's a fairly standard {p}.",
            "Setup was a little confusing.",
            "It works, but it's louder than I'd like.",
            "Looks fine in the room.",
            "Quality is about what you'd expect.",
            "Slightly smaller than I imagined.",
        ),
    },
}

# Sentences that work for any product. Negated forms make unigrams ambiguous on purpose.
OPENERS = {
    5: (
        "Absolutely love this {p}!",
        "Best {p} I have ever owned.",
        "Wow, this {p} is fantastic.",
        "Five stars, this {p} exceeded my expectations.",
        "I'm so glad I bought this {p}.",
    ),
    4: (
        "Really nice {p}.",
        "Pretty happy with this {p}.",
        "Good {p} overall.",
        "Solid {p}, not bad at all.",
        "This {p} does its job well.",
    ),
    3: (
        "This {p} is okay.",
        "Mixed feelings about this {p}.",
        "It's an average {p}.",
        "The {p} is fine, I guess.",
        "Not great, not terrible.",
        "Decent {p}, but nothing to write home about.",
        "Meh.",
    ),
    2: (
        "Disappointed with this {p}.",
        "Not impressed with this {p}.",
        "This {p} is not good.",
        "I expected more from this {p}.",
        "Not what I hoped for.",
    ),
    1: (
        "Terrible {p}.",
        "Worst {p} I have ever bought.",
        "Do not buy this {p}!",
        "Complete waste of money.",
        "Awful, just awful.",
    ),
}
CLOSERS = {
    5: (
        "Highly recommend!",
        "Would buy again in a heartbeat.",
        "Worth every penny.",
        "Can't recommend it enough.",
        "No complaints at all.",
        "I'm buying another one as a gift.",
    ),
    4: (
        "Would recommend.",
        "Good value for the money.",
        "I'd buy it again.",
        "Happy with the purchase.",
        "Can't complain for the price.",
    ),
    3: (
        "It's fine for the price.",
        "Might buy again, might not.",
        "Not bad, not great.",
        "It'll do for now.",
        "Okay if you don't expect much.",
        "Average at best, but it works.",
    ),
    2: (
        "Wouldn't recommend.",
        "Not worth the money.",
        "I'm not happy with it.",
        "Probably returning it.",
        "Wouldn't buy it again.",
    ),
    1: (
        "Returned it immediately.",
        "Save your money.",
        "Never again.",
        "Avoid this seller.",
        "I want a refund.",
        "Zero stars if I could.",
    ),
}
SERVICE = {
    "pos": (
        "Shipping was fast.",
        "Arrived well packaged and a day early.",
        "Customer service was really helpful.",
    ),
    "neg": (
        "It took three weeks to arrive.",
        "The box was crushed when it arrived.",
        "The seller never answered my emails.",
        "It came used, with someone else's fingerprints on it.",
    ),
    "neu": ("Delivery was on time.", "Packaging was nothing special.", "Arrived when they said it would."),
}
BUT = ("but", "however", "although", "though honestly")

# How likely each aspect sentence is positive / negative / neutral, per star rating.
ASPECT_POLARITY = {
    5: (0.93, 0.02, 0.05),
    4: (0.72, 0.12, 0.16),
    3: (0.30, 0.30, 0.40),
    2: (0.10, 0.72, 0.18),
    1: (0.03, 0.93, 0.04),
}
# Share of reviewers whose words read like a different star rating than the one they gave.
LABEL_NOISE = 0.10


def sentiment_for(rating: int) -> str:
    """1-2 stars are negative, 3 is neutral, 4-5 are positive."""
    if rating <= 2:
        return "negative"
    return "neutral" if rating == 3 else "positive"


def _aspect(rng: random.Random, vocab: dict[str, tuple[str, ...]], tone_rating: int, used: set[str]) -> str:
    pos, neg, _ = ASPECT_POLARITY[tone_rating]
    roll = rng.random()
    polarity = "pos" if roll < pos else "neg" if roll < pos + neg else "neu"
    pool = vocab[polarity] if rng.random() < 0.88 else SERVICE[polarity]
    choices = [s for s in pool if s not in used] or list(pool)
    sentence = rng.choice(choices)
    used.add(sentence)
    return sentence


def _nearby(rng: random.Random, rating: int) -> int:
    """Stock phrases drift: a 4-star reviewer sometimes writes like a 3 or a 5."""
    if rng.random() < 0.7:
        return rating
    return max(1, min(5, rating + rng.choice((-1, 1))))


def _text(rng: random.Random, category: str, product: str, tone_rating: int) -> str:
    vocab = CATEGORIES[category]
    used: set[str] = set()
    parts: list[str] = []
    if rng.random() < 0.8:
        parts.append(rng.choice(OPENERS[_nearby(rng, tone_rating)]))
    for _ in range(rng.choice((1, 2, 2, 3))):
        parts.append(_aspect(rng, vocab, tone_rating, used))
    # A mixed review: a contrasting clause joined with "but".
    mixed_chance = 0.5 if tone_rating == 3 else 0.3 if tone_rating in (2, 4) else 0.0
    if rng.random() < mixed_chance:
        flip = "neg" if tone_rating >= 3 and rng.random() < 0.6 else "pos"
        contrast = rng.choice(vocab[flip])
        parts[-1] = parts[-1].rstrip(".!") + f", {rng.choice(BUT)} " + contrast[0].lower() + contrast[1:]
    if rng.random() < 0.7:
        parts.append(rng.choice(CLOSERS[_nearby(rng, tone_rating)]))
    if rng.random() < 0.04:
        quote = 'The listing said "premium quality".' if tone_rating <= 2 else 'My partner called it "a keeper".'
        parts.append(quote)
    text = " ".join(parts).replace("{p}", product)
    return text[0].upper() + text[1:]


def generate_reviews(n: int = N_REVIEWS, seed: int = SEED) -> list[dict[str, object]]:
    """``n`` reviews as dicts keyed by :data:`COLUMNS`; the same ``seed`` gives the same corpus."""
    rng = random.Random(seed)
    vendors = list(VENDORS)
    reviews: list[dict[str, object]] = []
    for i in range(n):
        vendor = rng.choices(vendors, weights=VENDOR_WEIGHTS)[0]
        tier, categories = VENDORS[vendor]
        category = rng.choice(categories)
        product = rng.choice(CATEGORIES[category]["products"])
        rating = rng.choices((1, 2, 3, 4, 5), weights=RATING_WEIGHTS[tier])[0]
        tone = rating
        if rng.random() < LABEL_NOISE:  # the stars and the words disagree
            tone = max(1, min(5, rating + rng.choice((-2, -1, 1, 2))))
        reviews.append(
            {
                "review_id": f"R{i + 1:05d}",
                "vendor": vendor,
                "product_category": category,
                "rating": rating,
                "text": _text(rng, category, product, tone),
                "sentiment": sentiment_for(rating),
            }
        )
    return reviews


def write_csv(path: str | Path, n: int = N_REVIEWS, seed: int = SEED) -> Path:
    """Write the corpus to ``path`` as CSV with a header row; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(generate_reviews(n, seed))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", default="reviews.csv", help="where to write the CSV")
    parser.add_argument("-n", type=int, default=N_REVIEWS, help="number of reviews")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    path = write_csv(args.path, args.n, args.seed)
    reviews = generate_reviews(args.n, args.seed)
    counts = Counter(r["sentiment"] for r in reviews)
    print(f"wrote {len(reviews)} reviews to {path}: " + ", ".join(f"{k} {counts[k]}" for k in LABELS))


if __name__ == "__main__":
    main()
