"""Draft adapters (Kangaroo) and the frequency-ranked draft vocabulary (FR-Spec): files, fingerprint,
exactness of greedy drafting, training (features, objective, resume) and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import dampen_layers, make_checkpoint, write_corpus
from safetensors.torch import load_file

from layerskip.model.adapter import AdapterConfig, init_adapter, load_adapter, save_adapter
from layerskip.model.fingerprint import base_fingerprint
from layerskip.drafters.adapter import AdapterDrafter
from layerskip.cli import main
from layerskip.drafters.draft_head import DraftHead, draft_subset, frequency_ranking, load_ranking, save_ranking
from layerskip.drafters.early_exit import EarlyExitDrafter
from layerskip.errors import LayerskipError
from layerskip.decoding.settings import Decoding, GenerationConfig
from layerskip.decoding.loop import generate
from layerskip.checkpoints.loading import load_model
from layerskip.decoding.sampling import SamplingConfig
from layerskip.training.adapter_objective import soft_target_loss, vocabulary_index
from layerskip.training.adapter_trainer import AdapterTrainConfig, AdapterTrainer

GREEDY = GenerationConfig(max_steps=40, sampling=SamplingConfig(sample=False))
PROMPTS = [[0, 17, 42, 99, 7, 150], [5, 6, 7, 8, 5, 6, 7], [200, 3]]


@pytest.fixture(scope="module")
def trained(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter at exit 2 trained for a few steps on a small corpus (output directory)."""
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"))
    out = tmp_path_factory.mktemp("run") / "adapter_run"
    config = AdapterTrainConfig(model=str(tiny_dir), exit_layer=2, corpus=str(corpus), output_dir=str(out), seq_len=32,
                                max_tokens=1024, top_k=8, draft_vocab=120, steps=6, batch_size=4, eval_every=3,
                                eval_prompts=1, eval_tokens=8, device="cpu")
    AdapterTrainer(config).run(progress=False)
    return out


def test_adapter_files_round_trip(tiny_dir, tiny_model, tmp_path):
    """Saved and loaded onto the prepared (fused) model: the fingerprint is the checkpoint's, not the fusion's."""
    unfused = load_model(tiny_dir, torch.device("cpu"), torch.float32)
    assert tiny_model.model.layers[0].self_attn.qkv_proj is not None
    with pytest.raises(LayerskipError, match="prepare=False"):
        init_adapter(tiny_model, 2, "decoder_layer", 3, "tiny")
    adapter = init_adapter(unfused, 2, "decoder_layer", 3, "tiny")
    save_adapter(adapter, tmp_path, {"note": "x"})
    record = json.loads((tmp_path / "adapter.json").read_text())
    assert record["exit_layer"] == 2 and record["architecture"] == "decoder_layer" and record["note"] == "x"
    assert record["base_fingerprint"] == base_fingerprint(tiny_model)
    loaded = load_adapter(tmp_path, tiny_model)
    for name, value in adapter.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    # initialised from decoder layer 3
    assert torch.equal(loaded.block.self_attn.q_proj.weight, unfused.model.layers[3].self_attn.q_proj.weight)
    assert base_fingerprint(unfused) == base_fingerprint(tiny_model)


def test_adapter_refuses_another_base(tiny_model, tmp_path):
    save_adapter(init_adapter(tiny_model, 2, "attention", None), tmp_path / "a")
    other = load_model(make_checkpoint(tmp_path / "other", seed=1), torch.device("cpu"), torch.float32)
    with pytest.raises(LayerskipError, match="trained for another base"):
        load_adapter(tmp_path / "a", other)
    bf16 = load_model(tiny_model.source_path, torch.device("cpu"), torch.bfloat16)
    assert load_adapter(tmp_path / "a", bf16).block.self_attn.q_proj.weight.dtype == torch.bfloat16  # same base


def test_adapter_config_validation(tmp_path):
    with pytest.raises(LayerskipError, match="intermediate_size"):
        AdapterConfig(2, "attention", 64)
    with pytest.raises(LayerskipError, match="exit_layer"):
        AdapterConfig.from_dict({"exit_layer": "two"}, "x")
    (tmp_path / "adapter.json").write_text("[1]")
    with pytest.raises(LayerskipError, match="JSON object"):
        AdapterDrafter(tmp_path, 3)


