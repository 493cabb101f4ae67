"""Which runtime serves an image: SageMaker framework image URIs, short names, unsupported images, missing extras."""

from __future__ import annotations

import re

import pytest

from moorage.runtimes.registry import (
    RUNTIMES,
    RuntimeSpec,
    UnsupportedImage,
    missing_packages,
    resolve_image,
    supported_images,
)

SKLEARN_IMAGES = [
    "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3",
    "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:0.23-1-cpu-py3",
    "246618743249.dkr.ecr.us-west-2.amazonaws.com/sagemaker-scikit-learn:1.0-1-cpu-py3",
    "141502667606.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-scikit-learn:1.2-1",
    "492215442770.dkr.ecr.eu-central-1.amazonaws.com/sagemaker-scikit-learn:0.20.0-cpu-py3",
    "121021644041.dkr.ecr.ap-southeast-2.amazonaws.com/sagemaker-scikit-learn:1.3-1-cpu-py3",
    "450853457545.dkr.ecr.cn-north-1.amazonaws.com.cn/sagemaker-scikit-learn:1.2-1-cpu-py3",
    "414596584902.dkr.ecr.us-gov-west-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3",
    "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn",
    "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn@sha256:" + "ab" * 32,
    "  683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3\n",
    "683313688378.DKR.ECR.US-EAST-1.AMAZONAWS.COM/SAGEMAKER-SCIKIT-LEARN:1.2-1-CPU-PY3",
    "sagemaker-scikit-learn:1.2-1-cpu-py3",  # a local re-tag of the image
]


@pytest.mark.parametrize("image", SKLEARN_IMAGES)
def test_sagemaker_sklearn_images_resolve_to_the_sklearn_runtime(image: str) -> None:
    spec = resolve_image(image)
    assert spec is RUNTIMES["sklearn"]
    assert spec.name == "sklearn" and spec.extra == "sklearn"


@pytest.mark.parametrize("name", ["sklearn", "scikit-learn", "SKLearn", "Scikit-Learn", " sklearn "])
def test_short_names(name: str) -> None:
    assert resolve_image(name).name == "sklearn"


def test_every_short_name_resolves_to_its_own_runtime() -> None:
    for spec in RUNTIMES.values():
        for short in spec.short_names:
            assert resolve_image(short) is spec
            assert resolve_image(short.upper()) is spec


# Images that no runtime serves (the list of runtimes grows; these stay unsupported).
UNSUPPORTED = [
    "763104351884.dkr.ecr.us-east-1.amazonaws.com/tensorflow-inference:2.13-cpu",
    "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-inference:2.1.0-transformers4.37-cpu-py310",
    "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn-extension:2.5-1-cpu-py3",
    "123456789012.dkr.ecr.us-east-1.amazonaws.com/my-sagemaker-scikit-learn:1.2-1",
    "123456789012.dkr.ecr.us-east-1.amazonaws.com/my-own-server:latest",
    "tensorflow",
    "sk",
    "sklearnx",
    "",
]


@pytest.mark.parametrize("image", UNSUPPORTED)
def test_unsupported_images_name_the_supported_ones(image: str) -> None:
    with pytest.raises(UnsupportedImage) as info:
        resolve_image(image)
    message = str(info.value)
    assert f"'{image.strip()}'" in message
    assert "sklearn" in message and "scikit-learn" in message
    assert "SageMaker framework image URI" in message
    assert isinstance(info.value, ValueError)  # callers turn it into a ValidationException


def test_supported_images_lists_every_short_name() -> None:
    text = supported_images()
    for spec in RUNTIMES.values():
        for short in spec.short_names:
            assert short in text


def test_missing_packages_is_none_when_everything_is_installed() -> None:
    assert missing_packages(RUNTIMES["sklearn"]) is None


def _fake_spec(*modules: str) -> RuntimeSpec:
    return RuntimeSpec(name="fakeframework", extra="fake-extra", modules=modules, short_names=("fake",),
                       image_pattern=re.compile(r"(^|/)fake-image(:|@|$)"))


def test_missing_packages_names_the_missing_module_and_the_extra() -> None:
    message = missing_packages(_fake_spec("json", "moorage_surely_not_a_module_xyz", "orjson"))
    assert message is not None
    assert "moorage_surely_not_a_module_xyz" in message
    assert "pip install 'moorage[fake-extra]'" in message
    assert "fakeframework runtime" in message
    assert "json," not in message and "orjson" not in message  # installed modules are not blamed


def test_missing_packages_lists_every_missing_module() -> None:
    message = missing_packages(_fake_spec("nope_module_one", "nope_module_two"))
    assert message is not None
    assert "nope_module_one, nope_module_two" in message


def test_missing_packages_with_a_dotted_module_name() -> None:
    message = missing_packages(_fake_spec("moorage_missing_parent_pkg.submodule"))
    assert message is not None and "moorage[fake-extra]" in message
