"""Evaluation: sample quality (Fréchet distance with its real-data floor, precision/recall, in
the feature space of a small shipped classifier) and likelihood (the ELBO and the ODE), for one
checkpoint (``python -m ddpm_lib evaluate``)."""
