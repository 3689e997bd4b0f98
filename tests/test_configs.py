"""Every option of every config group composes, validates against its schema and instantiates; typos
(keys, types, group options) fail with the key's name on one line."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from ofa import factory
from ofa.lit_module import OFALitModule
from ofa.modules.config import PRESET_DIR, PRESETS, OFAConfig, parse_preset
from ofa.schemas import register_schemas
from ofa.tasks import TASKS
from ofa.utils.config_errors import format_config_error

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "vq")  # vq: train_vq.yaml's group
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
GPU_TRAINERS = ("gpu", "ddp", "fsdp")


def data_overrides(data_dir: Path) -> list[str]:
    """Point data and tokenizer at the tests' tiny synthetic dataset."""
    return [f"paths.root_dir={data_dir.parent}", "data.synthetic_dir=null",
            f"data.train_shards={data_dir}/train-*.tar", f"data.val_shards={data_dir}/val-*.tar",
            f"data.test_shards={data_dir}/test-*.tar", f"tokenizer.path={data_dir}/tokenizer.json",
            "data.num_workers=0"]


_REGISTERED: set[tuple[str, ...]] = set()


def compose_cfg(overrides: list[str], tmp_path: Path | None = None):
    """Compose `train.yaml` as train.py would (with the hydra node, so `${hydra:...}` resolves). The schemas are
    stored once per set of tasks (storing them all costs about as much as a composition)."""
    if tuple(TASKS) not in _REGISTERED:
        register_schemas()
        _REGISTERED.add(tuple(TASKS))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    if tmp_path is not None:
        cfg.hydra.runtime.output_dir = str(tmp_path / "out")
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")


def test_every_group_has_options() -> None:
    for group in ("model", "task", "data", "tokenizer", "optim", "schedule", "trainer", "logger", "callbacks",
                  "debug", "experiment", "hparams_search"):
        assert group in GROUPS and list((CONF / group).glob("*.yaml")), group
    assert {"cpu", "gpu", "ddp", "ddp_sim", "fsdp"} <= {o for g, o in OPTIONS if g == "trainer"}
    assert {"wandb", "csv", "tensorboard", "none"} <= {o for g, o in OPTIONS if g == "logger"}


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_resolves(group: str, option: str, synthetic_data_dir: Path, tmp_path: Path) -> None:
    overrides = [f"{group}={option}"] + ([] if group == "experiment" else data_overrides(synthetic_data_dir))
    if (group, option) == ("data", "mixture"):
        overrides.append("task=mixture")  # its entries read the mixture's weights
    cfg = compose_cfg(overrides, tmp_path)
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.to_container(job, resolve=True)  # every interpolation of the job config resolves
    assert factory.typed(cfg.model).d_model > 0  # the schema-typed nodes build their dataclasses
    for task_cfg in cfg.task.tasks.values() if cfg.task.get("tasks") else [cfg.task]:
        assert task_cfg.name in TASKS
        factory.typed(task_cfg)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_model_option_is_its_preset(name: str, tmp_path: Path) -> None:
    """`model=<name>` composes to `OFAConfig.from_preset(name)`: Hydra and the model read the one preset file."""
    assert factory.typed(compose_cfg([f"model={name}"], tmp_path).model) == OFAConfig.from_preset(name)
    assert (CONF / "model" / f"{name}.yaml").resolve() == PRESET_DIR / f"{name}.yaml"
    assert parse_preset((CONF / "model" / f"{name}.yaml").read_text()) == PRESETS[name]


def test_model_overrides_apply_on_top_of_the_preset(tmp_path: Path) -> None:
    cfg = factory.typed(compose_cfg(["model=ofa_tiny", "model.d_model=512", "model.dropout=0.1"], tmp_path).model)
    assert cfg == OFAConfig.from_preset("ofa_tiny", d_model=512, dropout=0.1)


MIXTURE = {"caption", "vqa", "grounding", "snli_ve", "image_classify"}  # the default run's tasks


def test_the_mixture_picks_its_model_and_the_command_line_wins(tmp_path: Path) -> None:
    """`task=mixture` brings ofa_micro (the default run's model); `model=...` beats it, and other tasks keep the
    primary config's ofa_nano."""
    choice = lambda overrides: compose_cfg(overrides, tmp_path).hydra.runtime.choices["model"]  # noqa: E731
    assert choice(["task=mixture"]) == "ofa_micro"
    assert choice(["task=mixture", "model=ofa_nano"]) == "ofa_nano"
    assert choice(["task=caption"]) == "ofa_nano"


