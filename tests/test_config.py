"""skd.config: --config files (JSON, YAML) under the command line, strict keys and values,
the resolved configuration written and read back, --print-config."""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from skd.config import add_config_args, config_dict, config_text, dump_config, parse_with_config
from skd.errors import SkdError
from skd.options import size_pair, str2bool, train_parser

HAVE_YAML = importlib.util.find_spec("yaml") is not None
NEEDS_YAML = pytest.mark.skipif(not HAVE_YAML, reason="PyYAML not installed (pip install 'skd[config]')")


def small_parser() -> argparse.ArgumentParser:
    """The kinds of flags skd-train has (skd/options.py): floats, ints, str2bool with nargs="?"
    and a None default, paths (one required), nargs="+" floats, choices, size_pair tuples."""
    p = argparse.ArgumentParser(prog="toy")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--teacher-ckpt", type=Path, default=None)
    p.add_argument("--lambda-pi", type=float, default=10.0)
    p.add_argument("--num-steps", type=int, default=40000)
    p.add_argument("--pi", type=str2bool, nargs="?", const=True, default=None)
    p.add_argument("--random-mirror", type=str2bool, nargs="?", const=True, default=True)
    p.add_argument("--scales", type=float, nargs="+", default=[1.0])
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    p.add_argument("--input-size", type=size_pair, default=(512, 512))
    p.add_argument("--resume", default=None)
    add_config_args(p)
    return p


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_json_file_sets_flags_and_command_line_overrides(tmp_path):
    cfg = write(tmp_path, "c.json", json.dumps({
        "data_dir": "data/cs", "lambda-pi": 1, "num_steps": 200, "pi": True, "random_mirror": "False",
        "scales": [0.75, 1, 1.25], "amp": "bf16", "input_size": [96, 128]}))
    args = parse_with_config(small_parser(), ["--config", str(cfg), "--num-steps", "300", "--scales", "2"])
    assert args.data_dir == Path("data/cs")            # required flag given by the file
    assert args.lambda_pi == 1.0 and isinstance(args.lambda_pi, float)
    assert args.num_steps == 300                       # command line wins
    assert args.pi is True and args.random_mirror is False
    assert args.scales == [2.0]                        # command line replaces the whole list
    assert args.amp == "bf16"
    assert args.input_size == (96, 128)                # a list for a one-value flag: "96,128"
    assert args.teacher_ckpt is None and args.resume is None  # defaults where neither says


def test_without_config_it_is_plain_argparse():
    args = parse_with_config(small_parser(), ["--data-dir", "d", "--input-size", "64"])
    assert args.data_dir == Path("d") and args.input_size == (64, 64) and args.config is None


def test_required_flag_still_required_without_the_file(tmp_path):
    cfg = write(tmp_path, "c.json", json.dumps({"num_steps": 5}))
    with pytest.raises(SystemExit):
        parse_with_config(small_parser(), ["--config", str(cfg)])
    # and the parser is left as it was (required again)
    p = small_parser()
    cfg2 = write(tmp_path, "d.json", json.dumps({"data_dir": "x"}))
    parse_with_config(p, ["--config", str(cfg2)])
    assert next(a for a in p._actions if a.dest == "data_dir").required


@pytest.mark.parametrize("content,match", [
    ({"lamda_pi": 1}, r"c\.json: key 'lamda_pi' is not a flag of toy"),
    ({"lambda_pi": "ten"}, r"c\.json: key 'lambda_pi': invalid value 'ten' for --lambda-pi \(expected float\)"),
    ({"num_steps": 2.5}, r"key 'num_steps': invalid value 2\.5 for --num-steps"),
    ({"pi": "maybe"}, r"key 'pi': invalid value 'maybe' for --pi \(maybe: expected True or False"),
    ({"amp": "fp8"}, r"key 'amp': 'fp8' is not one of off, bf16, fp16"),
    ({"input_size": "a,b"}, r"key 'input_size': invalid value 'a,b' for --input-size"),
    ({"lambda_pi": None}, r"key 'lambda_pi': null, but --lambda-pi needs a value"),
    ({"lambda_pi": [1, 2]}, r"key 'lambda_pi': invalid value \[1, 2\] for --lambda-pi \(expected float\)"),
    ({"lambda_pi": {"a": 1}}, r"key 'lambda_pi': \{'a': 1\} is not a single value"),
    ({"lambda_pi": 1, "lambda-pi": 2}, r"keys 'lambda_pi' and 'lambda-pi' both set --lambda-pi"),
    ({"config": "other.json"}, r"key 'config' belongs on the command line"),
    ({"scales": []}, r"--scales needs at least one value"),
])
def test_bad_file_content_is_one_line_error_naming_key_and_file(tmp_path, content, match):
    cfg = write(tmp_path, "c.json", json.dumps({"data_dir": "d", **content}))
    with pytest.raises(SkdError, match=match) as e:
        parse_with_config(small_parser(), ["--config", str(cfg)])
    assert "\n" not in str(e.value) and str(cfg) in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(SkdError, match=r"missing\.json: cannot read it"):
        parse_with_config(small_parser(), ["--config", str(tmp_path / "missing.json")])
    bad = write(tmp_path, "bad.json", "{\"data_dir\": ")
    with pytest.raises(SkdError, match=r"bad\.json: not valid JSON"):
        parse_with_config(small_parser(), ["--config", str(bad)])
    lst = write(tmp_path, "list.json", "[1, 2]")
    with pytest.raises(SkdError, match=r"list\.json: holds a list; expected a mapping"):
        parse_with_config(small_parser(), ["--config", str(lst)])
    other = write(tmp_path, "c.toml", "x = 1")
    with pytest.raises(SkdError, match=r"unknown suffix '\.toml'"):
        parse_with_config(small_parser(), ["--config", str(other)])


