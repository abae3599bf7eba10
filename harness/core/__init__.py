"""The lecture's experiment: config, data, model, seeding and device, and the training loop
(`train.py`), the one definition of a training step every trainer is checked against."""