def test_default_config_instantiates(synthetic_data_dir: Path, tmp_path: Path) -> None:
    """`python train.py`: the task mixture on the synthetic world, ofa_micro (the mixture's model), METEOR off."""
    cfg = compose_cfg([f"data.synthetic_dir={synthetic_data_dir}", "data.num_workers=0",
                       f"tokenizer.path={synthetic_data_dir}/tokenizer.json", "logger=csv"], tmp_path)
    assert cfg.hydra.runtime.choices["task"] == "mixture" and cfg.hydra.runtime.choices["model"] == "ofa_micro"
    assert cfg.model.d_model == PRESETS["ofa_micro"]["d_model"] == 2 * PRESETS["ofa_nano"]["d_model"]
    assert cfg.task.tasks.caption.meteor is False
    tokenizer = factory.build_tokenizer_from(cfg.tokenizer)
    tasks = factory.build_tasks(cfg.task, tokenizer)
    dm = factory.build_datamodule(cfg.data, tasks)
    module = factory.build_lit_module(cfg, tasks, tokenizer)
    trainer = factory.build_trainer(cfg.trainer, factory.build_logger(cfg.logger),
                                    factory.build_callbacks(cfg.callbacks))
    assert isinstance(module, OFALitModule) and module.model_cfg.vocab_size == len(tokenizer)
    assert set(tasks) == MIXTURE and dm.eval_task_names("val") == list(tasks)
    assert trainer.checkpoint_callback.monitor == "val/vqa/score"
    module.configure_model()
    assert module.model is not None
    cfg.trainer.enable_progress_bar = False  # the bar off with the default callbacks (which hold one)
    quiet = factory.build_trainer(cfg.trainer, False, factory.build_callbacks(cfg.callbacks))
    assert quiet.progress_bar_callback is None and quiet.checkpoint_callback.monitor == "val/vqa/score"


def test_caption_recipe_keeps_the_old_default(tmp_path: Path) -> None:
    """`experiment=caption_nano_synthetic` is the caption-only run that `python train.py` used to be."""
    cfg = compose_cfg(["experiment=caption_nano_synthetic"], tmp_path)
    assert cfg.task.name == "caption" and cfg.task.image_size == 96 and cfg.task.meteor is False
    assert cfg.data.batch_size * cfg.data.batches_per_epoch * cfg.trainer.max_epochs == 16 * 150 * 8
    assert cfg.trainer.check_val_every_n_epoch == 2 and cfg.trainer.limit_val_batches == 1.0


def test_mixture_instantiates(synthetic_data_dir: Path, tmp_path: Path) -> None:
    cfg = compose_cfg(["task=mixture", f"data.synthetic_dir={synthetic_data_dir}", "data.num_workers=0",
                       f"tokenizer.path={synthetic_data_dir}/tokenizer.json"], tmp_path)
    tokenizer = factory.build_tokenizer_from(cfg.tokenizer)
    tasks = factory.build_tasks(cfg.task, tokenizer)
    dm = factory.build_datamodule(cfg.data, tasks)
    module = factory.build_lit_module(cfg, tasks, tokenizer)
    assert set(tasks) == MIXTURE and dm.eval_task_names("val") == list(tasks)
    assert set(module.metrics) == MIXTURE
    assert cfg.callbacks.model_checkpoint.monitor == "val/vqa/score"


@pytest.mark.parametrize("option", [o for g, o in OPTIONS if g == "trainer"])
def test_trainer_options_instantiate(option: str, synthetic_data_dir: Path, tmp_path: Path) -> None:
    cfg = compose_cfg([f"trainer={option}", "logger=none", "callbacks=none"] + data_overrides(synthetic_data_dir),
                      tmp_path)
    if option == "fsdp":  # FSDPStrategy needs GPUs to set up; its object builds anywhere
        strategy = factory.build_strategy(cfg.trainer.strategy)
        assert isinstance(strategy, pl.strategies.FSDPStrategy)
        return
    if option in GPU_TRAINERS:
        cfg.trainer.accelerator, cfg.trainer.precision = "cpu", "32-true"
        cfg.trainer.devices = 2 if option == "ddp" else 1
    trainer = factory.build_trainer(cfg.trainer, False, [])
    assert isinstance(trainer, pl.Trainer)
    if option in ("ddp", "ddp_sim"):
        assert trainer.num_devices == 2 and "DDP" in type(trainer.strategy).__name__


@pytest.mark.parametrize("option", [o for g, o in OPTIONS if g in ("logger", "callbacks")])
def test_logger_and_callbacks_instantiate(option: str, synthetic_data_dir: Path, tmp_path: Path) -> None:
    group = "logger" if option in {o for g, o in OPTIONS if g == "logger"} else "callbacks"
    cfg = compose_cfg([f"{group}={option}"] + data_overrides(synthetic_data_dir), tmp_path)
    if group == "logger":
        logger = factory.build_logger(cfg.logger)
        assert (logger is False) == (option == "none")
    else:
        assert all(isinstance(c, pl.Callback) for c in factory.build_callbacks(cfg.callbacks))


