"""OFA's `negative_sample/` folder (spec §3.11) derived from shards: the synthetic world's, made on first use.

    python -m ofa.datamodules.negative_samples --out DIR 'data/synthetic/train-*.tar'

`all_captions.txt`: every caption of the shards; `object.txt`: every object name (OFA's `gt_objects` strings,
or the labels of the boxes: `detections`, the synthetic world's `objects`); `type2ans.json`: answers by type
(`ofa.tasks.pretrain_negatives.question_type`), all answers under `other`. Sorted, so the same shards give
the same bytes. With OFA's own files, point `task.tasks.pretrain.neg_sample_dir` at its folder instead.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ofa.datamodules.generated_dir import ensure_generated
from ofa.datamodules.shards import expand_shards, read_shard
from ofa.tasks.detection import detections
from ofa.tasks.pretrain_negatives import Negatives, question_type

SUBDIR = "pretrain/negative_sample"


def derive_negatives(patterns: list[str]) -> Negatives:
    """Captions, object names and answers by type of the shards' json records."""
    captions, objects, type2ans = set(), set(), {"other": set()}
    for url in expand_shards(patterns):
        for raw in read_shard(url, None):
            meta = json.loads(raw["json"])
            captions.update(c.strip() for c in meta.get("captions") or [] if c.strip())
            objects.update(o for o in meta.get("objects") or [] if isinstance(o, str))
            objects.update(label for _, label in detections(meta))
            for item in meta.get("vqa") or []:
                for answer in item["answers"]:
                    type2ans.setdefault(question_type(item["question"], answer), set()).add(answer)
                    type2ans["other"].add(answer)
    return Negatives(sorted(captions), sorted(objects), {k: sorted(v) for k, v in sorted(type2ans.items())})


def ensure_negative_samples(synthetic_dir: str) -> Path:
    """`<synthetic_dir>/pretrain/negative_sample/` from the world's training shards (made once)."""
    root = Path(synthetic_dir).expanduser().resolve()
    shards = sorted(str(p) for p in root.glob("train-*.tar"))
    config = {"source": str(root), "shards": [Path(s).name for s in shards]}

    def generate(tmp: Path) -> None:
        derive_negatives(shards).write(tmp)
        (tmp / "summary.json").write_text(json.dumps({"config": config}, indent=1) + "\n", encoding="utf-8")

    return ensure_generated(root / SUBDIR, config, generate)


def is_synthetic_negatives(synthetic_dir: str, neg_sample_dir: str | None) -> bool:
    """Whether `neg_sample_dir` is the synthetic world's folder (then it is made on first use)."""
    if not neg_sample_dir:
        return False
    return Path(neg_sample_dir).expanduser().resolve() == Path(synthetic_dir).expanduser().resolve() / SUBDIR


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", nargs="+", help="shard paths or brace patterns")
    parser.add_argument("--out", required=True, help="folder for all_captions.txt, object.txt, type2ans.json")
    args = parser.parse_args(argv)
    print(derive_negatives(args.shards).write(args.out))


if __name__ == "__main__":
    main()
