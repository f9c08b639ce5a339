"""serpent_ssm.hf: our models as transformers models (Auto classes, generate, Trainer, peft,
lm-evaluation-harness), tiny models on the CPU."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("serpent_ssm.hf")

from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from serpent_ssm.data.vocab import BYTE_VOCAB, LISTOPS_VOCAB  # noqa: E402
from serpent_ssm.models import ModelConfig, build_model, from_pretrained, save_pretrained  # noqa: E402
from serpent_ssm.models.io import read_config  # noqa: E402

from tests.helpers import assert_close, wake_branches  # noqa: E402

NAMES = ["mamba", "s4d", "serpent-mamba", "serpent-s4d"]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def small_lm(name, seed=0):
    torch.manual_seed(seed)
    serpent = {"rates": (0.5, 0.25)} if name.startswith("serpent") else None
    cfg = ModelConfig(name=name, head="lm", d_model=16, n_layers=2, vocab_size=259, serpent=serpent)
    return wake_branches(build_model(cfg).eval(), seed)  # the compressed branches show


def export(model, folder, tokenizer=True):
    hf.to_transformers(model).save_pretrained(folder)
    if tokenizer:
        hf.byte_tokenizer().save_pretrained(folder)
    return folder


def byte_ids(text):
    return BYTE_VOCAB.encode_bytes(text.encode())[None]


@pytest.fixture(scope="module")
def wikitext_run(tmp_path_factory):
    """A 3-step byte LM training run (its ``best/`` and ``vocab.json``)."""
    from serpent_ssm.cli import main

    root = tmp_path_factory.mktemp("wt")
    (root / "wikitext-103-raw").mkdir()
    for split in ("train", "valid", "test"):
        (root / "wikitext-103-raw" / f"wiki.{split}.raw").write_bytes(b"the quick brown fox. " * 60)
    run = root / "run"
    args = ["train", "--set", "data.task=wikitext103", "--data-dir", str(root), "--max-steps", "3"]
    args += ["--set", "data.seq_len=32", "--set", "data.batch_size=4", "--set", "data.limit_eval=100"]
    args += ["--set", "model.d_model=8", "--set", "model.causal=true", "--out", str(run)]
    assert main(args) == 0
    return run


@pytest.fixture(scope="module")
def listops_run(tmp_path_factory):
    """A 2-step SeRpEnt classifier training run on a tiny generated ListOps set."""
    from serpent_ssm.cli import main
    from serpent_ssm.data.listops import generate_listops

    root = tmp_path_factory.mktemp("lo")
    generate_listops(root / "data", n_train=40, n_val=8, n_test=8, min_len=5, max_len=20)
    run = root / "run"
    args = ["train", "--data-dir", str(root / "data"), "--max-steps", "2", "--set", "data.batch_size=8"]
    args += ["--set", "model.name=serpent-mamba", "--set", "model.d_model=8", "--out", str(run)]
    assert main(args) == 0
    return run


def _files(folder):
    """Every file under ``folder``: relative path -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", NAMES)
def test_causal_lm_round_trip_through_the_auto_classes(name, tmp_path):
    lm = small_lm(name)
    folder = export(lm, tmp_path / name)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "serpent" and config["model_name"] == name
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert isinstance(loaded, hf.SerpentForCausalLM)
    assert isinstance(AutoConfig.from_pretrained(folder), hf.SerpentHFConfig)
    ids = byte_ids("It is a truth universally acknowledged")
    with torch.no_grad():
        assert_close(loaded(ids).logits, lm(ids), 1e-6, 1e-6, "logits")
        base = AutoModel.from_pretrained(folder).eval()
        assert_close(base(ids).last_hidden_state, lm.features(ids), 1e-6, 1e-6, "hidden states")
    assert loaded.model.head.weight is loaded.model.embedding.weight  # tied again on load


