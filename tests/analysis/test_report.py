"""The intervals-vs-information report and the resampling view: fields, the shuffled-text
control, classifier datasets (tokens, pixels), and the commands end to end on tiny trained runs."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from serpent_ssm.analysis.report import (
    Sample,
    analyze_intervals,
    analyze_run,
    samples_from_dataset,
    samples_from_text,
    shuffle_sample,
)
from serpent_ssm.analysis.resampling import plot_resampling, resampling_view
from serpent_ssm.data.vocab import LISTOPS_VOCAB
from serpent_ssm.models import ModelConfig, build_model, save_pretrained

TEXT = b"the cat sat on the mat; the dog sat on the log. " * 6
HAVE_PLOTS = importlib.util.find_spec("matplotlib") is not None


def _lm(name: str, d: int = 16):
    torch.manual_seed(0)
    return build_model(ModelConfig(name=name, head="lm", d_model=d, n_layers=1, vocab_size=259, causal=True))


class _FakeReference:
    """Stands in for SmolLM2: surprisal = 1 bit per byte plus 3 bits after a space."""

    name = "fake"

    def byte_surprisal(self, text: str) -> np.ndarray:
        raw = text.encode("utf-8")
        return np.array([1.0 + 3.0 * (i > 0 and raw[i - 1] == 32) for i in range(len(raw))])


@pytest.mark.parametrize("name", ["mamba", "serpent-mamba"])
def test_report_fields(name):
    result = analyze_intervals(_lm(name), TEXT, TEXT * 2, n_resamples=50, reference=_FakeReference())
    assert result["n_positions"] == len(TEXT) - 1 and result["n_samples"] == 1
    assert result["signals"] == ["fake_surprisal", "ngram3_surprisal", "model_surprisal"]
    keys = list(result["intervals"])
    assert keys == (["layer0"] if name == "mamba" else ["layer0/rate0.5", "layer0/rate0.3", "layer0/rate0.2"])
    entry = result["intervals"][keys[0]]
    for sig in result["signals"]:
        for r in (entry[sig], entry[f"{sig}_shuffled_text"]):
            assert r["n"] == len(TEXT) - 1 and -1 <= r["pearson"] <= 1
            assert r["pearson_ci"][0] <= r["pearson_ci"][1]
    series = result["_series"]
    assert series["text"] == TEXT[1:] and len(series["signals"]["fake_surprisal"]) == len(TEXT) - 1


def test_a_planted_relation_is_found_and_the_shuffle_keeps_frequency_effects():
    """A model whose intervals are exactly the fake reference's surprisal: correlation 1 on the
    text, and still 1 on shuffled text (the relation is per-symbol, so the control keeps it;
    a context-driven relation would drop)."""
    ref = _FakeReference()

    class Planted(torch.nn.Module):
        config = ModelConfig(name="mamba", head="classify", d_model=4, n_layers=1, vocab_size=259)

    import serpent_ssm.analysis.report as report

    def fake_record(model, inputs, mask=None):
        out = torch.zeros(inputs.shape, dtype=torch.float32)
        for b in range(inputs.shape[0]):
            raw = bytes((inputs[b] - 3).clamp(0, 255).tolist())
            out[b] = torch.tensor(ref.byte_surprisal(raw.decode("utf-8", "replace")[: len(raw)]))[: len(raw)]
        return {"layer0": out}

    mp = pytest.MonkeyPatch()
    mp.setattr(report, "record_intervals", fake_record)
    try:
        result = analyze_intervals(Planted(), TEXT, TEXT, n_resamples=20, reference=ref)
    finally:
        mp.undo()
    r = result["intervals"]["layer0"]["fake_surprisal"]
    assert r["pearson"] == pytest.approx(1.0) and r["r2"] == pytest.approx(1.0)
    assert r["slope"] == pytest.approx(1.0)
    assert result["intervals"]["layer0"]["fake_surprisal_shuffled_text"]["pearson"] == pytest.approx(1.0)


def test_shuffled_text_permutes_whole_characters():
    text = "né 日本 🐍 end".encode()
    sample = samples_from_text(text)[0]
    shuffled = shuffle_sample(sample, np.random.default_rng(0))
    assert sorted(shuffled.text) == sorted(sample.text) and shuffled.text != sample.text
    assert shuffled.symbols == shuffled.text.encode("utf-8")  # still valid UTF-8, same bytes
    torch.testing.assert_close(shuffled.inputs - 3, torch.tensor(list(shuffled.symbols)))
    tokens = Sample(torch.arange(10), bytes(range(10)))
    perm = shuffle_sample(tokens, np.random.default_rng(1))
    assert sorted(perm.inputs.tolist()) == list(range(10)) and list(perm.symbols) == perm.inputs.tolist()


def test_classifier_datasets_of_tokens_and_pixels():
    torch.manual_seed(0)
    tokens = [(torch.randint(1, 18, (n,)), 0) for n in (30, 20, 25)]
    clf = build_model(ModelConfig(name="serpent-mamba", d_model=8, n_layers=2, vocab_size=18))
    samples = samples_from_dataset(tokens, 3, LISTOPS_VOCAB)
    assert [len(s.symbols) for s in samples] == [30, 20, 25] and samples[0].text is None
    result = analyze_intervals(clf, samples, b"".join(s.symbols for s in samples), n_resamples=20)
    assert result["n_positions"] == 29 + 19 + 24 and result["signals"] == ["ngram3_surprisal"]
    assert sorted(result["intervals"]) == [f"layer{i}/rate{r}" for i in (0, 1) for r in ("0.2", "0.3", "0.5")]
    pixels = [(torch.rand(16), 1) for _ in range(2)]
    mamba = build_model(ModelConfig(name="mamba", d_model=8, n_layers=1, d_input=1))  # bidirectional
    samples = samples_from_dataset(pixels, 2, None)
    assert samples[0].symbols == bytes((pixels[0][0] * 255).round().to(torch.uint8).tolist())
    result = analyze_intervals(mamba, samples, samples[0].symbols * 4, order=2, n_resamples=20)
    assert sorted(result["intervals"]) == ["layer0/bwd", "layer0/fwd"]
    with pytest.raises(ValueError, match=r"^samples: expected a positive integer, got 0$"):
        samples_from_dataset(pixels, 0, None)


def test_errors():
    with pytest.raises(ValueError, match=r"^text: expected at least 4 bytes, got 2$"):
        analyze_intervals(_lm("mamba"), b"ab", TEXT)
    s4d = build_model(ModelConfig(name="s4d", head="lm", d_model=8, n_layers=1, vocab_size=259, causal=True))
    with pytest.raises(ValueError, match=r"^blocks\[0\]\.mixer: expected Mamba or SeRpEnt .*got S4D$"):
        analyze_intervals(s4d, TEXT, TEXT)
    with pytest.raises(ValueError, match=r"^model: expected at least one SeRpEnt mixer, got none"):
        resampling_view(_lm("mamba"), samples_from_text(TEXT)[0])


def test_lm_run_with_an_input_text(tmp_path, capsys):
    from serpent_ssm.cli import main

    save_pretrained(_lm("serpent-mamba", 8), tmp_path / "run" / "best")
    (tmp_path / "in.txt").write_bytes(TEXT)
    args = ["analyze", "intervals", str(tmp_path / "run"), "--input", str(tmp_path / "in.txt")]
    assert main([*args, "--resamples", "20", "--reference", "none"]) == 0
    out = capsys.readouterr().out
    assert "n-gram fitted on the input itself" in out and "layer0/rate0.5   vs model_surprisal" in out
    result = json.loads((tmp_path / "run" / "intervals_analysis.json").read_text())
    assert result["signals"] == ["ngram3_surprisal", "model_surprisal"]
    assert main(["analyze", "resampling", str(tmp_path / "run"), "--input", str(tmp_path / "in.txt")]) == 0
    view = json.loads((tmp_path / "run" / "resampling.json").read_text())
    assert [b["rate"] for b in view["branches"]] == [0.5, 0.3, 0.2] and view["n"] == len(TEXT)
    for b in view["branches"]:  # causal: one selected position per grid point, in order
        assert len(b["selected"]) == b["count"] == int(b["t"][-1])
        assert b["selected"] == sorted(b["selected"]) and all(0 <= p < len(TEXT) for p in b["selected"])
    if HAVE_PLOTS:
        for name in ("intervals_scatter", "intervals_along_text", "resampling_curves", "resampling_text"):
            name += ".png"
            assert (tmp_path / "run" / name).read_bytes()[:4] == b"\x89PNG"
    clf = build_model(ModelConfig(name="mamba", d_model=8, n_layers=1, vocab_size=10))
    save_pretrained(clf, tmp_path / "clf" / "best")
    with pytest.raises(ValueError, match=r"^--input: expected a byte-level model"):
        analyze_run(tmp_path / "clf", TEXT, TEXT)


def test_trained_classifier_run_end_to_end(tmp_path, capsys):
    """serpent train (tiny generated ListOps) -> analyze intervals / resampling on its val split."""
    from serpent_ssm.cli import main

    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--set", "model.name=serpent-mamba", "--set", "model.d_model=8", "--set", "model.n_layers=1",
                "--set", f"data.data_dir={tmp_path / 'data'}", "--set", "data.batch_size=8",
                "--set", "data.generate={n_train: 32, n_val: 8, n_test: 8, min_len: 20, max_len: 60}",
                "--max-steps", "3", "--out", str(run),
            ]
        )
        == 0
    )  # fmt: skip
    assert main(["analyze", "intervals", str(run), "--samples", "4", "--resamples", "20"]) == 0
    result = json.loads((run / "intervals_analysis.json").read_text())
    assert result["n_samples"] == 4 and result["signals"] == ["ngram3_surprisal"]
    entry = result["intervals"]["layer0/rate0.5"]
    assert {"mean", "std", "ngram3_surprisal", "ngram3_surprisal_shuffled_text"} <= set(entry)
    fields = {"pearson", "pearson_ci", "spearman", "spearman_ci", "slope", "r2", "n"}
    assert set(entry["ngram3_surprisal"]) >= fields
    assert main(["analyze", "resampling", str(run), "--index", "1"]) == 0
    view = json.loads((run / "resampling.json").read_text())
    for b in view["branches"]:  # non-causal: exactly ceil(κ·n) grid points
        assert b["count"] == len(b["selected"]) == int(np.ceil(b["rate"] * view["n"] - 1e-9))
    if HAVE_PLOTS:
        assert (run / "resampling_text.png").is_file() and (run / "intervals_scatter.png").is_file()
    capsys.readouterr()
    assert main(["analyze", "resampling", str(run), "--index", "8"]) == 2
    err = capsys.readouterr().err
    assert err == "serpent: error: --index: expected 0 <= index < 8 (val samples), got 8\n"
    assert main(["analyze", "intervals", str(run), "--reference", "smollm2"]) == 2
    assert "reference: expected text samples for 'smollm2'" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_PLOTS, reason="needs matplotlib (serpent-ssm[plots])")
def test_image_heat_map(tmp_path):
    torch.manual_seed(0)
    clf = build_model(ModelConfig(name="serpent-mamba", d_model=8, n_layers=1, d_input=1))
    sample = samples_from_dataset([(torch.rand(64, 1), 0)], 1, None)[0]
    view = resampling_view(clf, sample)
    paths = plot_resampling(view, sample, tmp_path)
    assert [p.name for p in paths] == ["resampling_curves.png", "resampling_image.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_lm_run_on_its_own_splits(tmp_path, monkeypatch):
    """Without --input an LM run reads its validation stream and fits the n-gram on its training
    stream (LMWindows, or a Subset of it under data.limit_train)."""
    import types

    import serpent_ssm.analysis.report as report
    from serpent_ssm.analysis.resampling import analyze_resampling_run
    from serpent_ssm.data.corpus import LMWindows

    train = torch.frombuffer(bytearray(TEXT * 4), dtype=torch.uint8)
    val = torch.frombuffer(bytearray(TEXT[::-1]), dtype=torch.uint8)
    task = types.SimpleNamespace(train=LMWindows(train, 32), val=val, test=val)
    assert report.lm_split_bytes(task, "train", 5, 9) == (TEXT * 4)[5:9]
    assert report.lm_split_bytes(task, "val", 0, 3) == TEXT[::-1][:3]
    subset = types.SimpleNamespace(train=torch.utils.data.Subset(task.train, [0]), val=val)
    assert report.lm_split_bytes(subset, "train", 0, 4) == TEXT[:4]
    monkeypatch.setattr(report, "_run_data", lambda run: (task, None))
    save_pretrained(_lm("serpent-mamba", 8), tmp_path / "run" / "best")
    path = analyze_run(tmp_path / "run", max_bytes=100, n_resamples=10)
    assert json.loads(path.read_text())["n_positions"] == 99
    paths = analyze_resampling_run(tmp_path / "run", split="train", index=1)
    view = json.loads(paths[0].read_text())
    assert view["n"] == 480 and paths[0].name == "resampling.json"
