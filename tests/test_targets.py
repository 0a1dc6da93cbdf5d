"""core.generation.targets: the timm targets offered for generation, sized before building."""

from __future__ import annotations

from core.generation.targets import MAX_GENERATE_PARAMS, TIMM_SUGGESTED, timm_fit


def test_timm_choices_are_sized_and_checked_before_building():
    for name in TIMM_SUGGESTED:  # every suggestion builds and runs on a zoo image task
        fit = timm_fit(name, "digits10")
        assert fit["ok"], fit
        assert 0 < fit["params"] <= MAX_GENERATE_PARAMS
    big = timm_fit("aimv2_3b_patch14_448", "digits10")  # sized on the meta device, refused
    assert not big["ok"] and big["params"] > 10**9 and "M parameters" in big["reason"]
    vit = timm_fit("vit_tiny_patch16_224", "digits10")  # needs 224x224 inputs
    assert not vit["ok"] and "1x8x8" in vit["reason"]
    assert "tabular" in timm_fit("resnet18", "wine")["reason"]