@pytest.mark.parametrize("name", ["mamba", "serpent-mamba"])
@pytest.mark.parametrize("inputs", ["tokens", "pixels"])
def test_sequence_classifier_round_trip(name, inputs, tmp_path):
    torch.manual_seed(0)
    kind = {"vocab_size": LISTOPS_VOCAB.size} if inputs == "tokens" else {"d_input": 1}
    serpent = {"rates": (0.5, 0.25)} if name.startswith("serpent") else None
    model = build_model(ModelConfig(name=name, d_model=16, n_layers=2, n_classes=4, serpent=serpent, **kind))
    hf.to_transformers(model.eval()).save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.num_labels == 4
    g = torch.Generator().manual_seed(1)
    mask = torch.tensor([[True] * 20, [True] * 13 + [False] * 7])
    if inputs == "tokens":
        x = torch.randint(1, LISTOPS_VOCAB.size, (2, 20), generator=g)
        out = loaded(input_ids=x, attention_mask=mask.long(), labels=torch.tensor([1, 3]))
    else:
        x = torch.rand(2, 20, generator=g)
        out = loaded(input_values=x, attention_mask=mask.long(), labels=torch.tensor([1, 3]))
    with torch.no_grad():
        want = model.eval()(x, mask)
    assert_close(out.logits, want, 1e-6, 1e-6, "logits")
    loss = torch.nn.functional.cross_entropy(want, torch.tensor([1, 3]))
    assert float(out.loss.detach()) == pytest.approx(float(loss), rel=1e-5)


# ----------------------------------------------------------------------------- generate
@pytest.mark.parametrize("name", NAMES)
def test_greedy_generate_equals_ours(name, tmp_path):
    lm = small_lm(name, seed=3)
    model = AutoModelForCausalLM.from_pretrained(export(lm, tmp_path)).eval()
    ids = byte_ids("the quick brown")
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(out, lm.generate(ids, 12, temperature=0.0))
    calls = []
    original = model.model.step
    model.model.step = lambda *a: calls.append(1) or original(*a)
    model.generate(ids, max_new_tokens=4, do_sample=False)
    assert len(calls) == 3  # the prompt in one pass, then step() for each later token