def test_experiment_overrides_groups(tmp_path: Path) -> None:
    cfg = compose_cfg(["experiment=caption_large"], tmp_path)
    assert cfg.model.d_model == PRESETS["ofa_large"]["d_model"] and cfg.task.image_size == 480
    assert cfg.optim.lr == pytest.approx(1e-5) and cfg.module.freeze_embeddings
    base = compose_cfg(["experiment=caption_base"], tmp_path)
    assert base.model.d_model == PRESETS["ofa_base"]["d_model"] and base.trainer.max_epochs == 5
    cli = compose_cfg(["experiment=caption_nano_synthetic", "model=ofa_tiny"], tmp_path)
    assert cli.model.d_model == PRESETS["ofa_tiny"]["d_model"]  # the command line beats the recipe


# OFA's GLUE scripts: (batch per GPU, GPUs); all ofa_large, lr 3e-5, 5 epochs, prompt_type src, no smoothing
GLUE_SCRIPTS = {"cola": (16, 2), "sst2": (16, 4), "mnli": (8, 8), "rte": (8, 2), "qnli": (8, 8), "mrpc": (16, 2),
                "qqp": (8, 8)}


@pytest.mark.parametrize("name", sorted(GLUE_SCRIPTS))
def test_glue_presets_follow_ofas_scripts(name: str, tmp_path: Path) -> None:
    cfg = compose_cfg([f"experiment={name}_large"], tmp_path)
    assert cfg.task.name == name and cfg.task.prompt_type == "src" and cfg.task.label_smoothing == 0.0
    assert (cfg.data.batch_size, cfg.trainer.devices) == GLUE_SCRIPTS[name]
    assert cfg.model.d_model == PRESETS["ofa_large"]["d_model"] and cfg.model.encoder_drop_path_rate == 0.1
    assert cfg.optim.lr == pytest.approx(3e-5) and cfg.trainer.max_epochs == 5 and cfg.tokenizer.kind == "ofa"
    assert cfg.data.root.endswith(f"data/{name}") and cfg.data.synthetic_dir is None
    base = compose_cfg([f"experiment={name}_base"], tmp_path)
    assert base.model.d_model == PRESETS["ofa_base"]["d_model"] and base.task.name == name
    grid = compose_cfg([f"experiment={name}_large", "hparams_search=glue_grid"], tmp_path).hydra.sweeper.params
    assert grid["optim.lr"] == "1e-4,7e-5,6e-5,5e-5,3e-5" and grid["trainer.max_epochs"] == "5,7,10"


def test_gigaword_presets(tmp_path: Path) -> None:
    cfg = compose_cfg(["experiment=gigaword_large"], tmp_path)
    gen = cfg.task.generation
    assert (gen.beam_size, gen.len_penalty, gen.max_len_b, gen.no_repeat_ngram_size) == (6, 0.7, 32, 3)
    assert cfg.task.noise_ratio == 0.2 and cfg.task.label_smoothing == 0.1 and cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.data.batch_size * cfg.trainer.devices * cfg.trainer.accumulate_grad_batches == 512
    assert compose_cfg(["experiment=gigaword_base"], tmp_path).model.d_model == PRESETS["ofa_base"]["d_model"]


def test_the_default_is_the_from_scratch_optimizer_and_recipes_fine_tune_with_plain_adamw(tmp_path: Path) -> None:
    default = compose_cfg([], tmp_path).optim
    assert dict(default.lr_scale) == {"image_proj": 0.1, "decoder": 0.3} and default.lr == pytest.approx(3e-4)
    assert dict(compose_cfg(["optim=adamw"], tmp_path).optim.lr_scale) == {}
    for recipe in ("caption_large", "vqa_large", "caption_nano_synthetic"):
        assert dict(compose_cfg([f"experiment={recipe}"], tmp_path).optim.lr_scale) == {}, recipe


def test_sweep_config(tmp_path: Path) -> None:
    cfg = compose_cfg(["hparams_search=lr"], tmp_path)
    assert "optim.lr" in cfg.hydra.sweeper.params


