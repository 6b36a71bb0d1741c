from onetrainer.model.stable_diffusion import StableDiffusionModel
from onetrainer.util.enums import ModelType
from onetrainer.util.tiny.models import build_tiny_sd2_pipeline


def test_wraps_pipeline_components_and_takes_replacements():
    pipe = build_tiny_sd2_pipeline(seed=0, v_prediction=True)
    model = StableDiffusionModel.from_pipeline(pipe, source="test", model_type=ModelType.SD2)
    assert model.unet is pipe.unet
    assert model.noise_scheduler is pipe.scheduler
    assert model.prediction_type == "v_prediction"
    assert model.model_type is ModelType.SD2

    swapped = StableDiffusionModel.from_pipeline(pipe, source="test", prediction_type="epsilon", unet=pipe.vae)
    assert swapped.unet is pipe.vae
    assert swapped.prediction_type == "epsilon"
