"""The tensor-modality encoders (benchmark.models.encoders): shapes, layouts, padding masks, declared parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.models.backbones import BACKBONES
from benchmark.models.encoders import MLPEncoder, SequenceEncoder, TextEncoder
from benchmark.params import ParamError, check_params

SMALL = {"dim": 16, "layers": 2, "heads": 2, "ffn_dim": 32}
T, D, L, VOCAB = 6, 5, 7, 20


def seq_model(**kw) -> SequenceEncoder:
    torch.manual_seed(0)
    return SequenceEncoder("sequence", (T, D), **{**SMALL, **kw})


def text_model(**kw) -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder("tokens", (L,), **{**SMALL, "vocab_size": VOCAB, **kw})


def content(b: int, t: int) -> torch.Tensor:
    """Feature rows with no all-zero row (so none of them is padding)."""
    return torch.randn(b, t, D) + 3.0


def test_registered() -> None:
    assert BACKBONES.get("mlp") is MLPEncoder
    assert BACKBONES.get("sequence") is SequenceEncoder
    assert BACKBONES.get("text") is TextEncoder
    assert all(BACKBONES.get(n).has_convolutions is False for n in ("mlp", "sequence", "text"))


def test_shapes_and_out_dim() -> None:
    mlp = MLPEncoder("vector", (10,), hidden=24, layers=3)
    assert mlp(torch.randn(4, 10)).shape == (4, 24) and mlp.out_dim == 24
    seq = seq_model()
    assert seq(content(3, T)).shape == (3, 16) and seq.out_dim == 16
    text = text_model()
    assert text(torch.randint(1, VOCAB, (3, L))).shape == (3, 16) and text.out_dim == 16


@pytest.mark.parametrize(
    "cls, layout, shape",
    [(MLPEncoder, "frames", (4, 3, 8, 8)), (SequenceEncoder, "vector", (D,)), (TextEncoder, "sequence", (T, D))],
)
def test_wrong_layout_refused(cls, layout, shape) -> None:
    with pytest.raises(ValueError, match="inputs, not"):
        cls(layout, shape, vocab_size=VOCAB) if cls is TextEncoder else cls(layout, shape)


def test_seeded_construction_is_identical() -> None:
    x = content(2, T)
    a, b = seq_model().eval(), seq_model().eval()
    assert torch.equal(a(x), b(x))
    ids = torch.randint(1, VOCAB, (2, L))
    assert torch.equal(text_model().eval()(ids), text_model().eval()(ids))
    torch.manual_seed(1)
    m1 = MLPEncoder("vector", (D,)).eval()
    torch.manual_seed(1)
    m2 = MLPEncoder("vector", (D,)).eval()
    v = torch.randn(3, D)
    assert torch.equal(m1(v), m2(v))


@pytest.mark.parametrize("train", [False, True])
def test_sequence_padding_is_ignored(train: bool) -> None:
    # the same content alone (3 rows, nothing to mask) and followed by padding rows: equal outputs, and different
    # ones when the mask is off, so the test fails if padding reached attention, pooling or the BatchNorm statistics
    model = seq_model(dropout=0.0).train(train)
    short = content(2, 3)
    padded = torch.cat([short, torch.zeros(2, T - 3, D)], dim=1)
    padded[1, 1:] = 0.0  # a second sample with a different length, in the same batch
    short_1 = padded[1:, :1]
    out = model(padded)
    if not train:  # batch statistics differ with the rows in the batch; running ones do not
        assert torch.allclose(out[1:], model(short_1), atol=1e-5)
    torch.testing.assert_close(model(torch.cat([short[:1], padded[1:, :3]]))[0], out[0], atol=1e-5, rtol=1e-5)
    model.mask_padding = False
    assert not torch.allclose(model(padded)[0], out[0], atol=1e-3)


def test_text_padding_is_ignored() -> None:
    model = text_model(dropout=0.0).eval()
    ids = torch.tensor([[5, 3, 8, 0, 0, 0, 0], [4, 4, 9, 11, 2, 0, 0]])
    out = model(ids)
    torch.testing.assert_close(out[0], model(ids[:1, :3])[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], model(ids[1:, :5])[0], atol=1e-5, rtol=1e-5)
    # the padded positions hold id 0 plus their positional embedding: without the mask they would count
    h = model.embedding(ids) + model.position
    unmasked = model.transformer(h).mean(dim=1)
    assert not torch.allclose(unmasked[0], out[0], atol=1e-3)


@pytest.mark.parametrize("train", [False, True])
def test_all_padding_is_finite(train: bool) -> None:
    seq = seq_model().train(train)
    x = content(2, T)
    x[0] = 0.0
    out = seq(x)
    assert torch.isfinite(out).all() and torch.equal(out[0], torch.zeros(16))
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in seq.parameters() if p.grad is not None)
    assert torch.isfinite(seq(torch.zeros(3, T, D))).all()
    text = text_model().train(train)
    ids = torch.randint(1, VOCAB, (2, L))
    ids[0] = 0  # the absent input: all padding
    out = text(ids)
    assert torch.isfinite(out).all() and torch.equal(out[0], torch.zeros(16))
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in text.parameters() if p.grad is not None)


def test_batch_of_one_in_training() -> None:
    # a last batch of one sample has no batch variance: the input BatchNorm falls back to running statistics
    assert torch.isfinite(MLPEncoder("vector", (D,)).train()(torch.randn(1, D))).all()
    x = content(1, T)
    x[0, 1:] = 0.0  # one non-padding row in the whole batch
    assert torch.isfinite(seq_model().train()(x)).all()


def _declared_names(model: torch.nn.Module) -> list[str]:
    ids = {id(p) for p in model.modulated_parameters()}
    assert len(ids) == len(model.modulated_parameters())
    return [name for name, p in model.named_parameters() if id(p) in ids]


@pytest.mark.parametrize(
    "make, x, expected",
    [
        (lambda: MLPEncoder("vector", (D,), layers=3), torch.randn(4, D), 3),
        (seq_model, content(3, T), 1 + 4 * SMALL["layers"]),  # projection; per layer q/k/v, out, 2 feed-forward
        (text_model, torch.randint(1, VOCAB, (3, L)), 1 + 4 * SMALL["layers"]),  # embedding; the same per layer
    ],
)
def test_modulated_parameters(make, x, expected: int) -> None:
    model = make()
    declared = model.modulated_parameters()
    names = _declared_names(model)
    assert len(declared) == expected
    assert all(p.dim() >= 2 for p in declared)
    assert not [n for n in names if n.endswith("bias") or "norm" in n or "position" in n]
    model(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in declared)


def test_frozen_embeddings_are_not_declared() -> None:
    model = text_model(freeze_embeddings=True)
    assert not model.embedding.weight.requires_grad
    assert "embedding.weight" not in _declared_names(model)
    assert "embedding.weight" in _declared_names(text_model())


def test_embeddings_file(tmp_path) -> None:
    table = np.random.default_rng(0).standard_normal((VOCAB, 16)).astype(np.float32)
    np.save(tmp_path / "vectors.npy", table)
    model = text_model(embeddings=str(tmp_path / "vectors.npy"))
    assert torch.equal(model.embedding.weight.detach(), torch.from_numpy(table))
    torch.save(torch.from_numpy(table) * 2, tmp_path / "vectors.pt")
    from_pt = text_model(embeddings=str(tmp_path / "vectors.pt")).embedding.weight.detach()
    assert torch.equal(from_pt, torch.from_numpy(table) * 2)
    np.save(tmp_path / "wrong.npy", table[:, :8])
    with pytest.raises(ValueError, match=r"wrong\.npy.*\(20, 8\)"):
        text_model(embeddings=str(tmp_path / "wrong.npy"))
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        text_model(embeddings=str(tmp_path / "missing.npy"))


def test_weights_file(tmp_path) -> None:
    source = seq_model().eval()
    torch.save(source.state_dict(), tmp_path / "seq.pt")
    torch.manual_seed(5)
    loaded = SequenceEncoder("sequence", (T, D), **SMALL, weights=str(tmp_path / "seq.pt")).eval()
    x = content(2, T)
    assert torch.equal(loaded(x), source(x))


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="needs vocab_size"):
        TextEncoder("tokens", (L,))
    with pytest.raises(ValueError, match="multiple of heads"):
        SequenceEncoder("sequence", (T, D), dim=10, heads=4)
    with pytest.raises(ValueError, match="multiple of heads"):
        TextEncoder("tokens", (L,), dim=10, heads=4, vocab_size=VOCAB)


def test_declared_params_are_checked() -> None:
    check_params(TextEncoder, {"vocab_size": VOCAB, "dim": 32, "embeddings": "x.npy", "freeze_embeddings": True})
    check_params(SequenceEncoder, {"mask_padding": False, "input_norm": False, "dropout": 0.0})
    with pytest.raises(ParamError):
        check_params(MLPEncoder, {"hidden": 0})
    with pytest.raises(ParamError):
        check_params(TextEncoder, {"vocab_size": 0})
