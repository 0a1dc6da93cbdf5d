"""core.backbone.inference: the packed bf16 copy of a backbone, against autocast and fp32."""

import pytest
import torch
from conftest import ci_backbone_config as _cfg
from conftest import position_grid as _positions

from core.backbone.model import (
    Backbone,
    load_backbone,
)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.float() - b.float()) ** 2).mean() / (b.float() ** 2).mean())


@pytest.mark.parametrize("B,T", [(1, 64), (3, 64), (5, 40), (0, 64)])
def test_packed_bf16_inference_matches_autocast_on_the_demo_backbone(B, T):
    """core.backbone.inference: the trained demo backbone, packed bf16 with fused GELU, gives
    what bf16 autocast gives, on real tokens of the demo atlas, for any batch and window
    (including empty batches), and stays within bf16 rounding of fp32."""
    from core.backbone.inference import PackedBackbone, packed_backbone
    from core.tokens.store import TokenStore

    backbone = load_backbone("assets/demo")
    packed = packed_backbone(backbone)
    if packed is None:
        pytest.skip("this torch build has no oneDNN bf16 linear")
    assert isinstance(packed, PackedBackbone) and packed_backbone(backbone) is packed
    store = TokenStore("assets/demo/tokens")
    tok = max((store.get(i) for i in store.ids[:40]), key=lambda t: len(t.tokens))
    n = B * T
    x = tok.tokens.masked_fill(~tok.mask, 0.0).float()[:n].reshape(B, T, tok.tokens.shape[-1])
    pos = torch.as_tensor(tok.positions).long()[:n].reshape(B, T, 3)
    with torch.inference_mode():
        z32 = backbone.encode(x, pos)
        rec32 = backbone.decode(z32, pos)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z_auto = backbone.encode(x, pos).float()
            rec_auto = backbone.decode(z32, pos).float()
        z, rec = packed.encode(x, pos), packed.decode(z32, pos)
    assert z.shape == z32.shape and rec.shape == rec32.shape
    if n == 0:
        return
    assert _rel(z, z_auto) < 1e-4 and _rel(rec, rec_auto) < 1e-4
    assert _rel(z, z32) < 1e-3 and _rel(rec, rec32) < 1e-3


def test_packed_copy_is_made_again_after_the_weights_change():
    from core.backbone.inference import packed_backbone

    torch.manual_seed(0)
    model = Backbone(_cfg(token_size=16, d_model=64)).eval()
    first = packed_backbone(model)
    if first is None:
        pytest.skip("this torch build has no oneDNN bf16 linear")
    assert packed_backbone(model) is first
    x, pos = torch.randn(2, 8, 16), _positions(2, 8)
    before = first.encode(x, pos)
    with torch.no_grad():
        model.encoder.outp.bias.add_(1.0)
    second = packed_backbone(model)
    assert second is not first
    assert torch.allclose(second.encode(x, pos).float(), before.float() + 1.0, atol=0.05)
