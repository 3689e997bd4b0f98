"""CaptionTask (spec §3.2) and the caption metrics: checked against coco-caption's published demo numbers."""
from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from PIL import Image

from ofa.datamodules.collate import collate
from ofa.modules.config import OFAConfig
from ofa.modules.generation import GenerationConfig
from ofa.modules.model import OFAModel
from ofa.tasks.caption import CaptionConfig, CaptionTask
from ofa.tasks.metrics import CaptionScores, coco_caption_scores

DEMO = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "coco_caption_demo"
# tylin/coco-caption cocoEvalCapDemo.ipynb, evaluated on the 1000 result images of this pair
PUBLISHED = {"bleu1": 0.579, "bleu2": 0.404, "bleu3": 0.279, "bleu4": 0.191, "meteor": 0.195,
             "rouge_l": 0.396, "cider": 0.600}


def raw_sample(captions: list[str], key: str = "s0", image: bool = True) -> dict:
    return {"id": key, "__key__": key, "captions": captions,
            "image": Image.new("RGB", (40, 30), (200, 30, 30)) if image else None}


@pytest.fixture
def task(tokenizer) -> CaptionTask:
    gen = GenerationConfig(beam_size=2, max_len_b=5, no_repeat_ngram_size=3, return_all=False)
    return CaptionTask(tokenizer, CaptionConfig(image_size=32, max_tgt_length=3, generation=gen, meteor=False,
                                                ptb_tokenizer=False))


@pytest.fixture(scope="module")
def demo() -> tuple[dict[str, str], dict[str, list[str]]]:
    if not DEMO.is_dir():
        pytest.skip(f"fixture {DEMO} not present")
    gt = json.loads((DEMO / "captions_val2014_fakecap_subset_gt.json").read_text())
    res = json.loads((DEMO / "captions_val2014_fakecap_results.json").read_text())
    refs: dict[str, list[str]] = defaultdict(list)
    for ann in gt["annotations"]:
        refs[str(ann["image_id"])].append(ann["caption"])
    hyps = {str(r["image_id"]): r["caption"] for r in res}
    return hyps, {k: refs[k] for k in hyps}


# ---- preprocess ------------------------------------------------------------------------------------
def test_train_sample_layout(task: CaptionTask, tokenizer) -> None:
    sample = task.preprocess(raw_sample(["A red, big circle at the top!"]), "train")
    tok = tokenizer
    assert sample.source.tolist() == [tok.bos] + tok.encode(" what does the image describe?") + [tok.eos]
    words = tok.encode(" A red big")  # punctuation removed, cut to max_tgt_length=3 words
    assert sample.target.tolist() == words + [tok.eos]
    assert sample.prev_output_tokens.tolist() == [tok.bos] + words
    assert sample.patch_image.shape == (3, 32, 32) and sample.patch_mask and sample.task == "caption"


def test_eval_sample_keeps_all_references(task: CaptionTask, tokenizer) -> None:
    sample = task.preprocess(raw_sample(["A red, big circle at the top!", "a circle."]), "val")
    assert sample.meta["references"] == ["A red big circle at the top", "a circle"]
    assert sample.target.tolist() == tokenizer.encode(" A red big circle at the top") + [tokenizer.eos]


def test_train_picks_a_random_caption(task: CaptionTask, tokenizer) -> None:
    raw = raw_sample(["one", "two", "three"])
    random.seed(0)  # training picks with the global RNG (the data stream swaps in its private state)
    picked = {tokenizer.decode(task.preprocess(raw, "train").target.tolist()).strip() for _ in range(30)}
    assert picked == {"one", "two", "three"}


def test_samples_without_captions_or_image_are_skipped(task: CaptionTask) -> None:
    assert task.preprocess(raw_sample([]), "train") is None
    assert task.preprocess({"id": "x", "image": Image.new("RGB", (8, 8))}, "train") is None
    assert task.preprocess(raw_sample(["a cat"], image=False), "val") is None


# ---- evaluate --------------------------------------------------------------------------------------
def test_evaluate_decodes_and_updates_metrics(task: CaptionTask, tokenizer) -> None:
    samples = [task.preprocess(raw_sample([f"a red circle {i}", "a shape"], key=f"s{i}"), "val") for i in range(3)]
    batch = collate(samples, tokenizer.pad)
    torch.manual_seed(0)
    model = OFAModel(OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer))).eval()
    metrics = task.build_metrics()
    rows = task.evaluate(model, batch, metrics)
    assert [r["id"] for r in rows] == ["s0", "s1", "s2"]
    assert all(isinstance(r["prediction"], str) and len(r["prediction"].split()) <= 5 for r in rows)
    scores = metrics["coco"].compute()
    assert set(scores) == {"cider", "bleu4", "rouge_l"}  # METEOR switched off
    assert all(torch.isfinite(v) for v in scores.values())


# ---- metrics ---------------------------------------------------------------------------------------
def test_scores_match_published_coco_caption_demo(demo) -> None:
    """PTB tokenizer + METEOR (Java): the numbers coco-caption's demo notebook prints for this pair."""
    hyps, refs = demo
    scores = coco_caption_scores(hyps, refs, meteor=True, ptb=True)
    for name, value in PUBLISHED.items():
        assert scores[name] == pytest.approx(value, abs=1.5e-3), name


