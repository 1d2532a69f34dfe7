"""Model and hardware registries: the numbers and FLOP formulas of docs/design.md
("Registry sources"), and the cost formulas built on them."""

from __future__ import annotations

import pytest

from sim.errors import UserError
from sim.hardware import GPUS, LINKS, get_gpu, get_link
from sim.models import MODELS, get_model


@pytest.mark.parametrize("res,tokens", [(1024, 4096), (2048, 16384), (4096, 65536),
                                        (8192, 262144)])
def test_image_tokens(res: int, tokens: int) -> None:
    for name in ("pixart-alpha", "sd3-medium", "flux-dev", "hunyuan-dit", "dit-xl-2"):
        assert MODELS[name].image_tokens(res) == tokens


def test_pixart_block_flops_match_design_formula() -> None:
    m = get_model("pixart")
    s, t, h = 4096, 120, 1152
    design = 28 * s * h**2 + 4 * s**2 * h + 4 * s * t * h + 4 * t * h**2
    assert m.block_flops(0, s, s) == pytest.approx(design)
    # Under PipeFusion the attention term of a patch is 4*q*kv*h with q = s/M, kv = s.
    q = s // 8
    patch = 28 * q * h**2 + 4 * q * s * h + 4 * q * t * h + 4 * t * h**2
    assert m.block_flops(0, q, s) == pytest.approx(patch)


def test_joint_and_dit_flops_match_design() -> None:
    sd3 = get_model("sd3")
    s, t, h = 4096, 333, 1536
    n = s + t
    assert sd3.block_flops(0, s, s) == pytest.approx(24 * n * h**2 + 4 * n**2 * h)
    dit = get_model("dit-xl-2")
    assert dit.block_flops(0, s, s) == pytest.approx(24 * s * 1152**2 + 4 * s**2 * 1152)


def test_attention_share_of_pixart_flops() -> None:
    # docs/design.md, "FLOPs per block": attention is a third of PixArt's FLOPs at 1024 px,
    # nearly all at 8192 px.
    m = get_model("pixart")

    def attn_share(res: int) -> float:
        s = m.image_tokens(res)
        return 4 * s * s * m.hidden / m.block_flops(0, s, s)

    assert 0.25 < attn_share(1024) < 0.4
    assert attn_share(8192) > 0.85


@pytest.mark.parametrize("name", ["pixart-alpha", "sd3-medium", "flux-dev", "hunyuan-dit",
                                  "sd35-large", "dit-xl-2"])
def test_block_params_close_to_registry_total(name: str) -> None:
    m = MODELS[name]
    blocks = m.blocks_params(0, m.num_blocks - 1)
    assert 0.85 * m.params < blocks <= 1.01 * m.params
    assert m.outside_params >= 0


def test_flux_block_kinds() -> None:
    f = get_model("flux")
    kinds = [f.block_kind(i) for i in range(f.num_blocks)]
    assert kinds.count("joint") == 19 and kinds.count("single") == 38
    assert kinds[:19] == ["joint"] * 19


def test_aliases_and_unknown() -> None:
    assert get_model("pixart").name == "pixart-alpha"
    assert get_model("PixArt-Sigma").text_tokens == 300
    with pytest.raises(UserError, match="unknown model 'nope'"):
        get_model("nope")
    with pytest.raises(UserError, match="unknown GPU"):
        get_gpu("gtx480")
    with pytest.raises(UserError, match="unknown link"):
        get_link("carrier-pigeon")


def test_every_registry_number_has_a_source() -> None:
    for g in GPUS.values():
        assert g.sources and all(src for _, src in g.sources)
    for lk in LINKS.values():
        assert lk.source
    for m in MODELS.values():
        assert m.sources


def test_gpu_table_matches_design() -> None:
    assert get_gpu("l40").peak_flops == 181e12
    assert get_gpu("h100-sxm").memory_bytes == 80e9
    assert get_gpu("h200").mem_bandwidth == 4800e9
    assert get_gpu("a100-sxm-80g").nvlink == "nvlink3"
    assert get_gpu("l20").nvlink is None
