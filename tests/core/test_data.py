import json

import pytest
import torch

from bitsmith.core.data import calibration_windows, eval_windows, load_text, tokenize_text
from bitsmith.core.errors import BadInput


def test_builtin_parts_are_disjoint_and_sizeable():
    calib, held = load_text("builtin"), load_text("builtin-eval")
    assert len(calib) > 300_000 and len(held) > 30_000
    calib_topics, held_topics = set(calib.split("\n\n")), set(held.split("\n\n"))
    assert not {t for t in calib_topics & held_topics if len(t) > 200}


def test_calibration_windows_are_seeded(tokenizer):
    a = calibration_windows("builtin", tokenizer, 4, 32, seed=1)
    b = calibration_windows("builtin", tokenizer, 4, 32, seed=1)
    c = calibration_windows("builtin", tokenizer, 4, 32, seed=2)
    assert a.shape == (4, 32) and torch.equal(a, b) and not torch.equal(a, c)


def test_eval_windows_are_consecutive_from_the_start(tokenizer, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    tokens = tokenize_text(path.read_text(), tokenizer)
    windows = eval_windows(f"file:{path}", tokenizer, 16)
    assert windows.shape == (tokens.numel() // 16, 16)
    assert torch.equal(windows.flatten(), tokens[: windows.numel()])
    assert eval_windows(f"file:{path}", tokenizer, 16, max_windows=3).shape == (3, 16)


def test_jsonl_source(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"line number {i} of the data"}) for i in range(50)))
    assert "line number 7" in load_text(f"file:{path}")
    (tmp_path / "bad.jsonl").write_text('{"txt": "x"}\n')
    with pytest.raises(BadInput, match="no string field 'text'"):
        load_text(f"file:{tmp_path / 'bad.jsonl'}")


@pytest.mark.parametrize("text, fragment", [("", "has 0 tokens"), ("a few words", "fewer than")])
def test_empty_or_short_sources(tmp_path, tokenizer, text, fragment):
    path = tmp_path / "short.txt"
    path.write_text(text)
    with pytest.raises(BadInput, match=fragment):
        eval_windows(f"file:{path}", tokenizer, 512)
    with pytest.raises(BadInput, match=fragment):
        calibration_windows(f"file:{path}", tokenizer, 2, 512)


def test_unknown_and_missing_sources(tokenizer):
    with pytest.raises(BadInput, match="unknown data source"):
        load_text("wikipedia")
    with pytest.raises(BadInput, match="does not exist"):
        load_text("file:/no/such/file.txt")


def test_selfgen_is_seeded_and_in_vocab(tiny_llama):
    from bitsmith.core.model import load_model

    loaded = load_model(str(tiny_llama))
    a = calibration_windows("selfgen", loaded.tokenizer, 3, 12, seed=5, model=loaded.model)
    b = calibration_windows("selfgen", loaded.tokenizer, 3, 12, seed=5, model=loaded.model)
    assert a.shape == (3, 12) and torch.equal(a, b)
    assert int(a.max()) < loaded.model.config.vocab_size


def test_selfgen_cache_returns_the_sample_it_stored(tiny_llama, tmp_path, monkeypatch):
    from bitsmith.core.model import load_model

    loaded = load_model(str(tiny_llama))
    monkeypatch.setenv("BITSMITH_CACHE", "")                       # cache off: a fresh sample
    fresh = calibration_windows("selfgen", loaded.tokenizer, 2, 10, seed=3, model=loaded.model)
    monkeypatch.setenv("BITSMITH_CACHE", str(tmp_path))
    stored = calibration_windows("selfgen", loaded.tokenizer, 2, 10, seed=3, model=loaded.model)
    files = list((tmp_path / "selfgen").glob("*.safetensors"))
    assert len(files) == 1 and torch.equal(fresh, stored)
    files[0].write_bytes(b"damaged")                              # a damaged entry is sampled again
    again = calibration_windows("selfgen", loaded.tokenizer, 2, 10, seed=3, model=loaded.model)
    assert torch.equal(fresh, again)
    other_seed = calibration_windows("selfgen", loaded.tokenizer, 2, 10, seed=4, model=loaded.model)
    assert not torch.equal(fresh, other_seed) and len(list((tmp_path / "selfgen").glob("*"))) == 2


def test_selfgen_reports_each_step_and_stops_at_a_check(tiny_llama, monkeypatch):
    """Sampling calls on_step once per token position of each batch (so a job can emit
    progress with an ETA) and check() before each; the sample is the same with or without them."""
    from bitsmith.core.data import selfgen_windows
    from bitsmith.core.errors import Cancelled
    from bitsmith.core.model import load_model

    monkeypatch.setenv("BITSMITH_CACHE", "")
    loaded = load_model(str(tiny_llama))
    steps = []
    with_hooks = selfgen_windows(loaded.model, loaded.tokenizer, 5, 8, seed=2, batch_size=2,
                                 on_step=lambda done, total: steps.append((done, total)))
    assert steps == [(d, 24) for d in range(1, 25)]         # 3 batches x 8 positions, in order
    assert torch.equal(with_hooks, selfgen_windows(loaded.model, loaded.tokenizer, 5, 8, seed=2, batch_size=2))

    calls = []

    def check():
        calls.append(1)
        if len(calls) == 4:
            raise Cancelled()

    with pytest.raises(Cancelled):
        selfgen_windows(loaded.model, loaded.tokenizer, 5, 8, seed=2, batch_size=2, check=check)
    assert len(calls) == 4                                   # stopped at once, not at the end
