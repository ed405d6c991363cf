import pytest
import torch
from torch import nn

from posterior.constraints import ClassifierLikelihood, ImageTransform

transformers = pytest.importorskip("transformers")


def _tiny_vit():
    config = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=37, num_labels=10)
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(config).eval()


def test_transformers_classifier_with_explicit_transform():
    model = _tiny_vit()
    transform = ImageTransform(input_range=(-1, 1), size=(16, 16), channels=3, mean=[0.5] * 3, std=[0.5] * 3)
    likelihood = ClassifierLikelihood(model, transform=transform, temperature=2.0)
    x = torch.rand(4, 1, 14, 14) * 2 - 1
    y = torch.tensor([0, 3, 9, 3])
    with torch.no_grad():
        got = likelihood(x, y)
        pixels = torch.nn.functional.interpolate((x + 1) / 2, size=(16, 16), mode="bilinear", align_corners=False,
                                                 antialias=True).expand(-1, 3, -1, -1)
        logits = model(pixel_values=(pixels - 0.5) / 0.5).logits
        expected = torch.log_softmax(logits / 2.0, -1)[torch.arange(4), y]
    torch.testing.assert_close(got, expected)
    assert bool((got < 0).all())
    # a fixed set of classes: the best of them
    best = ClassifierLikelihood(model, transform=transform, target_classes=[1, 2], temperature=2.0)
    with torch.no_grad():
        torch.testing.assert_close(best(x), torch.log_softmax(logits / 2.0, -1)[:, [1, 2]].max(-1).values)


def test_gradients_flow_to_the_images_and_bad_input_is_named():
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    likelihood = ClassifierLikelihood(classifier, target_classes=2)
    x = torch.randn(3, 1, 4, 4, requires_grad=True)
    likelihood(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="y must hold one class per image"):
        likelihood(x, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"class indices in \[0, 5\)"):
        likelihood(x, torch.tensor([1, 2, 7]))
    with pytest.raises(ValueError, match="pass y"):
        ClassifierLikelihood(classifier)(x)
