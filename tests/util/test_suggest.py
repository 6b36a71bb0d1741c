from onetrainer.util.suggest import closest, did_you_mean


def test_close_spelling_and_abbreviation():
    options = ["learning_rate", "batch_size", "max_steps"]
    assert closest("learning_rte", options) == "learning_rate"
    assert closest("lr", options) == "learning_rate"
    assert closest("bs", options) == "batch_size"
    assert closest("zzz", options) is None
    assert did_you_mean("batchsize", options, prefix="training.") == "did you mean 'training.batch_size'? "
    assert did_you_mean("zzz", options) == ""
