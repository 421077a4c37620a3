"""In-silico experiments on digital twins: MEIs, receptive fields, grating tuning, behavioural gain, validation.

Every tool takes a :class:`~sensorium_jax.insilico.twin.DigitalTwin` (any model's ``predict_mouse`` for one
mouse, or an ensemble's mean) and probes many neurons in one batched, jitted pass.
"""
