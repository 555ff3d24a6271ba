"""The CLI wires every subcommand and reports errors without a traceback."""

import pytest

from byg.cli import build_parser, main


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("train", "edit", "demo", "pretrain-base", "data", "eval", "cache", "export"):
        assert cmd in out


def test_train_flags_become_config_overrides(tmp_path, capsys):
    args = build_parser().parse_args(["train", "--lora-targets", "qkv, fc1", "--skip-bad-data"])
    assert args.lora_targets == "qkv, fc1" and args.skip_bad_data
    rc = main(["train", "--set", "byg.alpah=1", "--out", str(tmp_path)])
    assert rc == 1
    assert "did you mean 'alpha'" in capsys.readouterr().err
