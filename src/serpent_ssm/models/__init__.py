"""Models built from the mixers: the LRA-style sequence classifier (more to come)."""

from serpent_ssm.models.classifier import MODEL_NAMES, SequenceClassifier, make_mixer_factory

__all__ = ["MODEL_NAMES", "SequenceClassifier", "make_mixer_factory"]
