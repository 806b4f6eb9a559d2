"""``arena-pack``: a trained model to an offline Kaggle bundle (wheels, models, notebook, dataset metadata)."""