@NEEDS_YAML
def test_yaml_file_with_yaml_1_1_pitfalls(tmp_path):
    # `off` would be False under YAML 1.1 and `1e-4` a string: both must reach argparse as written
    cfg = write(tmp_path, "c.yaml", "data-dir: data/cs\namp: off\nlambda_pi: 1e-4\npi: yes\n"
                                    "input_size: [97, 129]\nscales:\n  - 0.5\n  - 1.0\nteacher_ckpt: null\n")
    args = parse_with_config(small_parser(), ["--config", str(cfg)])
    assert args.amp == "off" and args.lambda_pi == 1e-4 and args.pi is True
    assert args.input_size == (97, 129) and args.scales == [0.5, 1.0] and args.teacher_ckpt is None


@NEEDS_YAML
def test_yaml_syntax_error_names_the_file(tmp_path):
    cfg = write(tmp_path, "c.yaml", "data_dir: [unclosed\n")
    with pytest.raises(SkdError, match=r"c\.yaml: not valid YAML"):
        parse_with_config(small_parser(), ["--config", str(cfg)])


def test_yaml_without_pyyaml_is_a_clear_error(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "yaml", None)
    cfg = write(tmp_path, "c.yaml", "data_dir: d\n")
    with pytest.raises(SkdError, match=r"c\.yaml: YAML needs the PyYAML package: pip install 'skd\[config\]'"):
        parse_with_config(small_parser(), ["--config", str(cfg)])
    assert config_text(argparse.Namespace(a=1)).startswith("{")  # printing falls back to JSON


@pytest.mark.parametrize("suffix", [".json", pytest.param(".yaml", marks=NEEDS_YAML)])
def test_dump_reads_back_to_the_same_namespace(tmp_path, suffix):
    p = small_parser()
    argv = ["--data-dir", "data/cs", "--lambda-pi", "1e-5", "--pi", "--random-mirror", "False",
            "--scales", "0.5", "1.75", "--amp", "off", "--input-size", "97,129", "--teacher-ckpt", "t.pth"]
    args = parse_with_config(p, argv)
    path = dump_config(args, tmp_path / f"config{suffix}", p)
    again = parse_with_config(small_parser(), ["--config", str(path)])
    assert vars(again) == {**vars(args), "config": path}
    data = json.loads(path.read_text()) if suffix == ".json" else None
    if data is not None:  # plain values, paths as strings, tuples as lists, no config keys
        assert data["input_size"] == [97, 129] and data["data_dir"] == "data/cs" and "print_config" not in data


def test_dump_of_the_real_training_parser_reads_back(tmp_path):
    p = train_parser()
    add_config_args(p)
    args = parse_with_config(p, ["--data-dir", "d", "--teacher-ckpt", "t.pth", "--pa", "False",
                                 "--input-size", "64,96", "--num-steps", "7"])
    args.world_size = 1  # attributes a program adds after parsing stay out of the file
    path = dump_config(args, tmp_path / "config.json", p)
    assert "world_size" not in json.loads(path.read_text())
    p2 = train_parser()
    add_config_args(p2)
    again = parse_with_config(p2, ["--config", str(path)])
    expected = {k: v for k, v in vars(args).items() if k != "world_size"}
    assert vars(again) == {**expected, "config": path}


def test_print_config_prints_the_resolved_flags_and_exits(tmp_path, capsys):
    cfg = write(tmp_path, "c.json", json.dumps({"data_dir": "d", "num_steps": 5}))
    with pytest.raises(SystemExit) as e:
        parse_with_config(small_parser(), ["--config", str(cfg), "--num-steps", "6", "--print-config"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert ("num_steps: 6" in text) if HAVE_YAML else ('"num_steps": 6' in text)
    assert "print_config" not in text and not any(line.startswith(("config:", '  "config"'))
                                                  for line in text.splitlines())
    # exit_on_print=False leaves it to the caller
    args = parse_with_config(small_parser(), ["--data-dir", "d", "--print-config"], exit_on_print=False)
    assert args.print_config is True
    assert config_dict(args) == config_dict(args, small_parser())
