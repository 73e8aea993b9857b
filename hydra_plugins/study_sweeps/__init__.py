"""Hydra plugins of the study: the ``study`` sweeper and the ``pool`` launcher."""
