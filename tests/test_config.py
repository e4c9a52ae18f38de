"""Config validation: one clear message naming the field, the value and what is allowed."""

import pytest

from pipeline.config import BuildConfig, load_build_config, parse_size
from pipeline.errors import UserError


def test_parse_size_units():
    assert parse_size("512MB") == 512 * 10**6
    assert parse_size("1GiB") == 1024**3
    assert parse_size(4096) == 4096
    with pytest.raises(ValueError):
        parse_size("lots")


def test_bad_literal_names_field_value_and_choices():
    with pytest.raises(UserError) as e:
        load_build_config({"input": "x", "output": "y", "resize_mode": "squash"})
    msg = str(e.value)
    assert (
        "resize_mode" in msg and "--resize-mode" in msg and "squash" in msg and "keep_ratio" in msg
    )
    assert "\n" not in msg


def test_a_bad_value_inside_a_list_names_no_flag_that_does_not_exist():
    from pipeline.features.config import load_features_config

    with pytest.raises(UserError) as e:
        load_features_config({"shards": "x", "output": "y", "ignore": ["video"]})
    msg = str(e.value)
    assert "ignore.0 = 'video'" in msg and "'audio'" in msg and "--" not in msg


def test_a_bad_value_from_the_yaml_file_names_the_file_not_a_flag(tmp_path):
    from pipeline.train.config import load_train_config

    cfg = tmp_path / "t.yaml"
    cfg.write_text("train:\n  relations: maybe\n")  # a field the train command has no flag for
    with pytest.raises(UserError) as e:
        load_train_config({"data": "f", "output": "r"}, str(cfg))
    msg = str(e.value)
    assert f"relations = 'maybe' in {cfg} is invalid" in msg and "'off'" in msg
    assert "--" not in msg
    # The same value given on the command line names the flag.
    with pytest.raises(UserError, match=r"fusion \(--fusion\) = 'fast'"):
        load_train_config({"data": "f", "output": "r", "fusion": "fast"}, str(cfg))


def test_unknown_yaml_field_is_refused(tmp_path):
    cfg = tmp_path / "b.yaml"
    cfg.write_text("build:\n  input: a.jsonl\n  output: out\n  shard_sampels: 10\n")
    with pytest.raises(UserError, match="unknown field 'shard_sampels'"):
        load_build_config({}, str(cfg))


def test_yaml_then_cli_override(tmp_path):
    cfg = tmp_path / "b.yaml"
    cfg.write_text("input: a.jsonl\noutput: out\nshard_samples: 10\nshard_bytes: 1MB\n")
    c = load_build_config({"shard_samples": 20}, str(cfg))
    assert c.shard_samples == 20 and c.shard_bytes == 10**6


def test_fingerprint_ignores_where_and_how_fast_but_not_what():
    a = BuildConfig(input="i", output="o1")
    assert a.fingerprint() == BuildConfig(input="i", output="o2", num_cpus=0.5).fingerprint()
    assert a.fingerprint() != BuildConfig(input="i", output="o1", resize=64).fingerprint()
