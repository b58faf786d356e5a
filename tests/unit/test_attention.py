"""Attention through SDPA (`fmb.models.attention`): each of AION's hand-written attention modules
against its SDPA swap, on random inputs with masks (a query with every key masked included) and with
``softmax1``; a whole tiny AION swapped against the package's own, encoder and decoder; and the
packed single-modality passes of `AionRoute.embed` against three separate package encodes."""

import copy

import pytest
import torch

from fmb.models.aion import AionEncoder, AionSection, _random_parts
from fmb.models.attention import SdpaAttention, SdpaCrossAttention, use_sdpa

TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def swapped(module: torch.nn.Module) -> torch.nn.Module:
    holder = torch.nn.Sequential(copy.deepcopy(module))
    assert use_sdpa(holder) == 1
    assert isinstance(holder[0], (SdpaAttention, SdpaCrossAttention))
    return holder[0]


def self_masks(b: int, n: int) -> list:
    keys = torch.rand(b, 1, n) < 0.4
    keys[1] = True  # every key masked: the package attends uniformly (it fills -max, not -inf)
    pairs = torch.rand(b, n, n) < 0.5
    pairs[0, 3] = True
    return [None, keys, pairs]


@pytest.mark.parametrize("zero_attn", [False, True])
@pytest.mark.parametrize("name", ["Attention", "NormAttention"])
def test_self_attention_matches_the_package_module_with_masks(name, zero_attn):
    from aion.fourm import fm_utils

    torch.manual_seed(0)
    original = getattr(fm_utils, name)(64, num_heads=4, qkv_bias=True, allow_zero_attn=zero_attn).eval()
    sdpa = swapped(original)
    x = torch.randn(3, 11, 64)
    for mask in self_masks(3, 11):
        torch.testing.assert_close(sdpa(x, mask), original(x, mask), **TOLERANCE)
        torch.testing.assert_close(sdpa(x, mask=mask), original(x, mask=mask), **TOLERANCE)


@pytest.mark.parametrize("zero_attn", [False, True])
@pytest.mark.parametrize("name", ["CrossAttention", "NormCrossAttention"])
def test_cross_attention_matches_the_package_module_with_masks(name, zero_attn):
    from aion.fourm import fm_utils

    torch.manual_seed(1)
    original = getattr(fm_utils, name)(64, num_heads=4, allow_zero_attn=zero_attn).eval()
    sdpa = swapped(original)
    x, context = torch.randn(3, 7, 64), torch.randn(3, 10, 64)
    mask = torch.rand(3, 7, 10) < 0.5
    mask[0] = True
    for m in (None, mask):
        torch.testing.assert_close(sdpa(x, context, m), original(x, context, m), **TOLERANCE)


def test_softmax1_differs_from_the_softmax_so_the_test_above_can_fail():
    from aion.fourm import fm_utils

    torch.manual_seed(2)
    plain = fm_utils.Attention(64, num_heads=4).eval()
    zero = swapped(plain)
    zero.allow_zero_attn = True
    x = torch.randn(2, 5, 64)
    assert not torch.allclose(zero(x), plain(x), atol=1e-4)


def test_a_swapped_aion_keeps_its_weights_and_computes_the_same_encoder_and_decoder():
    from aion.modalities import HSCImage

    original, _, _ = _random_parts()
    fast = copy.deepcopy(original)
    assert use_sdpa(fast) == 2 + 2 * 2  # tiny: 2 encoder blocks, 2 decoder blocks (self + cross each)
    assert use_sdpa(fast) == 0  # nothing hand-written left
    assert original.state_dict().keys() == fast.state_dict().keys()
    assert all(torch.equal(v, fast.state_dict()[k]) for k, v in original.state_dict().items())
    torch.manual_seed(3)
    tokens = {"tok_image_hsc": torch.randint(0, 4375, (2, 576)), "tok_spectrum_desi": torch.randint(0, 1024, (2, 273))}
    input_mask = {"tok_spectrum_desi": torch.rand(2, 273) < 0.3}  # masked input tokens: key masks in the encoder
    with torch.no_grad():
        for model in (original, fast):
            model.eval()
        encoded = [m.encode(tokens, input_mask=input_mask, num_encoder_tokens=849) for m in (original, fast)]
        torch.testing.assert_close(encoded[1], encoded[0], **TOLERANCE)
        spectrum_only = {"tok_spectrum_desi": tokens["tok_spectrum_desi"]}
        logits = [m(spectrum_only, target_modality=[HSCImage], input_mask={"tok_spectrum_desi": input_mask["tok_spectrum_desi"]})
                  for m in (original, fast)]  # decoder: self- and cross-attention with masks
        torch.testing.assert_close(logits[1]["tok_image_hsc"], logits[0]["tok_image_hsc"], **TOLERANCE)


