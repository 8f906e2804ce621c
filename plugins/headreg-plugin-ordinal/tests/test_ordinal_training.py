"""The ordinal head learns star ratings on the real MiniLM in a few hundred steps.

The backbone stays frozen (its mean-pooled features are computed once), so the test takes seconds on a
CPU; the held-out texts combine nouns and a template that training never saw.
"""

from __future__ import annotations

import torch

from headreg import attach_head

pytest_plugins = ["headreg.testing"]

ADJECTIVES = {  # rank -> words of that strength
    0: ["terrible", "awful", "horrible", "dreadful", "atrocious", "abysmal"],
    1: ["poor", "bad", "disappointing", "subpar", "weak", "lousy"],
    2: ["okay", "average", "mediocre", "so-so", "passable", "ordinary"],
    3: ["good", "nice", "pleasant", "solid", "enjoyable", "likeable"],
    4: ["excellent", "amazing", "outstanding", "superb", "fantastic", "wonderful"],
}
TEMPLATES = ["The {n} was {a}.", "Honestly, a {a} {n}.", "I found the {n} {a}.", "Overall the {n} felt {a}.",
             "What a {a} {n}!", "The {n}? {a}."]
NOUNS = ["food", "service", "movie", "hotel", "book", "phone", "concert", "coffee"]
HELD_OUT_TEMPLATE, HELD_OUT_NOUNS = "I found the {n} {a}.", ("phone", "coffee")
STARS = ["1 star", "2 stars", "3 stars", "4 stars", "5 stars"]


def dataset():
    rows = [(t, n, t.format(n=n, a=a), rank) for rank, words in ADJECTIVES.items() for a in words
            for t in TEMPLATES for n in NOUNS]
    seen = [(text, rank) for t, n, text, rank in rows if t != HELD_OUT_TEMPLATE and n not in HELD_OUT_NOUNS]
    unseen = [(text, rank) for t, n, text, rank in rows if t == HELD_OUT_TEMPLATE or n in HELD_OUT_NOUNS]
    return seen[::3], unseen[::3]


def test_learns_star_ratings_on_minilm_well_above_chance(minilm_path, minilm_tokenizer, single_torch_thread):
    from transformers import AutoModel

    from headreg.model import quiet_transformers

    train, test = dataset()
    with quiet_transformers():
        backbone = AutoModel.from_pretrained(str(minilm_path))
    torch.manual_seed(0)
    model = attach_head(backbone, "ordinal", id2label=STARS, pooling="mean", dropout=0.0).eval()
    model.backbone.requires_grad_(False)

    batch = minilm_tokenizer([text for text, _ in train], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.backbone(**batch).last_hidden_state
        features = model.pooler(hidden, batch["attention_mask"], None)
    ranks = torch.tensor([rank for _, rank in train])
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        pick = torch.randint(0, len(features), (32,), generator=generator)
        loss = model.head.loss(model.head(features[pick], None, None), ranks[pick], None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    held_out = minilm_tokenizer([text for text, _ in test], padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model.head.predict_rank(model(**held_out).logits)  # the whole model, backbone included
    truth = torch.tensor([rank for _, rank in test])
    accuracy = (predicted == truth).float().mean().item()
    mean_abs_error = (predicted - truth).abs().float().mean().item()
    chance = 1 / len(STARS)
    print(f"ordinal toy task: {len(train)} train / {len(test)} held-out texts, accuracy {accuracy:.3f} "
          f"(chance {chance:.2f}), mean absolute rank error {mean_abs_error:.3f}")
    assert len(test) >= 150
    assert accuracy >= 2.5 * chance
    assert mean_abs_error < 0.6  # off by less than a star on average: the order was learned, not just classes