def test_data_follows_task(tmp_path: Path) -> None:
    cfg = compose_cfg([], tmp_path)
    assert cfg.hydra.runtime.choices["data"] == cfg.hydra.runtime.choices["task"] == "mixture"
    single = compose_cfg(["task=vqa"], tmp_path)  # no data option of its own: the synthetic base alone
    assert single.data.root == single.data.synthetic_dir and single.data.sources == {}
    other = compose_cfg(["data=coco_caption"], tmp_path)
    assert other.hydra.runtime.choices["data"] == "coco_caption"
    text = compose_cfg(["task=mnli"], tmp_path)  # text tasks: the synthetic world's text folder of the task
    assert text.data.root == f"{text.data.synthetic_dir}/text/mnli" and text.task.prompt_type == "src"
    own = compose_cfg(["task=gigaword", "data.synthetic_dir=null"], tmp_path)
    assert own.data.root is None  # own data: data.root follows data.train_shards (ofa.own_data)


@pytest.mark.parametrize("override, key", [
    ("model.d_modl=3", "d_modl"),
    ("model.d_model=abc", "model.d_model"),
    ("task.beam=3", "beam"),
    ("task.tasks.caption.generation.beams=3", "beams"),  # the default task is the mixture
    ("data.batch_sze=3", "batch_sze"),
    ("trainer.max_epoch=1", "max_epoch"),
    ("trainer.max_epochs=abc", "trainer.max_epochs"),
    ("optim.learning_rate=1", "learning_rate"),
    ("schedule.warmup=3", "warmup"),
    ("callbacks.model_checkpoint.monitr=x", "monitr"),
    ("logger.projet=x", "projet"),
    ("module.freeze_embedings=true", "freeze_embedings"),
    ("sed=3", "sed"),
])
def test_typo_fails_with_key_name(override: str, key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg([override], tmp_path)
    message = format_config_error(info.value)
    assert key in message and "\n" not in message


def test_unknown_option_lists_choices(tmp_path: Path) -> None:
    with pytest.raises(MissingConfigException) as info:
        compose_cfg(["model=ofa_gigantic"], tmp_path)
    message = format_config_error(info.value)
    assert "ofa_gigantic" in message and "ofa_nano" in message and "ofa_huge" in message and "\n" not in message
    assert "schema" not in message


def test_task_schemas_follow_task_configs() -> None:
    from ofa.schemas import task_config_class, task_schema

    for name, cls in TASKS.items():
        schema = task_schema(name, cls)
        fields = {f.name for f in dataclasses.fields(schema)}
        assert {f.name for f in dataclasses.fields(task_config_class(cls))} | {"name", "monitor"} == fields


def test_checkpoint_mode_follows_the_monitor(synthetic_data_dir: Path, tmp_path: Path) -> None:
    """Best checkpoint: the highest metric, or the lowest loss / FID (`image_gen` without a scorer monitors loss)."""
    base = data_overrides(synthetic_data_dir)
    assert compose_cfg(base, tmp_path).callbacks.model_checkpoint.mode == "max"
    assert compose_cfg([*base, "task=image_gen"], tmp_path).callbacks.model_checkpoint.mode == "min"
    assert compose_cfg([*base, "task=image_gen", "task.monitor=fid"], tmp_path).callbacks.model_checkpoint.mode == "min"
    assert compose_cfg([*base, "task=image_gen", "task.monitor=judge_all"],
                       tmp_path).callbacks.model_checkpoint.mode == "max"


@pytest.mark.parametrize("size", ["tiny", "huge"])  # 384 and 480 pixels; every preset composes with ddp above
def test_pretrain_presets_follow_ofas_scripts_with_ddp_or_fsdp(size: str, tmp_path: Path) -> None:
    for trainer in ("fsdp",):  # their default trainer=ddp composes in test_option_composes_and_resolves
        cfg = compose_cfg([f"experiment=pretrain_{size}", f"trainer={trainer}"], tmp_path)
        OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
        assert cfg.model.d_model == PRESETS[f"ofa_{size}"]["d_model"] and cfg.optim.lr == pytest.approx(1e-4)
        assert (cfg.schedule.warmup_ratio, cfg.trainer.gradient_clip_val, cfg.trainer.max_epochs) == (0.01, 5.0, 50)
        assert cfg.task.tasks.pretrain.label_smoothing == 0.0 and cfg.task.image_size in (384, 480)
        assert {name: cfg.task.tasks[name].conf for name in ("text_infill", "image_infill", "detection")} == {
            "text_infill": 2.0, "image_infill": 2.0, "detection": 2.0}
        assert {name: (s.every, s.count) for name, s in cfg.data.sources.items() if s.every} == {
            "text_infill": (8, 2), "image_infill": (8, 1), "detection": (8, 1)}
        if trainer == "fsdp":
            assert isinstance(factory.build_strategy(cfg.trainer.strategy), pl.strategies.FSDPStrategy)