def test_embed_equals_three_separate_encodes_of_the_unswapped_package_model():
    encoder = AionEncoder.load(AionSection(preset="tiny")).eval()
    package, _, _ = _random_parts()  # the same seeded weights, hand-written attention
    assert all(torch.equal(v, encoder.aion.state_dict()[k]) for k, v in package.state_dict().items())
    torch.manual_seed(4)
    image, spectrum = torch.randint(0, 4375, (3, 576)), torch.randint(0, 1024, (3, 273))

    def mean_encoding(tokens):
        return package.eval().encode(tokens, num_encoder_tokens=sum(t.shape[1] for t in tokens.values())).mean(1)

    with torch.no_grad():
        ours = encoder.encode_passes(image, spectrum)
        expected = {"image": mean_encoding({"tok_image_hsc": image}),
                    "spectrum": mean_encoding({"tok_spectrum_desi": spectrum}),
                    "joint": mean_encoding({"tok_image_hsc": image, "tok_spectrum_desi": spectrum})}
    assert ours.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(ours[key], expected[key], **TOLERANCE)
    assert not torch.allclose(ours["image"], expected["joint"], atol=1e-3)  # the passes do differ


def test_astropt_attention_is_already_sdpa_and_equals_the_package_hand_written_causal_path():
    from fmb.models.astropt import AstroPTSection, _random_gpt

    gpt = _random_gpt(AstroPTSection(preset="tiny", image_size=32)).eval()
    block = gpt.transformer.h[0].attn
    assert block.flash  # the package calls F.scaled_dot_product_attention(is_causal=True)
    manual = copy.deepcopy(block)
    manual.flash = False  # the package's own hand-written fallback (needs its causal buffer)
    n = gpt.config.block_size
    manual.register_buffer("bias", torch.tril(torch.ones(n, n)).view(1, 1, n, n))
    x = torch.randn(2, 30, gpt.config.n_embd)
    with torch.no_grad():
        torch.testing.assert_close(block(x), manual(x), **TOLERANCE)


def test_astroclip_attention_is_sdpa_and_equals_a_hand_written_softmax():
    from fmb.models.astroclip import _Attention

    torch.manual_seed(5)
    attention = _Attention(32, 4).eval()
    x = torch.randn(2, 9, 32)
    q, k, v = attention.qkv(x).view(2, 9, 3, 4, 8).permute(2, 0, 3, 1, 4)
    weights = (q @ k.transpose(-2, -1) / 8 ** 0.5).softmax(-1)
    expected = attention.proj((weights @ v).transpose(1, 2).reshape(2, 9, 32))
    with torch.no_grad():
        torch.testing.assert_close(attention(x), expected, **TOLERANCE)


def test_astropt_with_its_gelu_fused_equals_the_package_gpt():
    from fmb.models.astropt import AstroPTSection, FusedGeluMLP, _random_gpt, use_fused_gelu

    package = _random_gpt(AstroPTSection(preset="tiny", image_size=32)).eval()
    fused = copy.deepcopy(package)
    assert use_fused_gelu(fused) == package.config.n_layer and use_fused_gelu(fused) == 0
    assert isinstance(fused.transformer.h[0].mlp, FusedGeluMLP)
    assert all(torch.equal(v, fused.state_dict()[k]) for k, v in package.state_dict().items())
    torch.manual_seed(6)
    inputs = {"images": torch.randn(2, 4, 768), "images_positions": torch.arange(4).expand(2, -1),
              "spectra": torch.randn(2, 5, 10), "spectra_positions": torch.rand(2, 5, 10)}
    with torch.no_grad():
        ours, theirs = fused.get_embeddings(inputs), package.get_embeddings(inputs)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], **TOLERANCE)