def test_sampling_is_reproducible_and_left_padded_prompts_work(tmp_path):
    lm = small_lm("serpent-mamba", seed=1)
    folder = export(lm, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder, padding_side="left")
    ids = byte_ids("Once upon")
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        sampled = model.generate(ids, max_new_tokens=10, do_sample=True, temperature=0.9, top_k=20, top_p=0.9)
        runs.append(sampled)
    assert torch.equal(runs[0], runs[1])
    prompts = ["a short one", "a much longer prompt than that"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    assert int(batch["attention_mask"][0, 0]) == 0  # left padding
    out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    for row, prompt in enumerate(prompts):
        alone = lm.generate(byte_ids(prompt), 6, temperature=0.0)[0, -6:]
        assert torch.equal(out[row, -6:], alone), prompt


def test_beam_search_scores_are_the_models_own_log_probabilities(tmp_path):
    lm = small_lm("serpent-mamba", seed=2)
    model = AutoModelForCausalLM.from_pretrained(export(lm, tmp_path)).eval()
    ids = byte_ids("In the beginning")
    out = model.generate(
        ids,
        max_new_tokens=6,
        num_beams=3,
        num_return_sequences=3,
        do_sample=False,
        length_penalty=0.0,  # the score is the sum of the log-probabilities
        return_dict_in_generate=True,
        output_scores=True,
    )
    assert out.sequences.shape == (3, ids.shape[1] + 6)
    with torch.no_grad():
        logp = torch.log_softmax(lm(out.sequences).double(), -1)
    n = ids.shape[1]
    tokens = out.sequences[:, n:]
    own = logp[:, n - 1 : -1].gather(-1, tokens.unsqueeze(-1)).squeeze(-1).sum(1)
    assert_close(out.sequences_scores.double(), own, 1e-4, 1e-5, "beam scores")
    assert out.sequences_scores[0] >= out.sequences_scores[1] >= out.sequences_scores[2]


# ----------------------------------------------------------------------------- tokenizer
def test_byte_tokenizer_has_our_ids(tmp_path):
    hf.byte_tokenizer().save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tok) == 259 and (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    for text in ["héllo\n", "  two  spaces\ttab", "漢字 and 🙂", "", "a <eos> b", "ĠĀ"]:
        ids = tok.encode(text)
        assert ids == BYTE_VOCAB.encode_bytes(text.encode()).tolist(), text
        assert tok.decode(ids) == text


def test_token_tokenizer_for_a_closed_vocabulary(tmp_path):
    hf.token_tokenizer(LISTOPS_VOCAB).save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    text = "[MAX 2 9 [MIN 4 7 ] 0 ]"
    assert tok.encode(text) == LISTOPS_VOCAB.encode_tokens(text.split()).tolist()


def test_pipeline_text_generation_from_an_exported_run(tmp_path, wikitext_run):
    from serpent_ssm.cli import main

    out = tmp_path / "hf"
    assert main(["export-hf", str(wikitext_run), str(out)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    generator = transformers.pipeline("text-generation", model=str(out))
    text = generator("the quick", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("the quick")


def test_mamba_checkpoint_loads_with_the_same_logits(tmp_path):
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    config = MambaConfig(vocab_size=259, hidden_size=16, num_hidden_layers=2, state_size=4)
    theirs = MambaForCausalLM(config).eval()
    theirs.save_pretrained(tmp_path)
    ids = byte_ids("selective state spaces")
    ours = hf.SerpentForCausalLM.from_mamba(tmp_path)
    with torch.no_grad():
        assert_close(ours(ids).logits, theirs(ids).logits, 1e-5, 1e-5, "logits")
    warm = hf.SerpentForCausalLM.from_mamba(tmp_path, serpent={"rates": (0.5, 0.25)})
    assert warm.config.model_name == "serpent-mamba"
    mixer = theirs.backbone.layers[0].mixer
    assert torch.equal(warm.model.blocks[0].mixer.full_backbone.in_proj.weight, mixer.in_proj.weight)
    message = r"expected model_type 'serpent' .* got 'mamba' \(a transformers Mamba checkpoint"
    with pytest.raises(ValueError, match=message):
        hf.SerpentForCausalLM.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------- training
def test_trainer_fine_tunes_and_its_checkpoint_reloads(tmp_path):
    from transformers import Trainer, TrainingArguments

    folder = export(small_lm("serpent-mamba"), tmp_path / "model")
    model = AutoModelForCausalLM.from_pretrained(folder)
    text = b"It is a truth universally acknowledged, that a single man in possession of a good fortune. " * 30
    ids = BYTE_VOCAB.encode_bytes(text[: 64 * 32]).view(32, 64)
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=20,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        logging_steps=1,
        save_steps=20,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 20 and sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "checkpoint-20").eval()
    model.eval()
    with torch.no_grad():
        assert_close(reloaded(ids[:2]).logits, model(ids[:2]).logits, 1e-6, 1e-6, "reloaded logits")


def test_lora_adapter_trains_and_merges(tmp_path):
    peft = pytest.importorskip("peft")
    folder = export(small_lm("serpent-mamba"), tmp_path)
    model = AutoModelForCausalLM.from_pretrained(folder)
    targets = r".*\.backbones\.\d+\.(in_proj|out_proj|x_proj)"  # mixer.out_proj: the branch gates
    adapted = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=targets, task_type="CAUSAL_LM"))
    before = {k: v.detach().clone() for k, v in adapted.named_parameters()}
    trainable = {k for k, v in adapted.named_parameters() if v.requires_grad}
    assert trainable and all("lora_" in k for k in trainable)
    opt = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=1e-2)
    ids = byte_ids("a b c d e f g h i j k l m n o p " * 4)
    for _ in range(5):
        loss = adapted(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    changed = {k for k, v in adapted.named_parameters() if not torch.equal(v, before[k])}
    assert changed and changed <= trainable
    adapted.eval()
    with torch.no_grad():
        want = adapted(input_ids=ids).logits
        merged = adapted.merge_and_unload()
        assert isinstance(merged, hf.SerpentForCausalLM)
        assert_close(merged(input_ids=ids).logits, want, 1e-5, 1e-5, "merged logits")


def test_lm_eval_scores_an_exported_model_with_our_log_likelihoods(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    lm = small_lm("serpent-mamba", seed=4)
    folder = export(lm, tmp_path / "model")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(FIXTURES.parents[1])  # the task's data file is relative to the repository root
    result = simple_evaluate(
        model="hf",
        model_args={"pretrained": str(folder), "backend": "causal", "device": "cpu", "dtype": "float32"},
        tasks=["serpent_choice"],
        task_manager=TaskManager(include_path=str(FIXTURES / "lm_eval"), include_defaults=False),
        batch_size=2,
        bootstrap_iters=0,
        log_samples=True,
    )
    samples = result["samples"]["serpent_choice"]
    lines = (FIXTURES / "lm_eval" / "serpent_choice.jsonl").read_text().splitlines()
    docs = [json.loads(line) for line in lines]
    assert len(samples) == len(docs)
    for sample in samples:
        doc = docs[sample["doc_id"]]
        context = BYTE_VOCAB.encode_bytes(doc["question"].encode())
        for choice, resp in zip(doc["choices"], sample["resps"], strict=True):
            continuation = BYTE_VOCAB.encode_bytes((" " + choice).encode())
            ids = torch.cat([context, continuation])[None]
            with torch.no_grad():
                logp = torch.log_softmax(lm(ids).double(), -1)[0]
            n = len(context)
            own = float(logp[n - 1 : -1].gather(-1, continuation[:, None]).sum())
            assert resp[0][0] == pytest.approx(own, abs=1e-4), (doc["question"], choice)


# ----------------------------------------------------------------------------- bad input
def test_bad_input_fails_with_one_clear_error(tmp_path):
    names = "mamba, s4d, serpent-mamba, serpent-s4d"
    with pytest.raises(ValueError, match=rf"^model\.name: expected one of {names}, got 'gru'$"):
        hf.SerpentHFConfig(model_name="gru")
    with pytest.raises(ValueError, match=r"^model\.serpent\.rates"):
        hf.SerpentHFConfig(serpent={"rates": [1.5]})
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(ValueError, match=r"^config\.json: expected model_type 'serpent' .* got 'llama'$"):
        hf.SerpentHFConfig.from_pretrained(tmp_path)
    model = hf.to_transformers(small_lm("serpent-mamba"))
    ids = byte_ids("abcdef").repeat(2, 1)
    holes = torch.tensor([[1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    message = "attention_mask: expected each row's real tokens together at one end"
    with pytest.raises(ValueError, match=re.escape(message)):
        model(ids, attention_mask=holes)
    cache = model(ids).cache
    left = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    message = "attention_mask: left padding is only supported at the start"
    with pytest.raises(ValueError, match=re.escape(message)):
        model(ids, attention_mask=left, cache=cache)
    classifier = build_model(ModelConfig(name="mamba", head="lm", d_model=8, n_layers=1, vocab_size=259))
    message = r"^config\.head: expected 'classify' for SerpentForSequenceClassification, got 'lm'$"
    with pytest.raises(ValueError, match=message):
        hf.SerpentForSequenceClassification(hf.SerpentHFConfig.from_model_config(classifier.config))
    empty = tmp_path / "no-tokenizer"
    export(small_lm("mamba"), empty, tokenizer=False)
    with pytest.raises((OSError, ValueError), match="tokenizer"):
        AutoTokenizer.from_pretrained(empty)


# ----------------------------------------------------------------------------- one file format
def test_a_runs_best_loads_in_a_fresh_process_through_the_auto_classes(wikitext_run, listops_run, tmp_path):
    """``best/`` as ``serpent train`` writes it (the library's ``save_pretrained``, no
    transformers) loads with transformers' Auto classes and ``trust_remote_code=True`` in a
    process that never imported ``serpent_ssm.hf``, with the native loader's logits."""
    lm_best, clf_best = wikitext_run / "best", listops_run / "best"
    assert json.loads((lm_best / "config.json").read_text())["model_type"] == "serpent"
    ids = byte_ids("the quick brown fox")
    tokens = LISTOPS_VOCAB.encode_tokens("[MAX 2 9 [MIN 4 7 ] 0 ]".split())[None]
    code = f"""
import sys, torch, transformers
lm = transformers.AutoModelForCausalLM.from_pretrained({str(lm_best)!r}, trust_remote_code=True).eval()
clf = transformers.AutoModelForSequenceClassification.from_pretrained(
    {str(clf_best)!r}, trust_remote_code=True).eval()
with torch.no_grad():
    out = {{"lm": lm(torch.tensor({ids.tolist()})).logits,
            "clf": clf(input_ids=torch.tensor({tokens.tolist()})).logits}}
torch.save(out, {str(tmp_path / "logits.pt")!r})
print(type(lm).__module__, type(lm).__name__, type(clf).__name__)
"""
    done = _python(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = "serpent_ssm.hf.modeling SerpentForCausalLM SerpentForSequenceClassification"
    assert done.stdout.split() == expected.split()
    theirs = torch.load(tmp_path / "logits.pt", weights_only=True)
    with torch.no_grad():
        assert_close(theirs["lm"], from_pretrained(lm_best).eval()(ids), 1e-6, 1e-6, "LM logits")
        assert_close(theirs["clf"], from_pretrained(clf_best).eval()(tokens), 1e-6, 1e-6, "classifier logits")


def test_the_library_and_transformers_read_each_others_files(tmp_path):
    """One layout: our ``save_pretrained`` -> transformers, transformers' ``save_pretrained`` ->
    ours, with the same logits."""
    lm = small_lm("serpent-mamba", seed=5)
    save_pretrained(lm, tmp_path / "ours")
    ids = byte_ids("one layout")
    with torch.no_grad():
        want = lm(ids)
        assert_close(
            AutoModelForCausalLM.from_pretrained(tmp_path / "ours")(ids).logits, want, 1e-6, 1e-6, "ours"
        )
        export(lm, tmp_path / "theirs", tokenizer=False)
        assert_close(from_pretrained(tmp_path / "theirs").eval()(ids), want, 1e-6, 1e-6, "theirs")


@pytest.mark.parametrize(
    "record",
    [
        {},
        {"model_name": "mamba", "n_layers": 3},
        {"model_name": "serpent-s4d", "serpent": {"rates": [0.5]}, "backbone": {"d_state": 8}},
        {"head": "classify", "vocab_size": 10, "num_labels": 4},
        {"head": "classify", "vocab_size": None, "d_input": 3, "id2label": {"0": "a", "1": "b"}},
    ],
)
def test_both_readers_resolve_a_sparse_config_alike(tmp_path, record):
    """A ``config.json`` that leaves fields unset (written by hand, or by an earlier release)
    resolves to the same model in the library's reader and in the transformers config class."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "serpent", **record}))
    ours = read_config(tmp_path / "config.json").resolved()
    assert hf.SerpentHFConfig.from_pretrained(tmp_path).model_config() == ours


def test_folders_of_earlier_releases_still_load(tmp_path):
    """A folder ``export-hf`` wrote before the config class was renamed (its ``auto_map`` and
    ``serpent_auto.py`` name ``SerpentConfig``) loads with remote code, through the registered
    classes and natively; a run's ``best/`` of 0.1.0 (the library's own layout) loads in the
    transformers classes too."""
    lm = small_lm("serpent-mamba", seed=6)
    folder = export(lm, tmp_path / "old")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {
        k: v.replace("SerpentHFConfig", "SerpentConfig") for k, v in config["auto_map"].items()
    }
    (folder / "config.json").write_text(json.dumps(config))
    source = (folder / "serpent_auto.py").read_text()
    (folder / "serpent_auto.py").write_text(source.replace("SerpentHFConfig", "SerpentConfig"))
    ids = byte_ids("as it was")
    with torch.no_grad():
        want = lm(ids)
        assert_close(from_pretrained(folder).eval()(ids), want, 1e-6, 1e-6, "native")
        assert_close(
            AutoModelForCausalLM.from_pretrained(folder).eval()(ids).logits, want, 1e-6, 1e-6, "auto"
        )
    code = f"""
import torch, transformers
m = transformers.AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
with torch.no_grad():
    torch.save(m(torch.tensor({ids.tolist()})).logits, {str(tmp_path / "old.pt")!r})
"""
    done = _python(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_close(torch.load(tmp_path / "old.pt", weights_only=True), want, 1e-6, 1e-6, "remote code")
    fixture = FIXTURES / "v0.1.0" / "lm-mamba"
    ids = torch.randint(0, 259, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = hf.SerpentForCausalLM.from_pretrained(fixture).eval()(ids).logits
        assert_close(theirs, from_pretrained(fixture).eval()(ids), 1e-6, 1e-6, "0.1.0 run folder")


def test_no_two_public_classes_differ_only_in_case():
    import serpent_ssm
    import serpent_ssm.models
    import serpent_ssm.modules

    names = set()
    for module in (serpent_ssm, serpent_ssm.models, serpent_ssm.modules, hf):
        names |= {n for n in module.__all__ if isinstance(getattr(module, n), type)}
    lower = [n.lower() for n in names]
    assert len(set(lower)) == len(lower), sorted(n for n in names if lower.count(n.lower()) > 1)
    assert "SerpentConfig" not in hf.__all__
    with pytest.warns(FutureWarning, match="SerpentConfig was renamed SerpentHFConfig"):
        assert hf.SerpentConfig is hf.SerpentHFConfig  # what old serpent_auto.py files import


# ----------------------------------------------------------------------------- missing weights
def test_weights_missing_from_a_checkpoint_get_our_initialisation(tmp_path):
    """What transformers does not load (a new head of another size, layers past the
    checkpoint's, an untied head the file lacks) gets the values ``build_model`` gives it under
    the same seed, transformers reports it, and the model computes finite numbers; the loaded
    tensors are untouched."""
    torch.manual_seed(0)
    serpent = {"rates": (0.5, 0.25)}
    vocab = LISTOPS_VOCAB.size
    cfg = ModelConfig(
        name="serpent-mamba", d_model=16, n_layers=2, n_classes=4, vocab_size=vocab, serpent=serpent
    )
    classifier = build_model(cfg)
    save_pretrained(classifier, tmp_path / "clf")
    torch.manual_seed(5)
    loaded, info = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "clf", num_labels=7, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert {key for key, *_ in info["mismatched_keys"]} == {"model.head.weight", "model.head.bias"}
    torch.manual_seed(5)
    fresh = build_model(dataclasses.replace(classifier.config, n_classes=7))
    assert torch.equal(loaded.model.head.weight, fresh.head.weight)
    assert torch.equal(loaded.model.head.bias, fresh.head.bias)
    saved = classifier.encoder.state_dict()
    for k, v in loaded.model.encoder.state_dict().items():
        assert torch.equal(v, saved[k]), k
    x = torch.randint(1, LISTOPS_VOCAB.size, (2, 11), generator=torch.Generator().manual_seed(1))
    loss = loaded(input_ids=x, labels=torch.tensor([1, 6])).loss
    assert torch.isfinite(loss)

    lm = small_lm("serpent-mamba", seed=2)
    folder = export(lm, tmp_path / "lm", tokenizer=False)
    record = json.loads((folder / "config.json").read_text())
    ids = byte_ids("missing weights")
    for change, missing in [
        ({"n_layers": 3}, "model.blocks.2."),
        ({"tie_word_embeddings": False}, "model.head."),
    ]:
        (folder / "config.json").write_text(json.dumps({**record, **change}))
        torch.manual_seed(7)
        model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
        assert info["missing_keys"] and all(k.startswith(missing) for k in info["missing_keys"]), info
        torch.manual_seed(7)
        fresh = build_model(hf.SerpentHFConfig.from_pretrained(folder).model_config())
        state, fresh_state, saved = model.model.state_dict(), fresh.state_dict(), lm.state_dict()
        for k in state:
            want = fresh_state[k] if "model." + k in info["missing_keys"] else saved[k]
            assert torch.equal(state[k], want), (change, k)
        with torch.no_grad():
            assert torch.isfinite(model.eval()(ids).logits).all()
    assert model.model.head.weight is not model.model.embedding.weight


def test_a_model_built_from_its_config_is_initialised_once():
    """``SerpentForCausalLM(config)`` has the weights ``build_model`` gives under the same seed
    (transformers' ``post_init`` does not initialise it a second time)."""
    config = hf.SerpentHFConfig(model_name="serpent-mamba", d_model=16, n_layers=2, serpent={"rates": [0.5]})
    torch.manual_seed(3)
    model = hf.SerpentForCausalLM(config)
    torch.manual_seed(3)
    fresh = build_model(config.model_config())
    for (k, v), w in zip(model.model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


# ----------------------------------------------------------------------------- export-hf
@pytest.mark.parametrize("where", ["best", "run", "inside", "symlink", "around"])
def test_export_refuses_an_out_that_would_overwrite_the_run(where, wikitext_run, tmp_path, capsys):
    from serpent_ssm.cli import main

    before = _files(wikitext_run)
    run = wikitext_run.resolve()
    out = {"best": run / "best", "run": run, "inside": run / "best" / "hf", "around": run.parent}.get(where)
    if where == "symlink":
        out = tmp_path / "link"
        out.symlink_to(wikitext_run / "best")
    assert main(["export-hf", str(wikitext_run), str(out)]) == 2
    err = capsys.readouterr().err
    what = "that does not hold" if where == "around" else "outside"
    assert err.startswith(f"serpent: error: out: expected a folder {what} the run directory {run}")
    assert f"got {out}" in err and err.count("\n") == 1, err
    assert _files(wikitext_run) == before  # nothing written
    with pytest.raises(ValueError, match=r"^out: expected a folder "):
        hf.export_run(wikitext_run, out)
    assert _files(wikitext_run) == before


def test_export_writes_a_whole_folder_or_nothing(wikitext_run, tmp_path, monkeypatch, capsys):
    from serpent_ssm.cli import main
    from serpent_ssm.models import io

    out = tmp_path / "hf"
    assert main(["export-hf", str(wikitext_run), str(out)]) == 0
    first = _files(out)
    assert json.loads(first["config.json"])["model_type"] == "serpent" and "tokenizer.json" in first
    (out / "generation_config.json").write_text("{}")  # as an export by an earlier release left it
    assert main(["export-hf", str(wikitext_run), str(out)]) == 0
    assert _files(out) == first  # replaced whole: nothing stale
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temporary folder left

    def fail_half_way(model, directory):
        (Path(directory) / "model.safetensors").write_bytes(b"half")
        raise OSError("no space left on device")

    monkeypatch.setattr(io, "save_pretrained", fail_half_way)
    monkeypatch.setattr("serpent_ssm.models.save_pretrained", fail_half_way)
    with pytest.raises(OSError, match="no space"):
        hf.export_run(wikitext_run, out)
    monkeypatch.undo()
    assert _files(out) == first and sorted(p.name for p in tmp_path.iterdir()) == ["hf"]

    capsys.readouterr()
    (tmp_path / "file").write_text("mine")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    refusals = {
        "file": "out: expected a folder (new, empty, or an earlier export), got the file",
        "other": "out: expected a new or empty folder, or an earlier export",
        "file/sub": "out: expected a folder path, got",
    }
    for name, message in refusals.items():
        assert main(["export-hf", str(wikitext_run), str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"serpent: error: {message}") and err.count("\n") == 1, err
    assert (tmp_path / "file").read_text() == (tmp_path / "other" / "notes.txt").read_text() == "mine"

    run = tmp_path / "run"
    shutil.copytree(wikitext_run, run)
    for content, detail in [
        ('{"name": "bytes"}', "got no 'kind' entry"),
        ("{not json", "got JSONDecodeError"),
    ]:
        (run / "vocab.json").write_text(content)
        assert main(["export-hf", str(run), str(tmp_path / "new")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"serpent: error: {run / 'vocab.json'}: expected the run's vocabulary"), err
        assert detail in err and not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "hf", "other", "run"]


# ----------------------------------------------------------------------------- optional extra
def _python(code, tmp_path):
    import os
    import subprocess
    import sys

    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    if "PYTHONPATH" in os.environ:  # a checkout run from another tree
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_the_folder_loads_with_remote_code_where_the_library_was_not_imported(tmp_path):
    folder = export(small_lm("serpent-mamba"), tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "serpent_auto.SerpentForCausalLM"
    code = f"""
import transformers
m = transformers.AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True)
print(type(m).__module__, type(m).__name__)
"""
    done = _python(code, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["serpent_ssm.hf.modeling", "SerpentForCausalLM"]


def test_the_core_imports_without_transformers(tmp_path):
    code = """
import sys
sys.modules["transformers"] = None  # as if it were not installed
import serpent_ssm, serpent_ssm.models, serpent_ssm.cli, serpent_ssm.train.loop
assert not any(name.startswith("transformers") for name in sys.modules if sys.modules[name] is not None)
try:
    import serpent_ssm.hf
except ModuleNotFoundError as exc:
    print(exc)
"""
    done = _python(code, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    message = "serpent_ssm.hf needs transformers (5.0 or later): pip install 'serpent-ssm[hf]'"
    assert done.stdout.strip() == message