def test_frequency_ranking_and_subset():
    stream = torch.tensor([5, 3, 5, 7, 3, 5, 9], dtype=torch.int32)
    assert frequency_ranking(stream, 12).tolist() == [5, 3, 7, 9]  # counts 3, 2, then ties by id
    assert draft_subset(torch.tensor([5, 3, 7, 9]), 2, [1], 12).tolist() == [1, 3, 5]
    with pytest.raises(LayerskipError):
        draft_subset(torch.tensor([5, 3]), 12, [], 12)


def test_draft_head_subset_matches_full_head_on_the_subset(tiny_model):
    hidden = torch.randn(1, 3, tiny_model.config.hidden_size)
    ids = torch.tensor([0, 4, 17, 250])
    full, sub = DraftHead(tiny_model)(hidden), DraftHead(tiny_model, ids)(hidden)
    torch.testing.assert_close(sub[..., ids], full[..., ids])
    mask = torch.ones(tiny_model.config.vocab_size, dtype=torch.bool)
    mask[ids] = False
    assert torch.isinf(sub[..., mask]).all()


def test_soft_target_loss():
    index = vocabulary_index(torch.tensor([0, 2, 3]), 5)
    assert index.tolist() == [0, -1, 1, 2, -1]
    top_ids = torch.tensor([[[2, 1, 0]], [[1, 4, 3]]])  # second position: target top-1 outside the subset
    top_logp = torch.log(torch.tensor([[[0.6, 0.3, 0.1]], [[0.7, 0.2, 0.1]]]))
    student = torch.tensor([[[0.0, 5.0, 0.0]], [[0.0, 0.0, 5.0]]])
    loss, agreement = soft_target_loss(student, top_ids, top_logp, index)
    assert agreement == pytest.approx(0.5)  # position 1 agrees (token 2), position 2 cannot
    # target of position 1 renormalised over the subset: {2: 0.6/0.7, 0: 0.1/0.7}; position 2: {3: 1}
    logq = student.log_softmax(-1)
    expected = (-(0.6 / 0.7 * logq[0, 0, 1] + 0.1 / 0.7 * logq[0, 0, 0]) - logq[1, 0, 2]) / 2
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("exit_layer,k,draft_vocab", [(1, 2, None), (2, 4, None), (3, 3, 150), (2, 6, 200)])
def test_greedy_with_adapter_equals_autoregressive(tiny_dir, tmp_path, exit_layer, k, draft_vocab):
    model = load_model(tiny_dir, torch.device("cpu"), torch.float32)
    dampen_layers(model, exit_layer, 0.2)  # drafts agree often but not always
    save_adapter(init_adapter(model, exit_layer, "attention", model.num_layers - 1), tmp_path)
    save_ranking(tmp_path, frequency_ranking(torch.arange(300).repeat(2), 300))
    drafter = AdapterDrafter(tmp_path, k, draft_vocab=draft_vocab)
    accepted = rejected = 0
    for prompt in PROMPTS:
        ar = generate(model, prompt, GREEDY)
        sd = generate(model, prompt, GREEDY, Decoding(drafter))
        assert sd.token_ids == ar.token_ids
        accepted += sd.stats.accepted_tokens
        rejected += sd.stats.drafted_tokens - sd.stats.accepted_tokens
        assert sd.stats.draft.draft_adapter == str(tmp_path) and sd.stats.exit_layer == exit_layer
    assert accepted > 0 and rejected > 0  # both fully and partly accepted rounds happened


def test_draft_vocab_greedy_equals_autoregressive(tiny_dir, tmp_path):
    model = load_model(tiny_dir, torch.device("cpu"), torch.float32)
    dampen_layers(model, 2, 0.2)
    model.source_path = tmp_path
    with pytest.raises(LayerskipError, match="frequency ranking"):
        EarlyExitDrafter(2, 3, draft_vocab=100).bind(model)
    save_ranking(tmp_path, frequency_ranking(torch.tensor(PROMPTS[0] * 3 + list(range(100))), 300))
    drafter = EarlyExitDrafter(2, 3, draft_vocab=60)
    for prompt in PROMPTS:
        sd = generate(model, prompt, GREEDY, Decoding(drafter))
        assert sd.token_ids == generate(model, prompt, GREEDY).token_ids
        assert sd.stats.draft.draft_vocab == 60


