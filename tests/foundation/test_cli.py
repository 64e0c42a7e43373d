"""The command line: default recipe, --print_config round trip, fast_dev_run and bad input."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lit_explain.cli import EXTRA_COMMANDS, main, recipe_path

REPO = Path(__file__).resolve().parents[2]


def _print_config(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(["fit", *args, "--print_config"])
    assert info.value.code in (0, None)
    return capsys.readouterr().out


def test_default_recipe_is_the_shapes_demo(capsys):
    config = yaml.safe_load(_print_config(capsys))
    assert config["data"]["class_path"] == "lit_explain.data.ShapesDataModule"
    assert config["model"]["backbone"] == "timm:resnet10t_half"
    assert config["model"]["backbone_kwargs"] is None  # so --model.backbone alone switches the network
    assert (REPO / "configs" / "shapes_demo.yaml").resolve() == recipe_path().resolve()


def test_print_config_round_trip(capsys, tmp_path):
    first = _print_config(capsys, "--data.init_args.train_size=123", "--model.lr=0.01")
    saved = tmp_path / "config.yaml"
    saved.write_text(first)
    second = _print_config(capsys, "--config", str(saved))
    assert yaml.safe_load(first) == yaml.safe_load(second)
    assert yaml.safe_load(second)["data"]["init_args"]["train_size"] == 123


def test_unknown_config_key_is_named(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--model.learning_rate=0.1"])
    assert info.value.code == 2
    assert "learning_rate" in capsys.readouterr().err


def test_bad_backbone_names_the_valid_choices(capsys):
    assert main(["fit", "--model.backbone=resnet19", "--trainer.fast_dev_run=true"]) == 2
    err = capsys.readouterr().err
    assert "resnet19" in err and "resnet18" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("option", "named"),
    [
        ("--data.init_args.label_noise=1.5", "data.label_noise must be in [0, 1), got 1.5"),
        ("--data.init_args.cue_probability=2", "cue_probability"),
    ],
)
def test_a_bad_data_setting_is_one_line_not_a_namespace_dump(capsys, option, named):
    # jsonargparse builds the data module inside its type checks and wraps our error in its own.
    assert main(["fit", option, "--trainer.fast_dev_run=true", "--trainer.logger=false"]) == 2
    err = capsys.readouterr().err
    assert named in err and "Namespace(" not in err and "Union subtypes" not in err
    assert err.count("\n") == 1


def test_num_classes_mismatch_is_reported(capsys, tmp_path):
    code = main(
        [
            "fit",
            "--model.num_classes=10",
            "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false",
        ]
    )
    assert code == 2
    assert "num_classes=10 disagrees with the data module, which has 6 classes" in capsys.readouterr().err


def test_help_and_unknown_command(capsys):
    assert main([]) == 0 and "fit" in capsys.readouterr().out
    assert main(["fly"]) == 2 and "unknown command 'fly'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(EXTRA_COMMANDS))
def test_every_registered_subcommand_imports(name):
    from lit_explain.cli import _extra_command

    assert callable(_extra_command(name))


def test_fast_dev_run_through_the_real_cli(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lit_explain",
            "fit",
            "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fast_dev_run" in result.stderr + result.stdout
