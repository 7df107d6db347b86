"""What a denoiser predicts: the one check of a `prediction_type`, for models, schedulers and pipelines."""

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")


def check_prediction_type(prediction_type: str, learn_sigma: bool = False, supported=PREDICTION_TYPES) -> None:
    """The config records what the model predicts, so pipelines can refuse a sampler that does not fit.

    `supported` narrows the choice where a sampler handles fewer (the layered schedule has no flow)."""
    if prediction_type not in supported:
        raise ValueError(f"prediction_type must be one of {', '.join(supported)}; got {prediction_type!r}.")
    if learn_sigma and prediction_type != "epsilon":
        raise ValueError(f"learned sigma goes with prediction_type='epsilon' (the ADM hybrid loss); "
                         f"set learn_sigma=False for {prediction_type!r}.")