def test_train_adapter_writes_a_usable_adapter(trained, tiny_dir, tiny_model):
    final = trained / "adapter"
    record = json.loads((final / "adapter.json").read_text())
    assert record["exit_layer"] == 2 and record["training"]["steps"] == 6
    assert record["metrics"]["step"] == 6 and "val_agreement" in record["metrics"]  # this step's evaluation
    assert set(load_ranking([final]).tolist()) <= set(range(300))
    log = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    evals = [r for r in log if "val_agreement" in r]
    assert [r["step"] for r in evals] == [3, 6] and all("acceptance" in r for r in evals)
    unfused = load_model(tiny_dir, torch.device("cpu"), torch.float32)
    initial = init_adapter(unfused, 2, "attention", unfused.num_layers - 1)
    weights = load_file(str(final / "adapter.safetensors"))
    assert not torch.equal(weights["block.self_attn.q_proj.weight"], initial.block.self_attn.q_proj.weight)  # it trained
    drafter = AdapterDrafter(final, 3, draft_vocab=120)
    for prompt in PROMPTS:
        assert generate(tiny_model, prompt, GREEDY, Decoding(drafter)).token_ids == generate(tiny_model, prompt, GREEDY).token_ids


def test_train_adapter_resume_is_exact(trained, tiny_dir, tmp_path):
    """Steps 0..3 then a resumed 3..6 give the weights of the uninterrupted 6-step run."""
    config = json.loads((trained / "train_adapter_config.json").read_text())
    config.update(output_dir=str(tmp_path / "cut"), steps=3)
    AdapterTrainer(AdapterTrainConfig(**config)).run(progress=False)
    config["steps"] = 6
    AdapterTrainer(AdapterTrainConfig(**config)).run(progress=False)
    whole = load_file(str(trained / "adapter" / "adapter.safetensors"))
    resumed = load_file(str(tmp_path / "cut" / "adapter" / "adapter.safetensors"))
    for name, value in whole.items():
        assert torch.equal(resumed[name], value), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "train_log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)
    config["exit_layer"] = 3
    with pytest.raises(LayerskipError, match="other settings"):
        AdapterTrainer(AdapterTrainConfig(**config)).run(progress=False)


@pytest.mark.parametrize("flags,message", [
    (["--draft_adapter", "ADAPTER", "--exit_layer", "3"], "differs from the draft adapter's exit layer 2"),
    (["--draft_adapter", "ADAPTER", "--criteria", "entropy_based"], "excludes --criteria"),
    (["--draft_adapter", "/nonexistent"], "no such directory"),
    (["--exit_layer", "2", "--draft_vocab", "50"], "frequency ranking"),
    (["--draft_adapter", "ADAPTER", "--draft", "prompt_lookup"], "drafts without the model"),
])
def test_generate_cli_adapter_errors(trained, tiny_dir, capsys, flags, message):
    flags = [str(trained / "adapter") if f == "ADAPTER" else f for f in flags]
    code = main(["generate", "--model", str(tiny_dir), "--prompt", "def", "--max_steps", "4", "--sample", "False",
                 "--generation_strategy", "self_speculative", "--num_speculations", "2", *flags])
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and len(err.splitlines()) == 1


def test_generate_cli_with_adapter(trained, tiny_dir, capsys):
    common = ["generate", "--model", str(tiny_dir), "--prompt", "def add(a, b):", "--max_steps", "12", "--sample", "False",
              "--json", "--dtype", "float32"]
    assert main(common) == 0
    ar = json.loads(capsys.readouterr().out)
    assert main([*common, "--generation_strategy", "self_speculative", "--num_speculations", "3",
                 "--draft_adapter", str(trained / "adapter"), "--draft_vocab", "100"]) == 0
    sd = json.loads(capsys.readouterr().out)
    assert sd["token_ids"] == ar["token_ids"] and sd["stats"]["exit_layer"] == 2 and sd["stats"]["drafted_tokens"] > 0


