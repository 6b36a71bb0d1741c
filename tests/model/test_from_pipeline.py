from onetrainer.model.diffusion import DiffusionModel
from onetrainer.util.family import get_family
from onetrainer.util.tiny.models import build_tiny_sd2_pipeline


def test_wraps_pipeline_components_and_takes_replacements():
    pipe = build_tiny_sd2_pipeline(seed=0, v_prediction=True)
    model = DiffusionModel.from_pipeline(pipe, get_family("sd2"), source="test")
    assert model.unet is pipe.unet
    assert model.denoiser is pipe.unet
    assert model.components == {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "vae": pipe.vae}
    assert model.tokenizer is pipe.tokenizer
    assert model.noise_scheduler is pipe.scheduler
    assert model.prediction_type == "v_prediction"
    assert model.model_type == "sd2"
    assert model.spec is get_family("sd2")

    swapped = DiffusionModel.from_pipeline(
        pipe, get_family("sd2"), source="test", prediction_type="epsilon", unet=pipe.vae
    )
    assert swapped.unet is pipe.vae
    assert swapped.prediction_type == "epsilon"
