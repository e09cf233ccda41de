import math

import torch
import torch.nn.functional as F

from bitsmith.core.evaluate import kl_divergence, kl_per_token, perplexity, window_nlls
from bitsmith.core.model import load_model


def test_perplexity_matches_the_models_own_loss(tiny_llama):
    loaded = load_model(str(tiny_llama))
    windows = torch.randint(0, 512, (3, 20), generator=torch.Generator().manual_seed(0))
    losses = [loaded.model(input_ids=w[None], labels=w[None]).loss.item() for w in windows]
    assert math.isclose(perplexity(loaded.model, windows), math.exp(sum(losses) / 3), rel_tol=1e-5)
    assert window_nlls(loaded.model, windows).shape == (3,)


def test_kl_per_token_matches_torch_and_is_chunk_invariant():
    gen = torch.Generator().manual_seed(0)
    p, q = torch.randn(50, 300, generator=gen), torch.randn(50, 300, generator=gen)
    expected = F.kl_div(F.log_softmax(q, -1), F.log_softmax(p, -1), log_target=True, reduction="none").sum(-1)
    assert torch.allclose(kl_per_token(p, q, chunk=7), expected, atol=1e-5)
    assert torch.allclose(kl_per_token(p, p), torch.zeros(50), atol=1e-6)


def test_kl_between_models(tiny_models):
    a = load_model(str(tiny_models["llama"])).model
    windows = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1))
    assert kl_divergence(a, a, windows) < 1e-6
    noisy = load_model(str(tiny_models["llama"])).model
    with torch.no_grad():
        noisy.lm_head.weight.add_(torch.randn_like(noisy.lm_head.weight))
    assert kl_divergence(a, noisy, windows) > 1e-2