def test_prompt_lookup_composes_with_an_adapter(trained, tiny_dir, capsys):
    """``--draft prompt_lookup+model`` with an adapter: lookup where it matches, the adapter elsewhere; exact."""
    common = ["generate", "--model", str(tiny_dir), "--prompt", "def add(a, b): return a + b\ndef add(a, b):",
              "--max_steps", "16", "--sample", "False", "--json", "--dtype", "float32"]
    assert main(common) == 0
    ar = json.loads(capsys.readouterr().out)
    assert main([*common, "--generation_strategy", "self_speculative", "--num_speculations", "3",
                 "--draft_adapter", str(trained / "adapter"), "--draft", "prompt_lookup+model"]) == 0
    sd = json.loads(capsys.readouterr().out)
    stats = sd["stats"]
    assert sd["token_ids"] == ar["token_ids"]
    assert stats["lookup_rounds"] > 0 and stats["drafted_tokens"] > stats["lookup_drafted_tokens"]  # both drafted


def test_feature_shards_follow_the_text_they_were_computed_from(tiny_model, tmp_path):
    """A shard is reused only for the same token ids: changed text (a corpus file that grew or was
    replaced) recomputes it, the others are kept as they are."""
    from layerskip.training.adapter_features import (FeatureSpec, extract_features, load_features, shard_digest,
                                                     shard_path, windows_digest)

    spec = FeatureSpec(base_fingerprint(tiny_model), 2, 8, 4, "test")
    windows = torch.randint(0, tiny_model.config.vocab_size, (4, 8), generator=torch.Generator().manual_seed(0))
    assert extract_features(tiny_model, windows, tmp_path, spec, shard_size=2) == 2
    first = load_features(tmp_path, 2)
    files = [shard_path(tmp_path, i).stat().st_ino for i in range(2)]  # a rewrite renames a new file in
    changed = windows.clone()
    changed[3, 0] = (changed[3, 0] + 1) % tiny_model.config.vocab_size
    extract_features(tiny_model, changed, tmp_path, spec, shard_size=2)
    assert shard_path(tmp_path, 0).stat().st_ino == files[0]  # same windows: reused
    assert shard_path(tmp_path, 1).stat().st_ino != files[1]  # other windows: recomputed
    assert shard_digest(shard_path(tmp_path, 1)) == windows_digest(changed[2:])
    second = load_features(tmp_path, 2)
    assert torch.equal(second["hidden"][:3], first["hidden"][:3])
    assert not torch.equal(second["hidden"][3, 0], first["hidden"][3, 0])


def test_train_adapter_can_start_from_a_trained_adapter(trained, tiny_dir, tmp_path):
    """--init_from: a warm start from a trained adapter (a learning rate of ~0 keeps its weights);
    an adapter of another exit layer is refused before any feature is computed."""
    config = json.loads((trained / "train_adapter_config.json").read_text())
    config.update(output_dir=str(tmp_path / "warm"), steps=1, lr=1e-12, warmup=0, eval_prompts=0,
                  init_from=str(trained / "adapter"))
    AdapterTrainer(AdapterTrainConfig(**config)).run(progress=False)
    start = load_file(str(trained / "adapter" / "adapter.safetensors"))
    warm = load_file(str(tmp_path / "warm" / "adapter" / "adapter.safetensors"))
    for name, value in start.items():
        torch.testing.assert_close(warm[name], value, rtol=0, atol=1e-6)
    config.update(output_dir=str(tmp_path / "other"), exit_layer=3)
    with pytest.raises(LayerskipError, match="not a attention adapter at `exit_layer` 3"):
        AdapterTrainer(AdapterTrainConfig(**config))
    assert not (tmp_path / "other").exists()


def test_the_drafter_runs_the_adapter_on_the_models_kernels(trained, tiny_model):
    """Bound to a prepared model, the adapter's block is fused and prepacked like the model's layers."""
    from layerskip.kernels.linear import FusedLinear, PackedLinear

    drafter = AdapterDrafter(trained / "adapter", 2)
    drafter.bind(tiny_model)
    attn = drafter.adapter.block.self_attn
    assert isinstance(attn.qkv_proj, FusedLinear) and not hasattr(attn, "q_proj")
    assert isinstance(attn.o_proj, PackedLinear) == isinstance(tiny_model.model.layers[0].self_attn.o_proj, PackedLinear)