def test_cider_identical_high_shuffled_low(demo) -> None:
    hyps, refs = demo
    ids = sorted(hyps)[:200]
    refs = {k: refs[k] for k in ids}
    identical = {k: refs[k][0] for k in ids}
    order = ids[1:] + ids[:1]
    shuffled = {k: refs[o][0] for k, o in zip(ids, order)}
    high = coco_caption_scores(identical, refs, meteor=False, ptb=False)["cider"]
    low = coco_caption_scores(shuffled, refs, meteor=False, ptb=False)["cider"]
    assert high > 2.0 and low < 0.2


def test_metric_state_roundtrip_dedupes_and_resets(demo) -> None:
    hyps, refs = demo
    ids = sorted(hyps)[:50]
    metric = CaptionScores(meteor=False, ptb_tokenizer=False)
    metric.update(ids[:30], [hyps[i] for i in ids[:30]], [refs[i] for i in ids[:30]])
    metric.update(ids[25:], [hyps[i] for i in ids[25:]], [refs[i] for i in ids[25:]])  # 5 repeated ids
    decoded_hyps, decoded_refs = metric.decoded()
    assert decoded_hyps == {i: hyps[i] for i in ids} and decoded_refs == {i: refs[i] for i in ids}
    expected = coco_caption_scores({i: hyps[i] for i in ids}, {i: refs[i] for i in ids}, meteor=False, ptb=False)
    assert metric.compute()["cider"].item() == pytest.approx(expected["cider"])
    metric.reset()
    assert metric.decoded() == ({}, {})


def test_metric_without_data_scores_zero() -> None:
    metric = CaptionScores(meteor=False, ptb_tokenizer=False)
    with pytest.warns(UserWarning):
        scores = metric.compute()
    assert all(v.item() == 0.0 for v in scores.values())


def _ddp_worker(rank: int, world: int, port: int, hyps: dict, refs: dict, out: str, empty_rank: bool) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    if rank == 0:
        ids = sorted(hyps) if empty_rank else sorted(hyps)[:20]
    else:  # uneven, with duplicates across ranks; or nothing at all
        ids = [] if empty_rank else sorted(hyps)[20:30] + sorted(hyps)[:2]
    metric = CaptionScores(meteor=False, ptb_tokenizer=False)
    metric.update(ids, [hyps[i] for i in ids], [refs[i] for i in ids])
    scores = {k: v.item() for k, v in metric.compute().items()}
    Path(out, f"rank{rank}.json").write_text(json.dumps(scores))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("empty_rank", [False, True], ids=["uneven", "empty_rank"])
def test_metric_syncs_across_ranks(demo, tmp_path: Path, empty_rank: bool) -> None:
    hyps, refs = demo
    ids = sorted(hyps)[:30]
    hyps, refs = {i: hyps[i] for i in ids}, {i: refs[i] for i in ids}
    port = random.Random().randint(20000, 40000)
    torch.multiprocessing.start_processes(_ddp_worker, args=(2, port, hyps, refs, str(tmp_path), empty_rank), nprocs=2,
                                          start_method="fork")  # no fresh interpreter to import (~5 s each)
    expected = coco_caption_scores(hyps, refs, meteor=False, ptb=False)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["cider"] == pytest.approx(expected["cider"]) and got["bleu4"] == pytest.approx(expected["bleu4"])


def test_text_only_keeps_decoding_and_scst_candidates_out_of_the_image_tokens(tokenizer) -> None:
    """A model that prefers `<code_i>` tokens (as SCST from scratch made one) captions with them, unless text_only."""
    from ofa.modules.config import OFAConfig
    from ofa.modules.generation import GenerationConfig
    from ofa.modules.model import OFAModel
    from ofa.tasks.caption import CaptionConfig, CaptionTask
    from ofa.tasks.scst import ScstConfig

    torch.manual_seed(0)
    model = OFAModel(OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer), d_model=32, encoder_layers=1,
                                           decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                                           encoder_ffn_dim=64, decoder_ffn_dim=64)).eval()
    with torch.no_grad():  # every decoder state scores the image codes highest
        codes = slice(tokenizer.code_offset, tokenizer.code_offset + tokenizer.num_codes)
        model.encoder.embed_tokens.weight[codes] += 5.0
        model.decoder.layer_norm.bias.fill_(1.0)
    gen = GenerationConfig(beam_size=2, max_len_b=4)
    scst = ScstConfig(enabled=True, candidates=2, generation=GenerationConfig(beam_size=2, max_len_b=4, return_all=True))
    src = torch.tensor([[tokenizer.bos, 100, 101, tokenizer.eos]])
    images, masks = torch.zeros(1, 3, 32, 32), torch.ones(1, dtype=torch.bool)
    is_text = lambda t: int(t) < tokenizer.mask or int(t) == tokenizer.eos  # noqa: E731
    for text_only in (False, True):
        task = CaptionTask(tokenizer, CaptionConfig(image_size=32, generation=gen, scst=scst, meteor=False,
                                                    ptb_tokenizer=False, text_only=text_only))
        hyp = task.generator(model).generate(src, images, masks)[0][0]  # best hypothesis of sample 0
        cands = task.training_criterion().candidates(model, {"src_tokens": src, "patch_images": images,
                                                             "patch_masks": masks})
        tokens = hyp.tokens.tolist() + [t for c in cands[0] for t in c.tolist()]
        assert all(map(is_text, tokens)) == text_only, (text_only, tokens)
