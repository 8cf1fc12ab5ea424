from dataclasses import dataclass

import pytest
from torch import nn

from gankd.distill import GankdError, create_model, get_arch, list_archs, register_arch


def test_registered_archs():
    assert list_archs() == ["gcfsr", "rrdbnet", "span", "spandrel", "srvgg_compact", "stylegan2_discriminator",
                            "stylegan2_generator", "unet_discriminator_sn"]
    assert list_archs("discriminator") == ["stylegan2_discriminator", "unet_discriminator_sn"]


def test_unknown_name_raises_one_line_listing_known():
    with pytest.raises(GankdError, match=r"unknown arch 'esrgan'; registered: gcfsr, rrdbnet, span, spandrel, srvgg_compact") as info:
        get_arch("esrgan")
    assert "\n" not in str(info.value)


def test_duplicate_name_raises():
    @dataclass(frozen=True)
    class Cfg:
        n: int = 1

    with pytest.raises(GankdError, match="already registered"):
        register_arch("rrdbnet", Cfg, kind="generator", family="rrdb")(lambda c: nn.Identity())


def test_config_must_be_frozen_dataclass():
    @dataclass
    class Mutable:
        n: int = 1

    with pytest.raises(GankdError, match="frozen dataclass"):
        register_arch("never_registered", Mutable, kind="generator", family="x")(lambda c: nn.Identity())
    assert "never_registered" not in list_archs()


def test_unknown_option_and_bad_value():
    with pytest.raises(GankdError, match="arch 'rrdbnet' has no option 'num_blocks'"):
        create_model("rrdbnet", num_blocks=3)
    with pytest.raises(GankdError, match="scale must be 1, 2 or 4"):
        create_model("rrdbnet", scale=3)
    with pytest.raises(GankdError, match="num_feat must be a positive integer"):
        create_model("srvgg_compact", num_feat=0)
