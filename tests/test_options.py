"""A method owns its settings: every option a method declares (``Method.options``) is a
``TrainConfig`` field, a ``train`` flag that reaches that field, a row of the CLI reference and
of the API page's table, and is checked by ``TrainConfig.validate``; driven from the registry,
so a method whose option is missing anywhere fails here."""

import dataclasses

import pytest

from debiaslab import UserError
from debiaslab.cli import build_parser, config_from_args
from debiaslab.clidoc import cli_reference, options_reference
from debiaslab.config import TrainConfig
from debiaslab.methods import METHODS

DECLARED = [(m.name, o) for m in METHODS.values() for o in m.options]
SAMPLE = {int: "7", float: "0.5", str: "mlp"}  # a valid value of each type, as typed


@pytest.fixture(scope="module")
def train_help():
    return build_parser()._train_parser.format_help()


@pytest.fixture(scope="module")
def reference():
    return cli_reference(), options_reference()


def test_the_registry_declares_the_later_methods_settings():
    names = {o.name for _, o in DECLARED}
    assert {"jtt_steps", "groupdro_eta", "lc_mixup", "be_tau", "denetdm_deep"} <= names
    assert all(o.help and o.source for _, o in DECLARED)


@pytest.mark.parametrize("method,option", DECLARED, ids=[f"{m}-{o.name}" for m, o in DECLARED])
def test_a_declared_option_is_everywhere_it_must_be(method, option, train_help, reference):
    cli_page, api_table = reference
    assert option.name in {f.name for f in dataclasses.fields(TrainConfig)}
    assert f"--{option.name}" in train_help and f"--{option.name}" in cli_page
    assert f"| `{option.name}` |" in api_table
    sample = option.choices[-1] if option.choices else SAMPLE.get(option.type)
    flag = [f"--{option.name}"] if option.type is bool else [f"--{option.name}", sample]
    args = build_parser().parse_args(["train", "--method", method, *flag])
    value = True if option.type is bool else option.type(sample)
    assert getattr(config_from_args(args), option.name) == value
    cfg = TrainConfig(method=method).resolved()
    default = option.default if option.default is not None else getattr(cfg, option.name)
    assert getattr(cfg, option.name) == default is not None


@pytest.mark.parametrize(
    "method,setting,message",
    [
        ("jtt", dict(jtt_steps=0), "--jtt_steps must be a positive integer, got 0"),
        ("groupdro", dict(groupdro_eta=float("inf")), "--groupdro_eta must be a positive number"),
        ("lc", dict(lc_prior_alpha=1.0), r"--lc_prior_alpha must be in \[0, 1\), got 1.0"),
        ("lff_be", dict(be_agreement=6), "--be_agreement 6 is more than --be_num_models 5"),
        ("denetdm", dict(denetdm_deep="vgg"), "--denetdm_deep 'vgg' is not a model"),
        ("vanilla", dict(jtt_steps=5), "--jtt_steps is a setting of jtt, not of vanilla"),
    ],
)
def test_options_are_checked_from_their_declaration(method, setting, message):
    with pytest.raises(UserError, match=message):
        TrainConfig(method=method, **setting).resolved().validate()


def test_the_reference_flag_names_of_bias_ensemble_still_work():
    args = build_parser().parse_args(
        ["train", "--train_lff_be", "--num_bias_models", "3", "--agreement", "2"]
    )
    cfg = config_from_args(args)
    assert (cfg.method, cfg.be_num_models, cfg.be_agreement) == ("lff_be", 3, 2)


def test_an_option_with_choices_refuses_others_in_the_api_and_the_cli():
    from debiaslab.config import METHOD_FIELDS, METHOD_OPTIONS
    from tests.conftest import run_cli

    with_choices = [o for o in METHOD_OPTIONS.values() if o.choices]
    assert {o.name for o in with_choices} >= {"lc_variant", "groupdro_sampler", "jtt_error_draws"}
    for o in with_choices:
        assert o.default in o.choices and ", ".join(o.choices) in o.describe()
        method = METHOD_FIELDS[o.name][0]
        with pytest.raises(UserError, match=f"--{o.name} 'nope' is not one of its choices"):
            TrainConfig(method=method, **{o.name: "nope"}).validate()
    r = run_cli("train", "--method", "lc", "--lc_variant", "nope")
    assert r.returncode == 2 and "invalid choice: 'nope'" in r.stderr


