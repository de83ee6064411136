"""``python -m automodel.checkpoint consolidate|inspect``: real subprocesses, HF-loadable output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from automodel.checkpoint import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, Checkpointer
from automodel.checkpoint._tools import main

transformers = pytest.importorskip("transformers")
IDS = torch.tensor([[1, 5, 17, 42, 99, 3, 64, 127], [0, 2, 4, 8, 16, 32, 64, 126]])


def tool(*args: object) -> subprocess.Popen[str]:
    """Start ``python -m automodel.checkpoint ARGS`` (several may run at once)."""
    return subprocess.Popen(
        [sys.executable, "-m", "automodel.checkpoint", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> str:
    """Wait for ``proc``; assert it succeeded; return its stdout."""
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out


def _save(root: Path, run) -> Path:
    def extras(staging: Path) -> None:
        run.model.config.save_pretrained(staging / "model")
        run.model.generation_config.save_pretrained(staging / "model")
        (staging / "model" / "tokenizer.json").write_text('{"fake": "tokenizer"}')
        (staging / "config.yaml").write_text("seed: 1\n")

    ckpt = Checkpointer(root, max_shard_size="20KB")
    ckpt.save(0, 1, **run.states(), write_extras=extras)
    run.step()
    return ckpt.save(0, 2, **run.states(), write_extras=extras)


def _load(path: Path) -> torch.nn.Module:
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        path, output_loading_info=True, dtype=torch.float32
    )
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


def test_consolidate_and_inspect(tmp_path: Path, make_run) -> None:
    run = make_run(0, tie=True)
    run.step()
    root = tmp_path / "ckpt"
    latest = _save(root, run)
    run.model.eval()
    with torch.no_grad():
        expected = run.model(IDS).logits

    out = tmp_path / "hf"
    consolidating = tool("consolidate", root, out)  # the checkpoint_dir root: LATEST is used
    inspecting = tool("inspect", latest, "--json", "--tensors")
    report = json.loads(finish(inspecting))
    finish(consolidating)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "generation_config.json",
        SAFE_WEIGHTS_NAME,
        "tokenizer.json",
    ]
    assert (out / "tokenizer.json").read_text() == '{"fake": "tokenizer"}'
    loaded = _load(out)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, expected)

    assert (report["epoch"], report["step"], report["world_size"]) == (0, 2, 1)
    assert report["problems"] == []
    assert report["resume"] == {
        "model": True,
        "optimizer": True,
        "optim_states": ["lr_scheduler"],
        "train_states": {"0": ["progress", "rng"]},
    }
    state = run.model.state_dict()
    del state["lm_head.weight"]  # tied: saved once
    assert report["model"]["tensors"] == len(state)
    assert report["model"]["parameters"] == sum(t.numel() for t in state.values())
    assert report["model"]["dtypes"] == {"F32": len(state)}
    listed = {t["name"]: t["shape"] for t in report["model"]["tensor_list"]}
    assert listed == {k: list(v.shape) for k, v in state.items()}
    assert set(report["parts"]) == {"model", "optim", "train_state", "config.yaml"}
    assert report["total_bytes"] == sum(p["bytes"] for p in report["parts"].values())


def test_consolidate_from_model_dir_with_shards(tmp_path: Path, make_run, capsys) -> None:
    run = make_run(1, tie=False)
    latest = _save(tmp_path / "ckpt", run)
    out = tmp_path / "hf"
    out.mkdir()  # an empty destination is fine
    assert main(["consolidate", str(latest / "model"), str(out), "--max-shard-size", "30KB"]) == 0
    assert (out / SAFE_WEIGHTS_INDEX_NAME).is_file()
    loaded = _load(out)
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name

    assert main(["inspect", str(latest)]) == 0
    text = capsys.readouterr().out
    assert "epoch 0, step 2, world size 1" in text
    assert "can resume    model, optimizer, optim_states [lr_scheduler]" in text
    assert "train_states rank 0: progress, rng" in text


def test_user_mistakes_exit_2_without_traceback(tmp_path: Path, make_run, capsys) -> None:
    latest = _save(tmp_path / "ckpt", make_run(0))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("x")
    cases = [
        (["consolidate", str(latest), str(taken)], "refusing to overwrite"),
        (["consolidate", str(tmp_path / "missing"), str(tmp_path / "o")], "does not exist"),
        (["consolidate", str(taken), str(tmp_path / "o")], "is not a complete checkpoint"),
        (["consolidate", str(latest), str(tmp_path / "o"), "--max-shard-size", "x"], "size"),
        (["inspect", str(tmp_path / "missing")], "does not exist"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert (taken / "keep.txt").read_text() == "x"
    assert not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_inspect_reports_a_corrupt_checkpoint(tmp_path: Path, make_run, capsys) -> None:
    latest = _save(tmp_path / "ckpt", make_run(0))
    shard = sorted((latest / "model").glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-10])
    assert main(["inspect", str(latest)]) == 1
    out = capsys.readouterr().out
    assert f"PROBLEM       checkpoint {latest} is corrupt or truncated: model/{shard.name}" in out
    assert main(["consolidate", str(latest), str(tmp_path / "o")]) == 1
    assert "corrupt or truncated" in capsys.readouterr().err
