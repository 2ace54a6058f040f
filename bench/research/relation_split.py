"""Write a split of a generated dataset's relation items for some relations only, so that a
stage's checkpoint can be scored on the relations it has been taught (`vsre evaluate --split`).

    python bench/research/relation_split.py --data runs/v2/D2-120K --name lateral_test \\
        --relations "left of,right of" --n 600

Single-image relation items of `--from` (random_test) whose relation is listed, shuffled with
`random.Random(seed)` (seed -1 keeps the file's order), the first `--n` written to
`DATA/NAME.jsonl` as they were. docs/recipes-tried.md names the splits it scored.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def relation_split(
    data: Path, name: str, relations: list[str], n: int, seed: int, source: str
) -> int:
    """Write the split; returns how many items it holds."""
    rows = [json.loads(line) for line in (data / f"{source}.jsonl").read_text().splitlines()]
    chosen = [
        r
        for r in rows
        if r.get("task") == "relation"
        and r.get("relation") in relations
        and len(r.get("images", [])) <= 1
    ]
    if seed >= 0:
        random.Random(seed).shuffle(chosen)
    chosen = chosen[:n]
    with open(data / f"{name}.jsonl", "w") as f:
        for r in chosen:
            f.write(json.dumps(r) + "\n")
    return len(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="generated dataset directory")
    parser.add_argument("--name", required=True, help="split to write (DATA/NAME.jsonl)")
    parser.add_argument("--relations", required=True, help="comma-separated relations")
    parser.add_argument("--n", type=int, default=600, help="items at most (600)")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed; -1 keeps order (0)")
    parser.add_argument("--from", dest="source", default="random_test", help="source split")
    args = parser.parse_args()
    relations = [r.strip() for r in args.relations.split(",") if r.strip()]
    count = relation_split(Path(args.data), args.name, relations, args.n, args.seed, args.source)
    print(f"{args.data}/{args.name}.jsonl: {count} items of {', '.join(relations)}")


if __name__ == "__main__":
    main()