@pytest.mark.parametrize(
    "method, option, before",
    [
        ("lc", "lc_variant", "earlier_reading"),
        ("groupdro", "groupdro_sampler", "epochs"),
        ("jtt", "jtt_error_draws", "upweight"),
        ("denetdm", "denetdm_stage2", "own_head"),
        ("lff_be", "be_candidates", "cadence"),
        ("disent_be", "be_candidates", "cadence"),
    ],
)
def test_a_run_saved_before_an_option_existed_reads_back_what_it_trained_with(
    method, option, before
):
    """Declared with the option (``Option.saved_before``), read by ``TrainConfig.from_saved``;
    a saved config that has the option keeps its own value, another method's is left alone."""
    from debiaslab.config import TrainConfig

    saved = TrainConfig(method=method).to_dict()
    default = saved.pop(option)
    assert getattr(TrainConfig.from_saved(saved), option) == before
    assert getattr(TrainConfig.from_saved({**saved, option: default}), option) == default
    vanilla = TrainConfig(method="vanilla").to_dict()
    vanilla.pop(option)
    assert getattr(TrainConfig.from_saved(vanilla), option) is None


GENERAL = [
    f
    for f in dataclasses.fields(TrainConfig)
    if f.metadata.get("flag", True) is True and f.name not in {o.name for _, o in DECLARED}
]


@pytest.mark.parametrize("field", GENERAL, ids=[f.name for f in GENERAL])
def test_a_general_option_is_one_declaration_that_makes_its_flag(field, train_help, reference):
    """Declared once (``config.setting``): the flag, its type and choices come from the field."""
    from debiaslab.config import field_type

    cli_page, api_table = reference
    assert f"--{field.name}" in train_help and f"| `{field.name}` |" in api_table
    kind, choices = field_type(field), field.metadata.get("choices")
    sample = choices[-1] if choices else {int: "7", float: "0.5", str: "resnet18"}.get(kind)
    flag = [f"--no-{field.name}"] if kind is bool else [f"--{field.name}", sample]
    cfg = config_from_args(build_parser().parse_args(["train", "--method", "vanilla", *flag]))
    assert getattr(cfg, field.name) == (False if kind is bool else kind(sample))
    untouched = config_from_args(build_parser().parse_args(["train", "--method", "vanilla"]))
    assert getattr(untouched, field.name) == getattr(TrainConfig(), field.name)


@pytest.mark.parametrize(
    "setting,message",
    [
        (dict(q=0.0), r"--q must be in \(0, 1\], got 0.0"),
        (dict(keep_checkpoints=0), "--keep_checkpoints must be a positive integer, got 0"),
        (dict(lr=float("nan")), "--lr must be a positive number, got nan"),
        (dict(on_nonfinite="ignore"), "--on_nonfinite 'ignore' is not one of its choices"),
        (dict(exp="a/b"), "--exp 'a/b' must be a plain name"),
        (dict(wa_start=-1), "--wa_start must be a finite number >= 0, got -1"),
    ],
)
def test_general_options_are_checked_from_their_declaration(setting, message):
    with pytest.raises(UserError, match=message):
        TrainConfig(**setting).validate()


def test_the_reference_spellings_of_negative_flags_still_work():
    args = build_parser().parse_args(
        ["train", "--train_ours", "--no_amp", "--no_progress", "--no_compile", "--use_lr_decay"]
    )
    cfg = config_from_args(args)
    assert (cfg.amp, cfg.progress, cfg.compile, cfg.use_lr_decay) == (False, False, False, True)
